"""A flax nnx MLP on scikit-learn's handwritten digits, trained with gradtx optimizers.

The main run is ``gradtx.adamw`` with a warm-up-cosine schedule inside
``nnx.Optimizer(model, tx, wrt=nnx.Param)`` under ``nnx.jit``; then the same model is trained
with a few other gradtx optimizers on the same schedule shape and data order, for a table.

Every run uses the training-loop wrappers: global-norm clipping, parameter groups (no weight
decay on biases: ``gradtx.no_decay``), live hyperparameters (``gradtx.live``: for the last
epoch the learning rate is halved with ``gradtx.set_schedule_multipliers`` on the optimizer,
no recompilation: the step is traced once, counted in ``results.json``), and per-step
diagnostics (``gradtx.diagnostics``: gradient norms, clip fraction, η/σ per group), drawn for
the main run by ``gradtx.plot_diagnostics`` into ``diagnostics.png``.

With ``--packed`` the optimizer is ``gradtx.PackedOptimizer(model, tx, wrt=nnx.Param)``: the
same step on the packed layout (the small params' optimizer state in a few buffers, one fused
pass per buffer), the model and the training step unchanged. ``gradtx.groups`` refuses packed
trees, so there the biases' exemption from weight decay is the decay stage's own mask.

    python examples/flax_nnx_digits.py --out runs/nnx_digits          # full: ~99% test accuracy
    python examples/flax_nnx_digits.py --out runs/nnx_digits --quick  # reduced, for tests
    python examples/flax_nnx_digits.py --out runs/nnx_digits --packed # the packed layout

The digits (1797 8x8 images bundled with scikit-learn, no download) are split 80/20 with a
fixed seed; the training images are augmented with their one-pixel shifts. Writes
``loss_curves.png`` and ``results.json`` to ``--out``; ``main(argv)`` returns the results dict.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.figure import Figure
from tqdm import tqdm

import gradtx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_data import batches, cross_entropy, load_data  # noqa: E402

# Per optimizer: a factory taking the learning-rate schedule (and, for --packed, the weight
# decay's mask), and the schedule's peak. One warm-up-cosine shape for all; each peak is on the
# optimizer's usual scale (SGD's steps are gradients, so larger; Lion's are signs of size 1,
# so smaller than AdamW's).
OPTIMIZERS: dict[str, tuple[Any, float]] = {
    "adamw": (lambda lr, mask=None: gradtx.adamw(lr, weight_decay=1e-4, mask=mask), 3e-3),
    "sgd_momentum": (lambda lr, mask=None: gradtx.sgd(lr, momentum=0.9, nesterov=True), 5e-2),
    "rmsprop": (lambda lr, mask=None: gradtx.rmsprop(lr, decay=0.99), 1e-3),
    "lion": (lambda lr, mask=None: gradtx.lion(lr, weight_decay=1e-2, mask=mask), 1e-3),
}


class MLP(nnx.Module):
    """64 → hidden → hidden → 10 with GELU."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.gelu(self.l1(x))
        x = nnx.gelu(self.l2(x))
        return self.out(x)


TRACES = {"train_step": 0}


def wrap(base: Any) -> Any:
    """The training loop around an optimizer: clipping, no decay on biases, live values."""
    groups = gradtx.groups(base, [gradtx.group("no_decay", gradtx.no_decay, weight_decay=0.0)])
    return gradtx.live(gradtx.chain(gradtx.clip_by_global_norm(1.0), groups))


