"""A flax linen MLP on scikit-learn's digits with ``TrainState.create(..., tx=gradtx.adamw(...))``.

The same model and data as ``flax_nnx_digits.py``, written the linen way: the optimizer is a
gradtx transformation held by ``flax.training.train_state.TrainState`` and the step is a
``jax.jit`` function of the train state. Halfway through, the train state is written to a
msgpack checkpoint (``flax.serialization.to_bytes``); at the end the run is resumed from that
file and must finish bit-identical to the run that never stopped.

The transformation is the training loop's: ``gradtx.live`` around global-norm clipping and
parameter groups (no weight decay on biases). Just before the checkpoint, the second half's
learning rate is scaled by 0.5 and the weight decay doubled with ``gradtx.set_hyperparams`` /
``set_schedule_multipliers`` on the ``TrainState`` itself: new inputs of the same program
(``train_step`` is traced once, counted in ``results.json``), kept in the checkpoint. Each step
also returns ``gradtx.diagnostics`` (norms, clip fraction, η/σ per group): ``diagnostics.png``.

With ``--packed`` the train state is ``gradtx.PackedTrainState.create(...)``: its params are
packed (``apply_fn`` reads views, the gradients come as buffers), the step and the checkpoint
code are unchanged, and the msgpack file holds the ordinary tree. ``gradtx.groups`` refuses
packed trees, so there the biases' exemption from weight decay is the decay stage's own mask.

    python examples/flax_linen_trainstate.py --out runs/linen_digits          # full
    python examples/flax_linen_trainstate.py --out runs/linen_digits --quick  # reduced, for tests
    python examples/flax_linen_trainstate.py --out runs/linen_digits --packed # packed layout

Writes ``loss_curve.png``, ``checkpoint_half.msgpack`` and ``results.json`` to ``--out``;
``main(argv)`` returns the results dict.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.training import train_state
from matplotlib.figure import Figure
from tqdm import tqdm

import gradtx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_data import batches, cross_entropy, load_data  # noqa: E402


class MLP(nn.Module):
    """64 → hidden → hidden → 10 with GELU."""

    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.gelu(nn.Dense(self.hidden)(x))
        x = nn.gelu(nn.Dense(self.hidden)(x))
        return nn.Dense(10)(x)


TRACES = {"train_step": 0}


@jax.jit
def train_step(
    state: train_state.TrainState, x: jax.Array, y: jax.Array
) -> tuple[train_state.TrainState, jax.Array, dict]:
    TRACES["train_step"] += 1  # runs only when jax.jit traces

    def loss_fn(params: Any) -> jax.Array:
        return cross_entropy(state.apply_fn({"params": params}, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    new = state.apply_gradients(grads=grads)
    diag = gradtx.diagnostics(
        state.tx, grads, state.opt_state, state.params, new_state=new.opt_state
    )
    return new, loss, diag


@jax.jit
def accuracy(state: train_state.TrainState, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = state.apply_fn({"params": state.params}, x)
    return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))


def decays(params: Any) -> Any:
    """The weight decay's mask for --packed: the kernels (``gradtx.no_decay`` exempts this
    MLP's biases, its only leaves of fewer than 2 dimensions)."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_tx(cfg: argparse.Namespace, total_steps: int) -> Any:
    schedule = gradtx.schedules.warmup_cosine_decay(
        0.0, cfg.lr, warmup_steps=max(total_steps // 10, 1), decay_steps=total_steps
    )
    if cfg.packed:  # no decay on the biases as the decay stage's own mask (packing keeps it)
        adamw = gradtx.adamw(schedule, weight_decay=cfg.weight_decay, mask=decays)
        return gradtx.live(gradtx.chain(gradtx.clip_by_global_norm(1.0), adamw))
    adamw = gradtx.adamw(schedule, weight_decay=cfg.weight_decay)
    groups = gradtx.groups(adamw, [gradtx.group("no_decay", gradtx.no_decay, weight_decay=0.0)])
    return gradtx.live(gradtx.chain(gradtx.clip_by_global_norm(1.0), groups))


def live_names(cfg: argparse.Namespace) -> tuple[list[str], str]:
    """The live names of the learning rates and of the main weight decay."""
    if cfg.packed:
        return ["learning_rate"], "weight_decay"
    return ["default.learning_rate", "no_decay.learning_rate"], "default.weight_decay"


def fresh_state(cfg: argparse.Namespace, tx: Any) -> train_state.TrainState:
    model = MLP(cfg.hidden)
    params = model.init(jax.random.key(cfg.seed), jnp.zeros((1, 64), jnp.float32))["params"]
    kind = gradtx.PackedTrainState if cfg.packed else train_state.TrainState
    return kind.create(apply_fn=model.apply, params=params, tx=tx)


def run(
    state: train_state.TrainState, x: jax.Array, y: jax.Array, order: np.ndarray, bar: Any
) -> tuple[train_state.TrainState, list[float]]:
    """Trains over the batches ``order[epoch, step]``, updating the progress bar per epoch."""
    losses: list[float] = []
    for epoch_order in order:
        epoch = []
        for idx in epoch_order:
            state, loss, diag = train_step(state, x[idx], y[idx])
            epoch.append(loss)
            DIAGNOSTICS.append(diag)
        losses.extend(float(v) for v in jax.device_get(epoch))
        if bar is not None:
            lr = gradtx.current_learning_rate(state.tx, state.opt_state)
            lr = float(lr["default"] if isinstance(lr, dict) else lr)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-len(epoch) :]):.4f}", lr=f"{lr:.2e}")
    return state, losses


