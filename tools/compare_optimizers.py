"""Every named gradtx optimizer on the lecture's valley and on the digits MLP, as figures.

    python tools/compare_optimizers.py            # writes docs/img/compare/*.png, results.json
    python tools/compare_optimizers.py --quick    # fewer steps, into a temporary folder

For each optimizer and problem the learning rate is the best of a small grid (the final loss
decides); learning-rate-free methods run with their default η = 1. Both problems are
deterministic: the valley's gradients carry the lecture's fixed noise sequence, the MLP trains
full-batch on the training images of ``examples/digits_data.py``. The tool also rewrites the
results table in ``docs/optimizers_compared.md`` (between its ``results`` markers), so the page
always shows the numbers of the figures next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from digits_data import cross_entropy, load_data  # noqa: E402

import gradtx  # noqa: E402

DEST = ROOT / "docs" / "img" / "compare"
PAGE = ROOT / "docs" / "optimizers_compared.md"
GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"

#: name -> (factory of the learning rate, whether it is learning-rate free). Names gradtx
#: does not have are left out, so the tool runs on any version.
CANDIDATES: dict[str, tuple[Callable[[float], Any], bool]] = {
    "sgd": (lambda lr: gradtx.sgd(lr), False),
    "sgd_momentum": (lambda lr: gradtx.sgd(lr, momentum=0.9), False),
    "nesterov": (lambda lr: gradtx.sgd(lr, momentum=0.9, nesterov=True), False),
    "adagrad": (lambda lr: gradtx.adagrad(lr), False),
    "rmsprop": (lambda lr: gradtx.rmsprop(lr), False),
    "adam": (lambda lr: gradtx.adam(lr), False),
    "adamw": (lambda lr: gradtx.adamw(lr), False),
    "nadam": (lambda lr: gradtx.nadam(lr), False),
    "amsgrad": (lambda lr: gradtx.amsgrad(lr), False),
    "adamax": (lambda lr: gradtx.adamax(lr), False),
    "adabelief": (lambda lr: gradtx.adabelief(lr), False),
    "radam": (lambda lr: gradtx.radam(lr), False),
    "yogi": (lambda lr: gradtx.yogi(lr), False),
    "lion": (lambda lr: gradtx.lion(lr * 0.1), False),
    "lamb": (lambda lr: gradtx.lamb(lr), False),
    "adafactor": (lambda lr: gradtx.adafactor(lr), False),
    "schedule_free_adamw": (lambda lr: gradtx.schedule_free_adamw(lr), False),
    "adan": (lambda lr: gradtx.adan(lr), False),
    "novograd": (lambda lr: gradtx.novograd(lr), False),
    "adamaxw": (lambda lr: gradtx.adamaxw(lr), False),
    "rprop": (lambda lr: gradtx.rprop(lr), False),
    "sm3": (lambda lr: gradtx.sm3(lr), False),
    "fromage": (lambda lr: gradtx.fromage(lr), False),
    "optimistic_adam": (lambda lr: gradtx.optimistic_adam(lr), False),
    "adopt": (lambda lr: gradtx.adopt(lr), False),
    "ademamix": (lambda lr: gradtx.ademamix(lr), False),
    "muon": (lambda lr: gradtx.muon(lr), False),
    "nadamw": (lambda lr: gradtx.nadamw(lr), False),
    "adadelta": (lambda lr: gradtx.adadelta(lr * 10), False),
    "lars": (lambda lr: gradtx.lars(lr), False),
    "sign_sgd": (lambda lr: gradtx.sign_sgd(lr * 0.1), False),
    "signum": (lambda lr: gradtx.signum(lr * 0.1), False),
    "noisy_sgd": (lambda lr: gradtx.noisy_sgd(lr), False),
    "optimistic_gradient_descent": (lambda lr: gradtx.optimistic_gradient_descent(lr), False),
    "optimistic_adam_v2": (lambda lr: gradtx.optimistic_adam_v2(lr), False),
    "soap": (lambda lr: gradtx.soap(lr), False),
    "sophia": (lambda lr: gradtx.sophia(lr), False),  # reads obj_fn
    "polyak_sgd": (lambda lr: gradtx.polyak_sgd(lr * 10), False),  # reads value
    "lbfgs": (lambda lr: gradtx.lbfgs(), True),  # its own line search: no grid
    "prodigy": (lambda lr: gradtx.prodigy(), True),
    "dadapt_adamw": (lambda lr: gradtx.dadapt_adamw(), True),
    "dog": (lambda lr: gradtx.dog(), True),
    "dowg": (lambda lr: gradtx.dowg(), True),
}


def available() -> dict[str, tuple[Callable[[float], Any], bool]]:
    """The candidates whose gradtx function exists in this version."""
    out = {}
    for name, entry in CANDIDATES.items():
        try:
            entry[0](1e-3)
        except AttributeError:  # not in this version of gradtx
            continue
        out[name] = entry
    return out


def _run(tx: Any, grad_fn: Callable, loss_fn: Callable, p0: Any, steps: int) -> np.ndarray:
    """Losses after 0..steps updates, in one jitted scan."""

    def body(carry, i):
        p, state = carry
        g = grad_fn(p, i)
        # the extra arguments some optimizers declare (Polyak: value; Sophia: obj_fn;
        # L-BFGS's line search: value_fn); the others ignore them
        u, state = tx.update(g, state, p, value=loss_fn(p), obj_fn=loss_fn, value_fn=loss_fn)
        p = gradtx.apply_updates(p, u)
        return (p, state), loss_fn(p)

    @jax.jit
    def run(p0):
        _, losses = jax.lax.scan(body, (p0, tx.init(p0)), jnp.arange(steps))
        return jnp.concatenate([loss_fn(p0)[None], losses])

    return np.asarray(run(p0), np.float64)


def valley_problem(steps: int) -> tuple[Callable, Callable, Any]:
    """The lecture's valley ½(a x² + b y²) with b/a = 100 instead of the lab's 10⁶ (so that
    every method can get somewhere in 500 steps), and the lab's kind of gradient noise."""
    curvature = jnp.array([1.0, 100.0], jnp.float32)
    noise = 1e-3 * jax.random.normal(jax.random.key(0), (steps, 2), jnp.float32)

    def loss(p):
        return 0.5 * jnp.sum(curvature * p**2)

    def grad(p, i):
        return curvature * p + noise[i]

    return grad, loss, jnp.array([10.0, 1.0], jnp.float32)