def decays(params: Any) -> Any:
    """The weight decay's mask for --packed: the kernels (``gradtx.no_decay`` exempts this
    MLP's biases, its only leaves of fewer than 2 dimensions)."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


@nnx.jit
def train_step(
    model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, dict]:
    TRACES["train_step"] += 1  # runs only when nnx.jit traces
    loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
    before = jax.tree_util.tree_map(lambda v: v, optimizer.opt_state)  # the values, copied
    params = nnx.state(model, nnx.Param)
    optimizer.update(model, grads)
    if isinstance(optimizer, gradtx.PackedOptimizer):  # what tx saw: the packed layout
        grads, params = optimizer.pack(grads), optimizer.pack(params)
    diag = gradtx.diagnostics(optimizer.tx, grads, before, params, new_state=optimizer.opt_state)
    return loss, diag


@nnx.jit
def accuracy(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(model(x), axis=-1) == y).astype(jnp.float32))


def train(name: str, cfg: argparse.Namespace, data: tuple, order: np.ndarray) -> dict[str, Any]:
    x_tr, x_te, y_tr, y_te = (jnp.asarray(a) for a in data)
    make, peak = OPTIMIZERS[name]
    total = order.shape[0] * order.shape[1]
    schedule = gradtx.schedules.warmup_cosine_decay(
        0.0, peak * cfg.lr_scale, warmup_steps=max(total // 10, 1), decay_steps=total
    )
    if cfg.packed:  # the decay stage's own mask: packing keeps it exact
        tx = gradtx.live(gradtx.chain(gradtx.clip_by_global_norm(1.0), make(schedule, decays)))
    else:
        tx = wrap(make(schedule))
    model = MLP(cfg.hidden, rngs=nnx.Rngs(cfg.seed))
    kind = gradtx.PackedOptimizer if cfg.packed else nnx.Optimizer
    optimizer = kind(model, tx, wrt=nnx.Param)
    params = nnx.state(model, nnx.Param)
    groups = sorted({row.group for row in gradtx.explain(tx, params).rows})
    # the live names of the scheduled learning rates, one per group ("default.learning_rate")
    lr_names = [n for n in jax.eval_shape(tx.init, params).schedules if "learning_rate" in n]

    losses: list[float] = []
    diags: list[dict] = []
    traces_before = TRACES["train_step"]
    start = time.perf_counter()
    bar = tqdm(range(order.shape[0]), desc=f"{name:>12}", disable=not cfg.progress, leave=True)
    for epoch in bar:
        if epoch == order.shape[0] - 1 and epoch > 0:  # a live change: a new input, same program
            gradtx.set_schedule_multipliers(optimizer, **{n: 0.5 for n in lr_names})
        out = [train_step(model, optimizer, x_tr[idx], y_tr[idx]) for idx in order[epoch]]
        losses.extend(float(v) for v in jax.device_get([loss for loss, _ in out]))
        diags.extend(d for _, d in out)
        lr = gradtx.current_learning_rate(tx, optimizer.opt_state)
        lr = float(next(iter(lr.values()))) if isinstance(lr, dict) else float(lr)
        bar.set_postfix(loss=f"{np.mean(losses[-len(out) :]):.4f}", lr=f"{lr:.2e}")
    seconds = time.perf_counter() - start
    history = jax.device_get(jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *diags))
    return {
        "optimizer": name,
        "tx": repr(tx),
        "packed": cfg.packed,
        "layout": repr(optimizer.layout) if cfg.packed else None,
        "peak_learning_rate": peak * cfg.lr_scale,
        "steps": total,
        "losses": losses,
        "final_train_loss": float(np.mean(losses[-order.shape[1] :])),
        "train_accuracy": float(accuracy(model, x_tr, y_tr)),
        "test_accuracy": float(accuracy(model, x_te, y_te)),
        "seconds": seconds,
        "traces": TRACES["train_step"] - traces_before,
        "groups": groups,
        "halved_for_last_epoch": sorted(lr_names),
        "final_learning_rate": lr,
        "clipped_steps": int(np.sum(np.asarray(history["clip_fraction"]) > 0)),
        "diagnostics": history,
    }


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for run in runs:
        loss = np.asarray(run["losses"])
        k = max(len(loss) // 50, 1)  # a moving average keeps the curves readable
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k - 1, smooth, label=run["optimizer"], lw=1.6)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        f"{'optimizer':<14}{'peak η':>9}{'train loss':>12}{'train acc':>11}{'test acc':>10}{'s':>7}"
    )
    rows = [head, "-" * len(head)]
    for r in runs:
        rows.append(
            f"{r['optimizer']:<14}{r['peak_learning_rate']:>9.0e}{r['final_train_loss']:>12.4f}"
            f"{r['train_accuracy']:>11.2%}{r['test_accuracy']:>10.2%}{r['seconds']:>7.1f}"
        )
    return "\n".join(rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/flax_nnx_digits"))
    p.add_argument("--quick", action="store_true", help="reduced sizes (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default 12 (quick: 3)")
    p.add_argument("--hidden", type=int, default=None, help="default 256 (quick: 64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiplies every peak η")
    p.add_argument(
        "--optimizers", default=",".join(OPTIMIZERS), help="comma-separated; the first is main"
    )
    p.add_argument(
        "--packed", action="store_true", help="gradtx.PackedOptimizer: the packed layout"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    cfg = p.parse_args(argv)
    cfg.epochs = cfg.epochs or (3 if cfg.quick else 12)
    cfg.hidden = cfg.hidden or (64 if cfg.quick else 256)
    cfg.optimizers = [s.strip() for s in cfg.optimizers.split(",") if s.strip()]
    unknown = set(cfg.optimizers) - set(OPTIMIZERS)
    if unknown:
        p.error(f"unknown optimizers {sorted(unknown)}; choose from {list(OPTIMIZERS)}")
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse(argv)
    cfg.out.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg.seed)
    order = batches(len(data[0]), cfg.batch_size, cfg.epochs, cfg.seed)
    print(
        f"digits: {len(data[0]) // 5} train images (x5 with shifts) / {len(data[1])} test,"
        f" MLP 64-{cfg.hidden}-{cfg.hidden}-10,"
        f" {cfg.epochs} epochs x {order.shape[1]} steps, jax {jax.__version__} on"
        f" {jax.default_backend()}"
    )
    runs = [train(name, cfg, data, order) for name in cfg.optimizers]

    png = cfg.out / "loss_curves.png"
    plot(runs, png, f"nnx MLP on digits, warm-up cosine η ({cfg.epochs} epochs)")
    diag_png = cfg.out / "diagnostics.png"
    gradtx.plot_diagnostics(
        runs[0]["diagnostics"], diag_png, title=f"{runs[0]['optimizer']}: diagnostics per step"
    )
    summary = table(runs)
    print(summary)
    results = {
        "example": "flax_nnx_digits",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "main": {k: v for k, v in runs[0].items() if k not in ("losses", "diagnostics")},
        "comparison": [
            {k: v for k, v in r.items() if k not in ("losses", "diagnostics")} for r in runs
        ],
        "table": summary,
        "files": {
            "loss_curves": str(png),
            "diagnostics": str(diag_png),
            "results": str(cfg.out / "results.json"),
        },
    }
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"main ({runs[0]['optimizer']}) test accuracy {runs[0]['test_accuracy']:.2%}")
    print(f"wrote {png} and {cfg.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
