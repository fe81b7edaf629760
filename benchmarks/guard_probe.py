"""Probe of the non-finite guard's cost: a lax.cond around the update against a where-select
of every slot, with and without donating params and state (docs/benchmarks.md, "third probe"),
and hand-written clip -> adamw -> schedule steps that place the select differently (``hw_*``,
"fourth probe").

Usage (from the repository root)::

    python benchmarks/guard_probe.py [--no-donate] [--rounds N] [--only a,b,...] [--tiny]

``--tiny`` uses a 3-leaf tree (for reading the HLO: ``--dump DIR`` writes each compiled
step's text there). Every case prints its compiled ``copy`` count and XLA's temporaries,
then the median step time and the median per-round ratio to ``plain`` (interleaved rounds).

The gradtx cases: ``plain`` (the clip+adamw+sched chain, the reference), ``cur``
(``skip_nonfinite`` of it, the default ``lax.cond`` form), ``cur_inplace``
(``skip_nonfinite(..., in_place=True)``: the inner chain run inside ``keeping``, each slot
selected where its rule computes it), ``cur_after`` (``in_place=True`` with the keep select
placed after each rule instead of where it computes the slot); ``sel``/``selp``/``nocond``:
the third probe's hand-made selects around the plain chain.

The hand-written cases, with ``ok`` the finiteness flag computed first from the gradients (by
``fin``, the per-leaf ``all(isfinite(g))`` gradtx used before, which on CPU writes a bool
array per leaf; ``hw_normflag`` reads it from the global norm instead):

- ``hw_plain``: no flag (the reference for the ``hw_*`` cases; same math as gradtx's chain);
- ``hw_after``: the slots selected after the rule, the update computed from the unselected
  moments (what a select applied by the lifting after ``update_leaf`` gives);
- ``hw_fused``: ``m = where(ok, b1*m + (1-b1)*g, m)`` (and ``v``), the update computed from
  the *selected* moments, ``where(ok, u, 0)``;
- ``hw_gsel``: ``g = where(ok, g, 0)`` and decays ``where(ok, b, 1)`` (so a skipped step
  computes ``1*m + 0*0``), no select on the slots;
- ``hw_mul``: as ``hw_gsel`` with the flag as a float multiplier ``b = 1 - f*(1-b)``,
  ``u * f``;
- ``hw_after_bar``: ``hw_after`` with the new moments through ``optimization_barrier``;
- ``hw_fused_bar``: ``hw_fused`` with the selected moments through ``optimization_barrier``;
- ``hw_order_bar``: the update from the old state, then ``(u, m, v, g)`` through a barrier and
  the selected state recomputed after it (an ordering that a wrapper could impose without
  touching the rule; ``u`` is materialized);
- ``hw_normflag``: ``hw_fused`` with ``ok = isfinite(global norm)`` (no separate reduction).
"""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.argv.append("--small")
DONATE = () if "--no-donate" in sys.argv else (0, 1)
ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 5
ONLY = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
DUMP = sys.argv[sys.argv.index("--dump") + 1] if "--dump" in sys.argv else None
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import step_bench as sb  # noqa: E402

import gradtx  # noqa: E402
from gradtx._core import stage as stage_mod  # noqa: E402

otx, gtx = sb.chains()["clip+adamw+sched"]
shp = [(64, 32), (32,), (32, 128)] if "--tiny" in sys.argv else sb.shapes("transformer")
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
skip_in_place = gradtx.skip_nonfinite(gtx, in_place=True)


def cur(p, s, g):
    u, s = skip.update(g, s, p)
    return gradtx.apply_updates(p, u), s


def cur_in_place(p, s, g):
    u, s = skip_in_place.update(g, s, p)
    return gradtx.apply_updates(p, u), s


def patched(module, name, value, step):
    """``step`` traced with ``module.name`` replaced by ``value``."""

    def run(p, s, g):
        old = getattr(module, name)
        setattr(module, name, value)
        try:
            return step(p, s, g)
        finally:
            setattr(module, name, old)

    return run


def _select_after(rule, args, keep):  # the keep select after the rule, not where it computes
    u, ns = rule(*args)
    return u, {k: jnp.where(keep, v, args[1][k].astype(v.dtype)) for k, v in ns.items()}


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


# --- hand-written clip -> adamw -> schedule (the math of gtx, written out) ---------------------
B1, B2, EPS, WD = 0.9, 0.999, 1e-8, 0.1
SCHED = sb.gradtx_sched()
F32 = jnp.float32


def hw_init(params):
    zeros = lambda: [jnp.zeros_like(x) for x in params]  # noqa: E731
    return {"count": jnp.zeros([], jnp.int32), "mu": zeros(), "nu": zeros()}


def _moments(m, v, g, b1, b2):
    return b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * (g * g)


