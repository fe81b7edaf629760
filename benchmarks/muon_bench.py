"""Muon: ``gradtx.muon`` against ``optax.contrib.muon`` on a 24-layer tree, compile and step time.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/muon_bench.py [--small] [--rounds N] [--layers L]

The tree is a transformer's: ``L`` layers (default 24) of ``qkv (d, 3d)``, ``out (d, d)``,
``up (d, 4d)``, ``down (4d, d)`` matrices and two ``(d,)`` norm scales, plus a ``(V, d)``
embedding; ``d = 512`` (``--small``: 64). Both optimizers use their defaults (Nesterov, width
scaling, five Newton–Schulz steps); the tree has only 1-D and 2-D leaves, where the two are the
same optimizer (tests/test_muon.py). One step is ``update`` + ``apply_updates``, jitted with
params and state donated.

- **compile**: ``jit(step).lower(...).compile()``, each program compiled ``--compiles`` times
  (default 3) in alternating order; the median.
- **step**: interleaved rounds (as ``ab_bench.py``): each round runs one loop of each program
  (>= ~50 ms), in an order rotated from round to round, and divides gradtx's time by optax's in
  that round, so machine-wide slowdowns cancel. The median step time of each, the median ratio
  and its 10th-90th percentiles.
- **dots**: ``dot`` ops in the compiled HLO. gradtx runs one batched iteration per matrix shape
  (``(d, 4d)`` and ``(4d, d)`` are one shape): 3 shapes here, 15 dots each; optax one per
  matrix.

Prints a markdown table.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradtx


def _arg(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


SMALL = "--small" in sys.argv
ROUNDS = _arg("--rounds", 20)
LAYERS = _arg("--layers", 24)
COMPILES = _arg("--compiles", 3)
D = 64 if SMALL else 512
VOCAB = 256 if SMALL else 8192


def tree() -> dict:
    rng = np.random.default_rng(0)

    def w(*shape):
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)

    layers = {
        f"layer{i:02d}": {
            "qkv": w(D, 3 * D),
            "out": w(D, D),
            "up": w(D, 4 * D),
            "down": w(4 * D, D),
            "ln1": jnp.ones(D),
            "ln2": jnp.ones(D),
        }
        for i in range(LAYERS)
    }
    return {"embed": w(VOCAB, D), **layers}


def program(tx, params, grads):
    """The compiled step, its compile time, and its state."""

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(params)
        t = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    return compiled, time.perf_counter() - t, state


def main() -> None:
    params = tree()
    rng = np.random.default_rng(1)
    grads = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params
    )
    makers = {"gradtx": lambda: gradtx.muon(0.02), "optax": lambda: optax.contrib.muon(0.02)}
    compile_s: dict[str, list[float]] = {k: [] for k in makers}
    progs: dict = {}
    for i in range(COMPILES):
        for name in makers if i % 2 == 0 else reversed(list(makers)):
            copy = jax.tree_util.tree_map(jnp.copy, params)
            compiled, secs, state = program(makers[name](), copy, grads)
            compile_s[name].append(secs)
            progs[name] = [compiled, copy, state]
    dots = {k: progs[k][0].as_text().count(" dot(") for k in progs}

    def loop(name: str, n: int) -> float:
        compiled, p, s = progs[name]
        t = time.perf_counter()
        for _ in range(n):
            p, s = compiled(p, s, grads)
        jax.block_until_ready(p)
        progs[name][1:] = [p, s]
        return (time.perf_counter() - t) / n

    steps = {}
    for name in progs:  # warm up; steps per loop so that a loop takes >= ~50 ms
        loop(name, 2)
        steps[name] = int(min(max(3, 0.05 / loop(name, 3)), 500))
    times: dict[str, list[float]] = {k: [] for k in progs}
    ratios = []
    names = list(progs)
    for r in range(ROUNDS):
        order = names[r % 2 :] + names[: r % 2]
        got = {name: loop(name, steps[name]) for name in order}
        for name, secs in got.items():
            times[name].append(secs)
        ratios.append(got["gradtx"] / got["optax"])
    q = np.percentile(ratios, [10, 90])
    matrices = sum(1 for x in jax.tree_util.tree_leaves(params) if x.ndim == 2)
    print(
        f"\nMuon, {LAYERS} layers, d = {D} ({matrices} matrices, "
        f"{sum(x.size for x in jax.tree_util.tree_leaves(params)) / 1e6:.2f} M params), "
        f"{jax.devices()[0].platform}, {ROUNDS} interleaved rounds\n"
    )
    print("| | compile (s, median) | step (ms, median) | step / optax (p10-p90) | dots in HLO |")
    print("|---|---|---|---|---|")
    for name in names:
        ratio = (
            f"{statistics.median(ratios):.2f} ({q[0]:.2f}-{q[1]:.2f})" if name == "gradtx" else "1"
        )
        print(
            f"| {name} | {statistics.median(compile_s[name]):.2f} | "
            f"{1e3 * statistics.median(times[name]):.2f} | {ratio} | {dots[name]} |"
        )


if __name__ == "__main__":
    main()