DIAGNOSTICS: list[dict] = []


def bit_identical(a: Any, b: Any) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(
        np.asarray(u).dtype == np.asarray(v).dtype
        and np.asarray(u).tobytes() == np.asarray(v).tobytes()
        for u, v in zip(la, lb)
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/flax_linen_trainstate"))
    p.add_argument("--quick", action="store_true", help="reduced sizes (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default 12 (quick: 4)")
    p.add_argument("--hidden", type=int, default=None, help="default 256 (quick: 64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak of the warm-up-cosine η")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--packed", action="store_true", help="gradtx.PackedTrainState: packed params")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    cfg = p.parse_args(argv)
    cfg.epochs = cfg.epochs or (4 if cfg.quick else 12)
    cfg.hidden = cfg.hidden or (64 if cfg.quick else 256)
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse(argv)
    cfg.out.mkdir(parents=True, exist_ok=True)
    x_tr, x_te, y_tr, y_te = (jnp.asarray(a) for a in load_data(cfg.seed))
    order = batches(len(y_tr), cfg.batch_size, cfg.epochs, cfg.seed)
    steps = order.shape[1]
    total = cfg.epochs * steps
    half = cfg.epochs // 2
    tx = make_tx(cfg, total)
    print(f"linen MLP 64-{cfg.hidden}-{cfg.hidden}-10, {cfg.epochs} epochs x {steps} steps, {tx!r}")

    start = time.perf_counter()
    with tqdm(total=cfg.epochs, desc="adamw", disable=not cfg.progress) as bar:
        DIAGNOSTICS.clear()
        traces = TRACES["train_step"]
        state, losses = run(fresh_state(cfg, tx), x_tr, y_tr, order[:half], bar)
        # live changes for the second half, on the TrainState itself: no new program
        lr_names, decay_name = live_names(cfg)
        state = gradtx.set_schedule_multipliers(state, **{n: 0.5 for n in lr_names})
        state = gradtx.set_hyperparams(state, **{decay_name: 2 * cfg.weight_decay})
        ckpt = cfg.out / "checkpoint_half.msgpack"
        ckpt.write_bytes(serialization.to_bytes(state))
        state, more = run(state, x_tr, y_tr, order[half:], bar)
    seconds = time.perf_counter() - start
    losses += more
    traces = TRACES["train_step"] - traces
    history = jax.device_get(jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *DIAGNOSTICS))
    diag_png = cfg.out / "diagnostics.png"
    gradtx.plot_diagnostics(history, diag_png, title="linen TrainState: diagnostics per step")

    # Resume: a template from the same code (init only gives the structure), filled from disk.
    template = fresh_state(cfg, tx)
    resumed = serialization.from_bytes(template, ckpt.read_bytes())
    restored_decay = float(resumed.opt_state.hyperparams[decay_name])
    assert isinstance(resumed.opt_state, gradtx.State), type(resumed.opt_state)
    assert int(resumed.step) == half * steps
    resumed, _ = run(resumed, x_tr, y_tr, order[half:], None)
    identical = bit_identical((resumed.params, resumed.opt_state), (state.params, state.opt_state))

    test_acc = float(accuracy(state, x_te, y_te))
    png = cfg.out / "loss_curve.png"
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    k = max(len(losses) // 50, 1)
    ax.plot(np.arange(len(losses)), losses, lw=0.5, alpha=0.35, label="per step")
    smooth = np.convolve(np.asarray(losses), np.ones(k) / k, mode="valid")
    ax.plot(np.arange(len(smooth)) + k - 1, smooth, lw=1.8, label=f"moving average ({k})")
    ax.axvline(half * steps, color="gray", ls="--", lw=1, label="checkpoint")
    ax.set(yscale="log", xlabel="step", ylabel="training loss", title="linen TrainState + adamw")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)

    results = {
        "example": "flax_linen_trainstate",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "tx": repr(tx),
        "packed": cfg.packed,
        "steps": total,
        "final_train_loss": float(np.mean(losses[-steps:])),
        "train_accuracy": float(accuracy(state, x_tr, y_tr)),
        "test_accuracy": test_acc,
        "seconds": seconds,
        "checkpoint_step": half * steps,
        "resume_bit_identical": identical,
        "traces": traces,
        "restored_weight_decay": restored_decay,
        "groups": sorted(
            {row.group for row in gradtx.explain(tx, gradtx.unpack(state.params)).rows}
        ),
        "clipped_steps": int(np.sum(np.asarray(history["clip_fraction"]) > 0)),
        "files": {
            "loss_curve": str(png),
            "diagnostics": str(diag_png),
            "checkpoint": str(ckpt),
            "results": str(cfg.out / "results.json"),
        },
    }
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"test accuracy {test_acc:.2%}, final train loss {results['final_train_loss']:.4f},"
        f" {seconds:.1f} s; resumed from step {half * steps}: bit-identical = {identical}"
    )
    print(f"wrote {png}, {ckpt} and {cfg.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