def hw(mode):
    barrier = jax.lax.optimization_barrier

    def step(p, s, g):
        count = s["count"]
        t = (count + 1).astype(F32)
        norm = jnp.sqrt(sum(jnp.sum(x * x) for x in g))
        factor = jnp.where(norm <= 1.0, F32(1), 1 / norm)
        lr = SCHED(count).astype(F32)
        bc1, bc2 = 1 - F32(B1) ** t, 1 - F32(B2) ** t
        ok = jnp.isfinite(norm) if mode == "normflag" else fin(g)
        okf = ok.astype(F32)
        ps, ms, vs, us = [], [], [], []
        for x, m, v, gi in zip(p, s["mu"], s["nu"], g):
            gi = gi * factor
            if mode in ("gsel", "mul"):
                gz = jnp.where(ok, gi, F32(0))
                if mode == "mul":
                    b1, b2 = 1 - okf * (1 - F32(B1)), 1 - okf * (1 - F32(B2))
                else:
                    b1, b2 = jnp.where(ok, F32(B1), F32(1)), jnp.where(ok, F32(B2), F32(1))
                mn, vn = _moments(m, v, gz, b1, b2)
                mo, vo, mu_, vu_ = mn, vn, mn, vn
            else:
                mn, vn = _moments(m, v, gi, F32(B1), F32(B2))
                if mode == "plain":
                    mo, vo, mu_, vu_ = mn, vn, mn, vn
                elif mode in ("after", "after_bar", "order_bar"):
                    if mode == "after_bar":
                        mn, vn = barrier((mn, vn))
                    mo, vo = jnp.where(ok, mn, m), jnp.where(ok, vn, v)
                    mu_, vu_ = mn, vn
                else:  # fused, fused_bar, normflag
                    mo, vo = jnp.where(ok, mn, m), jnp.where(ok, vn, v)
                    if mode == "fused_bar":
                        mo, vo = barrier((mo, vo))
                    mu_, vu_ = mo, vo
            u = -lr * ((mu_ / bc1) / (jnp.sqrt(vu_ / bc2) + EPS) + WD * x)
            if mode == "mul":
                u = u * okf
            elif mode != "plain":
                u = jnp.where(ok, u, F32(0))
            us.append(u)
            ms.append(mo)
            vs.append(vo)
        if mode == "order_bar":  # state written after everything that reads the old state
            us, mu0, nu0, g2 = barrier((us, s["mu"], s["nu"], list(g)))
            ms, vs = [], []
            for m, v, gi in zip(mu0, nu0, g2):
                mn, vn = _moments(m, v, gi * factor, F32(B1), F32(B2))
                ms.append(jnp.where(ok, mn, m))
                vs.append(jnp.where(ok, vn, v))
        ps = [x + u for x, u in zip(p, us)]
        new_count = jnp.where(count < 2**31 - 1, count + 1, count)
        if mode != "plain":
            new_count = jnp.where(ok, new_count, count)
        return ps, {"count": new_count, "mu": ms, "nu": vs}

    return step


HW = ["plain", "after", "fused", "gsel", "mul", "after_bar", "fused_bar", "order_bar", "normflag"]

cases = {
    "plain": plain,
    "cur": cur,
    "cur_inplace": cur_in_place,
    "cur_after": patched(stage_mod, "run_kept", _select_after, cur_in_place),
    "sel": sel(fin),
    "sel_mul": sel(fin_mul),
    "selp": selp(fin),
    "nocond": nocond,
    **{f"hw_{m}": hw(m) for m in HW},
}
if ONLY:
    cases = {n: f for n, f in cases.items() if n in ONLY or n == "plain"}
key = jax.random.PRNGKey(0)


def make(n="plain"):
    params = [jnp.zeros(s, jnp.float32) for s in shp]
    grads = [jax.random.normal(key, s, jnp.float32) for s in shp]
    init = hw_init if n.startswith("hw_") else (skip if n.startswith("cur") else gtx).init
    return params, init(params), grads


comp = {}
for n, f in cases.items():
    p, s, g = make(n)
    if n == "nocond":
        j = jax.jit(lambda p, s, g: nocond(p, s, g), donate_argnums=DONATE)
    else:
        j = jax.jit(f, donate_argnums=DONATE)
    c = j.lower(p, s, g).compile()
    txt = c.as_text()
    if DUMP:
        os.makedirs(DUMP, exist_ok=True)
        with open(os.path.join(DUMP, f"{n}.txt"), "w") as fh:
            fh.write(txt)
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
for _round in range(ROUNDS):
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
hw_base = np.array(res["hw_plain"]) if "hw_plain" in res else base
for n, v in res.items():
    ref = hw_base if n.startswith("hw_") else base
    print(
        f"{n:14s} {np.median(v):7.2f} ms  ratio {np.median(np.array(v) / base):.2f}"
        f"  (to hw_plain {np.median(np.array(v) / ref):.2f})"
    )
print("load average", os.getloadavg())
