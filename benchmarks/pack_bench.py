"""Cost of `gradtx.pack` and compile time of a packed vs a per-leaf training step (F09).

Usage (from the repository root; gradtx need not be installed)::

    PYTHONPATH=. python benchmarks/pack_bench.py [N ...] [--gradtx PATH] [--no-per-leaf]
                                                  [--pack-only]

For each N (default 2000) the tree is N small float32 leaves of 6 shapes ((8,), (16,),
(4, 4), (3, 5), (32,), (2, 3, 4)) in tree order. Printed per N (one JSON line):

- ``pack_s``: wall time of the first ``gradtx.pack(tree, threshold=None)`` of that tree
  (what a user waits for; it includes any compilation ``pack`` triggers), then
  ``pack_again_s``, a second call on a fresh tree of the same shapes;
- ``packed_trace_s`` / ``packed_compile_s``: ``jax.jit(step).trace`` + ``lower`` and then
  ``compile`` of a whole training step on the packed tree: ``value_and_grad`` of a loss
  written on ``gradtx.unpack(packed)`` (``sum(sin(x) * x)`` per leaf), ``adamw`` update,
  ``apply_updates``;
- ``leaf_trace_s`` / ``leaf_compile_s``: the same step on the per-leaf tree.

``--gradtx PATH`` imports gradtx from PATH (e.g. an unpacked older version, to measure
"before"); ``--no-per-leaf`` skips the per-leaf step; ``--pack-only`` measures ``pack`` alone
(no step is compiled).
"""

from __future__ import annotations

import json
import os
import sys
import time

args = sys.argv[1:]
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if "--gradtx" in args:
    i = args.index("--gradtx")
    root = args[i + 1]
    del args[i : i + 2]
per_leaf = "--no-per-leaf" not in args
pack_only = "--pack-only" in args
sizes = [int(a) for a in args if not a.startswith("--")] or [2000]
sys.path.insert(0, root)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gradtx  # noqa: E402

SHAPES = [(8,), (16,), (4, 4), (3, 5), (32,), (2, 3, 4)]


def tree(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [
        jnp.asarray(rng.standard_normal(SHAPES[i % len(SHAPES)]), jnp.float32) for i in range(n)
    ]


def loss(params: list) -> jax.Array:
    return sum(jnp.sum(jnp.sin(x) * x) for x in params)


def step_fn(tx, packed: bool):
    def step(p, s):
        v, g = jax.value_and_grad(lambda q: loss(gradtx.unpack(q) if packed else q))(p)
        u, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, u), s, v

    return step


def compile_time(step, p, s) -> tuple[float, float]:
    t0 = time.perf_counter()
    lowered = jax.jit(step).trace(p, s).lower()
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


for n in sizes:
    row: dict = {"n": n, "gradtx": os.path.abspath(root), "backend": jax.default_backend()}
    params = tree(n, 0)
    jax.block_until_ready(params)
    t0 = time.perf_counter()
    packed = jax.block_until_ready(gradtx.pack(params, threshold=None))
    row["pack_s"] = time.perf_counter() - t0
    again = tree(n, 1)
    t0 = time.perf_counter()
    jax.block_until_ready(gradtx.pack(again, threshold=None))
    row["pack_again_s"] = time.perf_counter() - t0
    if pack_only:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
        continue
    tx = gradtx.adamw(1e-3, weight_decay=0.1)
    row["packed_trace_s"], row["packed_compile_s"] = compile_time(
        step_fn(tx, True), packed, tx.init(packed)
    )
    if per_leaf:
        row["leaf_trace_s"], row["leaf_compile_s"] = compile_time(
            step_fn(tx, False), params, tx.init(params)
        )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    sys.stdout.flush()
