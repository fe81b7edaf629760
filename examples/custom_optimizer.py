"""Writing your own optimizer pieces with gradtx: a σ knob, and a whole stage.

(a) ``LpScale``, a new per-parameter scale σ: Adam's second moment generalised to an Lp mean,
    σ_t = (EMA of |g|^p, bias-corrected)^(1/p) + ε. p = 2 is Adam's σ; p = 1 needs no square
    root at all. Written for one array by subclassing :class:`gradtx.Scale`, then turned into an
    optimizer with :func:`gradtx.optimizer`, trained under ``jax.jit``, and swept over p without
    recompiling (p is a ``hyper`` field, a traced leaf).

(b) ``SpikeClip``, a whole :class:`gradtx.Stage`: each array keeps a running RMS of its gradient
    and rescales a gradient whose RMS jumps above ``factor`` times that average (a corrupted
    batch), counting the spikes it clipped. Chained in front of Adam with :func:`gradtx.chain`.

Run ``python examples/custom_optimizer.py``; it takes a few seconds on a CPU. See
docs/custom_optimizer.md for the protocol these classes follow.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import gradtx

# --- (a) a σ knob -----------------------------------------------------------------------------


class LpScale(gradtx.Scale):
    r"""σ from a bias-corrected EMA of ``|g|^p``: :math:`\sigma_t = \hat v_t^{1/p} + \epsilon`.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) |g_t|^p, \qquad
        \hat v_t = v_t / (1 - \beta_2^t)

    ``p = 2`` is :class:`gradtx.AdamScale`; ``p = 1`` divides by a running mean absolute
    gradient, with no square root.
    """

    slots = ("nu",)  # one params-shaped state array, zeros at init (the default init_leaf)
    needs_step = True  # the bias correction reads ctx.t, so the state keeps a count
    summary = "σ = (EMA of |g|^p)^(1/p) + ε (Lp Adam)"
    b2: float = gradtx.hyper(0.999, "unit")  # checked on construction: in [0, 1)
    p: float = gradtx.hyper(2.0, "positive")
    eps: float = gradtx.hyper(1e-8, "nonnegative")

    def step(self, g, m, slots, param, ctx):
        # g: the raw gradient (for the statistic); m: the direction to divide (Adam's m̂_t).
        # Hyperparameters arrive as arrays of the compute dtype (float32 or wider).
        nu = self.b2 * slots["nu"] + (1 - self.b2) * jnp.abs(g) ** self.p
        nu_hat = nu / (1 - self.b2**ctx.t)
        return m / (nu_hat ** (1 / self.p) + self.eps), {"nu": nu}


def lp_adam(learning_rate: Any, p: float = 2.0, b1: float = 0.9, b2: float = 0.999):
    """Adam with an Lp second moment: the Ema direction, LpScale, and η."""
    return gradtx.optimizer(gradtx.Ema(b1), LpScale(b2, p), learning_rate, name="lp_adam")


# --- (b) a whole stage --------------------------------------------------------------------------


class SpikeClip(gradtx.Stage):
    r"""Clips gradient spikes per array: ``g ← g · min(1, c·r̄ / RMS(g))``.

    ``r̄`` is a bias-corrected EMA (decay ``decay``) of the array's past gradient RMS; the
    clipped RMS enters the average, so one spike does not raise the bar for the next. Nothing is
    clipped during the first ``warmup`` steps. State per array: ``rms`` (a scalar) and
    ``spikes`` (an int32 count of the clipped steps).
    """

    name = "spike_clip"  # the key of this stage's state in a chain, and the name in errors
    slots = ("rms", "spikes")
    needs_step = True  # keep a count: ctx.step / ctx.t are read below
    factor: float = gradtx.hyper(3.0, "positive")
    decay: float = gradtx.hyper(0.9, "unit")
    warmup: int = gradtx.static(5)  # an integer that shapes the computation: static

    def init_leaf(self, param):
        # Slots need not mirror the param: here two scalars per array.
        return {"rms": jnp.zeros([], param.dtype), "spikes": jnp.zeros([], jnp.int32)}

    def update_leaf(self, g, slots, param, ctx):
        # Slots arrive in the compute dtype and are cast back to their own dtype afterwards.
        rms = jnp.sqrt(jnp.mean(g * g))
        seen = ctx.t - 1  # observations already in the average (float, like ctx.t)
        average = slots["rms"] / (1 - self.decay ** jnp.maximum(seen, 1.0))
        limit = self.factor * average
        spike = (ctx.step >= self.warmup) & (rms > limit)
        scale = jnp.where(spike, limit / jnp.maximum(rms, 1e-30), 1.0)
        new_rms = self.decay * slots["rms"] + (1 - self.decay) * rms * scale
        spikes = slots["spikes"] + spike.astype(slots["spikes"].dtype)  # strict dtypes
        return g * scale, {"rms": new_rms, "spikes": spikes}


# --- a tiny problem -------------------------------------------------------------------------


def _data(n: int = 64, d: int = 8):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (n, d), jnp.float32)
    w_true = jax.random.normal(kw, (d,), jnp.float32)
    return x, x @ w_true + 0.3


def _loss(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _init_params(d: int = 8):
    return {"w": jnp.zeros((d,), jnp.float32), "b": jnp.zeros([], jnp.float32)}


def train(tx, steps: int = 200, spike_steps: tuple[int, ...] = ()):
    """Full-batch training under ``jax.jit``; gradients at ``spike_steps`` are multiplied by 50.

    ``tx`` is an argument of the jitted loop, so a different value of a hyperparameter (a float
    leaf) reuses the compiled program. Returns (final loss, final optimizer state).
    """
    x, y = _data()
    spikes = jnp.zeros(steps, jnp.float32).at[jnp.array(spike_steps, jnp.int32)].set(1.0)
    return _train(tx, _init_params(), spikes, x, y)


_TRACES = {"n": 0}


@jax.jit
def _train(tx, params, spikes, x, y):
    _TRACES["n"] += 1

    def body(carry, spike):
        params, state = carry
        grads = jax.grad(_loss)(params, x, y)
        grads = jax.tree.map(lambda g: g * (1 + 49 * spike), grads)  # a corrupted batch
        updates, state = tx.update(grads, state, params)
        return (gradtx.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(body, (params, tx.init(params)), spikes)
    return _loss(params, x, y), state


def main() -> dict[str, Any]:
    """Runs both parts and returns what they show."""
    out: dict[str, Any] = {}

    # (a) LpScale with p = 2 is Adam: same updates on a few random gradients.
    params = _init_params()
    ours, ref = lp_adam(1e-2, p=2.0), gradtx.adam(1e-2)
    s_ours, s_ref = ours.init(params), ref.init(params)
    diff = 0.0
    for i in range(5):
        g = jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(i), p.shape), params)
        u_ours, s_ours = ours.update(g, s_ours, params)
        u_ref, s_ref = ref.update(g, s_ref, params)
        diff = max(diff, float(jnp.max(jnp.abs(u_ours["w"] - u_ref["w"]))))
    out["lp2_vs_adam_max_diff"] = diff
    out["lp_describe"] = ours.describe()["sigma"]

    # Train with p = 1, 2, 3: three values of a traced hyperparameter, one compilation.
    x, y = _data()
    out["initial_loss"] = float(_loss(_init_params(), x, y))
    before = _TRACES["n"]
    out["lp_final_loss"] = {p: float(train(lp_adam(0.05, p=p))[0]) for p in (1.0, 2.0, 3.0)}
    out["lp_traces"] = _TRACES["n"] - before

    # (b) SpikeClip in front of Adam, with two corrupted batches.
    spike_steps = (60, 130)
    clipped = gradtx.chain(SpikeClip(factor=3.0), gradtx.adam(0.05))
    loss, state = train(clipped, spike_steps=spike_steps)
    out["spike_clip_final_loss"] = float(loss)
    out["spikes_clipped"] = {k: int(v) for k, v in state.spike_clip.spikes.items()}
    out["plain_adam_final_loss"] = float(train(gradtx.adam(0.05), spike_steps=spike_steps)[0])
    _, state = train(clipped)  # clean gradients: nothing to clip
    out["spikes_clipped_clean"] = {k: int(v) for k, v in state.spike_clip.spikes.items()}
    return out


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key}: {value}")