def digits_problem() -> tuple[Callable, Callable, Any]:
    """A 64-64-10 tanh MLP, full batch on the (augmented) digits training images."""
    x, _, y, _ = load_data(seed=0)
    x, y = jnp.asarray(x), jnp.asarray(y)
    k1, k2 = jax.random.split(jax.random.key(0))
    p0 = {
        "w1": jax.random.normal(k1, (64, 64), jnp.float32) / 8.0,
        "b1": jnp.zeros(64, jnp.float32),
        "w2": jax.random.normal(k2, (64, 10), jnp.float32) / 8.0,
        "b2": jnp.zeros(10, jnp.float32),
    }

    def loss(p):
        h = jnp.tanh(x @ p["w1"] + p["b1"])
        return cross_entropy(h @ p["w2"] + p["b2"], y)

    g = jax.grad(loss)
    return (lambda p, i: g(p)), loss, p0


def sweep(problems: dict[str, tuple], steps: dict[str, int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, (make, lr_free) in available().items():
        results[name] = {}
        for prob, (grad, loss, p0) in problems.items():
            best = None
            for lr in (1.0,) if lr_free else GRID:
                curve = _run(make(lr), grad, loss, p0, steps[prob])
                final = float(curve[-1]) if np.isfinite(curve[-1]) else float("inf")
                if best is None or final < best[1]:
                    best = (lr, final, curve)
            assert best is not None
            results[name][prob] = {"lr": best[0], "final": best[1], "curve": best[2].tolist()}
        print(name, {p: f"{r['final']:.3g} (lr {r['lr']})" for p, r in results[name].items()})
    return results


def figures(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for prob, title in (("valley", "noisy valley ½(x² + 100 y²)"), ("digits", "digits MLP")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, res in results.items():
            curve = np.asarray(res[prob]["curve"])
            ax.plot(np.maximum(curve, 1e-12), label=f"{name} (η={res[prob]['lr']:g})", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{title}: best η of a grid per optimizer")
        ax.legend(fontsize=6, ncol=3)
        fig.tight_layout()
        path = out / f"{prob}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def table(results: dict[str, Any]) -> str:
    rows = ["| optimizer | valley: η | valley: final loss | digits: η | digits: final loss |"]
    rows.append("|---|---|---|---|---|")
    for name, res in sorted(results.items(), key=lambda kv: kv[1]["digits"]["final"]):
        v, d = res["valley"], res["digits"]
        rows.append(
            f"| `{name}` | {v['lr']:g} | {v['final']:.3g} | {d['lr']:g} | {d['final']:.3g} |"
        )
    return "\n".join(rows)


def write_table(text: str, page: Path = PAGE) -> None:
    body = page.read_text()
    start, end = body.index(MARK_START) + len(MARK_START), body.index(MARK_END)
    page.write_text(body[:start] + "\n" + text + "\n" + body[end:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, into a temporary folder")
    args = ap.parse_args(argv)
    steps = {"valley": 40, "digits": 20} if args.quick else {"valley": 500, "digits": 300}
    problems = {"valley": valley_problem(steps["valley"]), "digits": digits_problem()}
    with jax.numpy_dtype_promotion("standard"):
        results = sweep(problems, steps)
    out = Path(tempfile.mkdtemp()) if args.quick else DEST
    out.mkdir(parents=True, exist_ok=True)
    figures(results, out)
    summary = {
        n: {p: {k: r[k] for k in ("lr", "final")} for p, r in v.items()} for n, v in results.items()
    }
    (out / "results.json").write_text(json.dumps({"steps": steps, "results": summary}, indent=1))
    if not args.quick:
        write_table(table(results))
    return results


if __name__ == "__main__":
    main()
