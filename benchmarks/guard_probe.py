"""Probe of the non-finite guard's cost: a lax.cond around the update against a where-select
of every slot, with and without donating params and state (docs/benchmarks.md, "third probe").

Usage (from the repository root): ``python benchmarks/guard_probe.py [--no-donate]``
"""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.argv.append("--small")
DONATE = () if "--no-donate" in sys.argv else (0, 1)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import step_bench as sb  # noqa: E402

import gradtx  # noqa: E402

otx, gtx = sb.chains()["clip+adamw+sched"]
shp = sb.shapes("transformer")
print(len(shp), sum(int(np.prod(s)) for s in shp))


def fin(g):
    leaves = [x for x in jax.tree_util.tree_leaves(g)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def fin_mul(g):
    leaves = jax.tree_util.tree_leaves(g)
    return jnp.isfinite(sum(jnp.sum(x * 0.0) for x in leaves))


def plain(p, s, g):
    u, s = gtx.update(g, s, p)
    return gradtx.apply_updates(p, u), s


skip = gradtx.skip_nonfinite(gtx)


def cur(p, s, g):
    u, s = skip.update(g, s, p)
    return gradtx.apply_updates(p, u), s


def sel(finf):
    def step(p, s, g):
        ok = finf(g)
        u, s2 = gtx.update(g, s, p)
        s2 = jax.tree.map(lambda a, b: jnp.where(ok, a, b), s2, s)
        u = jax.tree.map(lambda a: jnp.where(ok, a, jnp.zeros_like(a)), u)
        return gradtx.apply_updates(p, u), s2

    return step


def selp(finf):  # select on params and state, no zero update
    def step(p, s, g):
        ok = finf(g)
        u, s2 = gtx.update(g, s, p)
        p2 = gradtx.apply_updates(p, u)
        s2 = jax.tree.map(lambda a, b: jnp.where(ok, a, b), s2, s)
        p2 = jax.tree.map(lambda a, b: jnp.where(ok, a, b), p2, p)
        return p2, s2

    return step


def nocond(p, s, g):
    ok = fin(g)
    u, s2 = gtx.update(g, s, p)
    return gradtx.apply_updates(p, u), (s2, ok)


cases = {
    "plain": plain,
    "cur": cur,
    "sel": sel(fin),
    "sel_mul": sel(fin_mul),
    "selp": selp(fin),
    "nocond": nocond,
}
key = jax.random.PRNGKey(0)


def make(n="plain"):
    params = [jnp.zeros(s, jnp.float32) for s in shp]
    grads = [jax.random.normal(key, s, jnp.float32) for s in shp]
    return params, (skip if n == "cur" else gtx).init(params), grads


comp = {}
for n, f in cases.items():
    p, s, g = make(n)
    if n == "nocond":
        j = jax.jit(lambda p, s, g: nocond(p, s, g), donate_argnums=DONATE)
    else:
        j = jax.jit(f, donate_argnums=DONATE)
    c = j.lower(p, s, g).compile()
    txt = c.as_text()
    print(
        n,
        "fusions",
        txt.count(" fusion("),
        "copies",
        txt.count(" copy("),
        "conds",
        txt.count("conditional("),
        "temp MB",
        c.memory_analysis().temp_size_in_bytes / 2**20,
    )
    comp[n] = j
res = {n: [] for n in cases}
for _round in range(5):
    for n, j in comp.items():
        p, s, g = make(n)
        out = j(p, s, g)
        jax.block_until_ready(out)
        p, s = out[0], (out[1][0] if n == "nocond" else out[1])
        t = time.perf_counter()
        for _ in range(10):
            out = j(p, s, g)
            p, s = out[0], (out[1][0] if n == "nocond" else out[1])
        jax.block_until_ready(p)
        res[n].append((time.perf_counter() - t) / 10 * 1e3)
base = np.array(res["plain"])
for n, v in res.items():
    print(f"{n:10s} {np.median(v):7.2f} ms  ratio {np.median(np.array(v) / base):.2f}")
