"""Training stuck is not a critical point: a small MLP on scikit-learn's digits (no download).

Mini-batch SGD with a constant η drives the loss onto a plateau within a few hundred steps; it
then barely moves while the full-batch gradient norm keeps jumping around well above zero. The
first-order decrease the gradient promises (``η·‖∇L‖²`` per step) is orders of magnitude larger
than what happens: the steps bounce across the steep directions instead of going downhill, as
gradient descent does in the narrow valley. Cutting η by 10 (the η knob, not a better
direction) lowers the loss and the gradient norm at once.

The loss is the full-batch cross-entropy plus ``weight_decay/2·‖W‖²`` (so that the minimum is
not at infinity); the network is 64 → ``hidden`` (tanh) → 10, in plain JAX.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gradtx


@dataclasses.dataclass(frozen=True)
class Plateau:
    hidden: int = 32
    batch: int = 32
    lr: float = 0.5
    weight_decay: float = 1e-3
    steps: int = 16_000
    decay_at: int = 12_000  # η ← η/10 from this step on
    log_every: int = 20
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "data": "sklearn.datasets.load_digits (1797 8x8 images, pixels / 16)",
            "model": f"MLP 64 -> {self.hidden} (tanh) -> 10, plain JAX",
            "loss": f"cross-entropy + {self.weight_decay}/2 * |W|^2 (full batch)",
            "optimizer": f"gradtx.sgd, batch {self.batch}, η = {self.lr}, "
            f"η/10 from step {self.decay_at}",
            **dataclasses.asdict(self),
        }


def _data() -> tuple[jax.Array, jax.Array]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return jnp.asarray(digits.data / 16.0, jnp.float32), jnp.asarray(digits.target, jnp.int32)


def _init(cfg: Plateau) -> dict[str, jax.Array]:
    rng = np.random.default_rng(cfg.seed)  # NumPy: nothing to compile
    w1 = rng.standard_normal((64, cfg.hidden)) / 8.0
    w2 = rng.standard_normal((cfg.hidden, 10)) / math.sqrt(cfg.hidden)
    return {
        "w1": jnp.asarray(w1, jnp.float32),
        "b1": jnp.zeros(cfg.hidden, jnp.float32),
        "w2": jnp.asarray(w2, jnp.float32),
        "b2": jnp.zeros(10, jnp.float32),
    }


def _loss(cfg: Plateau, p: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    z = jnp.tanh(x @ p["w1"] + p["b1"][None, :]) @ p["w2"] + p["b2"][None, :]
    nll = jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]
    l2 = jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2)
    return jnp.mean(nll) + 0.5 * cfg.weight_decay * l2


def train(cfg: Plateau, progress: bool = True) -> dict[str, np.ndarray]:
    """Trains and logs the full-batch loss and gradient norm every ``log_every`` steps."""
    from tqdm.auto import tqdm

    x, y = _data()
    n = x.shape[0]
    sched = gradtx.schedules.piecewise_constant(cfg.lr, {cfg.decay_at: 0.1})
    tx = gradtx.sgd(sched)
    loss = lambda p, xb, yb: _loss(cfg, p, xb, yb)  # noqa: E731

    def full(p):
        value, grads = jax.value_and_grad(loss)(p, x, y)
        return value, gradtx.global_norm(grads)

    def step(carry, idx):
        p, state = carry
        u, state = tx.update(jax.grad(loss)(p, x[idx], y[idx]), state, p)
        return (gradtx.apply_updates(p, u), state), None

    def logged(carry, key):
        idx = jax.random.randint(key, (cfg.log_every, cfg.batch), 0, n)
        carry, _ = jax.lax.scan(step, carry, idx)
        return carry, full(carry[0])

    n_logs = cfg.steps // cfg.log_every
    n_blocks = max(b for b in range(1, 21) if n_logs % b == 0)  # equal blocks: one compile

    @jax.jit
    def block(carry, i):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed + 1), i), n_logs)
        start = full(carry[0])  # the block's starting point (used for step 0)
        carry, logs = jax.lax.scan(logged, carry, keys[: n_logs // n_blocks])
        return carry, start, logs

    params = _init(cfg)
    carry = (params, tx.init(params))
    losses, norms = [], []
    for i in tqdm(range(n_blocks), desc="plateau", disable=not progress):
        carry, start, (lv, gn) = block(carry, jnp.int32(i))
        if i == 0:
            l0, g0 = (float(v) for v in start)
        losses.append(np.asarray(lv))
        norms.append(np.asarray(gn))
    steps = np.arange(n_logs + 1) * cfg.log_every
    return {
        "step": steps,
        "loss": np.concatenate([[l0], *losses]).astype(np.float64),
        "grad_norm": np.concatenate([[g0], *norms]).astype(np.float64),
        "lr": np.asarray(jax.jit(jax.vmap(sched))(jnp.asarray(steps, jnp.int32))),
    }


def summarize(cfg: Plateau, rec: dict[str, np.ndarray]) -> dict[str, Any]:
    """The plateau is the second half of the constant-η phase; compared with the decayed end."""
    step, loss, gn = rec["step"], rec["loss"], rec["grad_norm"]
    win = (step >= cfg.decay_at // 2) & (step <= cfg.decay_at)
    tail = step >= cfg.decay_at + (cfg.steps - cfg.decay_at) // 2
    lw, gw = loss[win], gn[win]
    k = max(len(lw) // 10, 1)  # ends of the window, averaged over a tenth of it
    start, end = float(lw[:k].mean()), float(lw[-k:].mean())
    # what steps of size η along the full gradient would remove: Σ η‖∇L‖² over the window
    promised = cfg.lr * float(np.sum(gw**2)) * cfg.log_every
    actual = start - end
    out = {
        "config": cfg.describe(),
        "window_steps": [int(step[win][0]), int(step[win][-1])],
        "initial_loss": float(loss[0]),
        "initial_grad_norm": float(gn[0]),
        "loss_window_start": start,
        "loss_window_end": end,
        "loss_relative_change": abs(actual) / start,
        "grad_norm_window_mean": float(gw.mean()),
        "grad_norm_window_min": float(gw.min()),
        "grad_norm_window_max": float(gw.max()),
        "first_order_decrease_promised": promised,
        "loss_decrease_actual": actual,
        "after_decay_loss": float(loss[tail].mean()),
        "after_decay_grad_norm_mean": float(gn[tail].mean()),
    }
    out["loss_plateaus"] = out["loss_relative_change"] < 0.1
    out["grad_norm_stays_above_zero"] = bool(
        out["grad_norm_window_min"] > 0.02 * out["initial_grad_norm"]
        and out["grad_norm_window_mean"] > 0.1 * out["initial_grad_norm"]
    )
    out["not_a_critical_point"] = bool(
        out["loss_plateaus"] and out["grad_norm_stays_above_zero"] and promised > 100 * abs(actual)
    )
    out["decay_lowers_loss_and_grad_norm"] = bool(
        out["after_decay_loss"] < end and out["after_decay_grad_norm_mean"] < gw.mean()
    )
    return out
