"""Host-dispatch diagnosis for sub-millisecond packed steps (tiny tree): the same AdamW step
on plain arrays vs on gradtx's Packed/State pytrees, called through jax.jit and AOT-compiled.

Usage: PYTHONPATH=. python benchmarks/dispatch_diag.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

import gradtx

n = 2_000_000
tx = gradtx.adamw(1e-3, weight_decay=0.1)


def loop(f, carry, fixed, iters=500):
    carry = f(*carry, *fixed)
    jax.block_until_ready(carry)
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(iters):
            carry = f(*carry, *fixed)
        jax.block_until_ready(carry)
        ts.append((time.perf_counter() - t) / iters)
    return float(np.median(ts)) * 1e6


def plain(p, m, v, c, g):
    t = (c + 1).astype(jnp.float32)
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    u = (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8) + 0.1 * p
    return p - 1e-3 * u, m, v, c + 1


def packed_step(p, s, g):
    u, s = tx.update(g, s, p)
    return gradtx.apply_updates(p, u), s


def mk_plain():
    return [jnp.zeros(n) for _ in range(3)] + [jnp.zeros([], jnp.int32)], [jnp.ones(n)]


def mk_packed():
    p = gradtx.pack([jnp.zeros(1000) for _ in range(n // 1000)])
    return [p, tx.init(p)], [gradtx.pack([jnp.ones(1000) for _ in range(n // 1000)])]


for name, f, mk, nc in [("plain", plain, mk_plain, 4), ("packed", packed_step, mk_packed, 2)]:
    c, fx = mk()
    j = jax.jit(f, donate_argnums=tuple(range(nc)))
    print(name, "jit us", round(loop(j, c, fx), 1), flush=True)
    c, fx = mk()
    comp = j.lower(*c, *fx).compile()
    print(name, "aot us", round(loop(comp, c, fx), 1), flush=True)
    c, fx = mk()
    leaves, td = jax.tree_util.tree_flatten((c, fx))
    jf = jax.jit(
        lambda *ls: jax.tree_util.tree_leaves(
            f(*jax.tree_util.tree_unflatten(td, ls)[0], *jax.tree_util.tree_unflatten(td, ls)[1])  # noqa: B023
        ),
        donate_argnums=tuple(range(len(leaves) - 1)),
    )
    k = len(leaves) - 1
    print(
        name,
        "jit flat-leaves us",
        round(loop(lambda *a: tuple(jf(*a)), leaves[:k], leaves[k:]), 1),  # noqa: B023
        flush=True,
    )
