"""Compile time of packed views on XLA:CPU: which views let equal layers share kernels.

Usage: ``PYTHONPATH=. python benchmarks/view_compile_probe.py [--layers 100] [--width 32]
[--variants leaf,split,...] [--reps 2] [--step]``, or ``--model-step deep [--rounds 16]``
(step time of model_bench's packed step with these views vs one ``split``, and optax's)

A residual tanh MLP (``h += tanh(h W + b)``) on a batch of 128; the program is the value and
gradient of the mean square loss with respect to the params, per leaf (``leaf``) or with
respect to one packed buffer read through a view function. For each variant prints the
compile time (median of ``--reps`` compiles of the same lowering), the number of fusions in
the compiled HLO and the number of *distinct* fused computations (names and metadata
stripped; XLA:CPU compiles one kernel per distinct one), and, with ``--step``, the run time of
one call (median of 20). Variants run interleaved, in a rotating order.

- ``split``: one ``lax.split`` of the buffer (what gradtx did up to issue #14);
- ``dyn_zero``: ``dynamic_slice`` at ``offset + z``, ``z`` a zero computed from the buffer's
  first element by integer ops (``(bits >> 31) >> 1``);
- ``while_offs``: the offsets as the outputs of a ``while`` loop that runs once (trip count
  unknown to XLA), one scalar output per view, so each reader's fusion gets its offset as a
  parameter; ``dynamic_slice`` at those offsets;
- ``while_offs_k``: the same with the loop counter started at a constant 0 (XLA removes it);
- ``gradtx``: ``gradtx.unpack``'s op (``packed_views``: ``while_offs`` on a CPU, linear);

each primal view wrapped in a ``custom_jvp`` whose tangent is the ``split`` of the tangent, so
the transpose stays one concatenation.
"""

from __future__ import annotations

import hashlib
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gradtx._core.packed_views import views_p


def _opt(name: str, default):
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


LAYERS = _opt("--layers", 100)
WIDTH = _opt("--width", 32)
REPS = _opt("--reps", 2)
VARIANTS = _opt("--variants", "leaf,split,gradtx").split(",")

SHAPES = [s for _ in range(LAYERS) for s in ((WIDTH, WIDTH), (WIDTH,))]
SIZES = [int(np.prod(s)) for s in SHAPES]
OFFSETS = [int(o) for o in np.cumsum([0] + SIZES[:-1])]


def _zero_from(buf: jax.Array) -> jax.Array:
    """An int32 zero XLA cannot fold: the top bit of the first element shifted out."""
    bits = jax.lax.bitcast_convert_type(buf[0], jnp.uint32)
    return jax.lax.shift_right_logical(
        jax.lax.shift_right_logical(bits, jnp.uint32(31)), jnp.uint32(1)
    ).astype(jnp.int32)


def _split(buf):
    return [p.reshape(s) for p, s in zip(jax.lax.split(buf, SIZES), SHAPES)]


def _dyn(buf, offs):
    return [
        jax.lax.dynamic_slice(buf, (o,), (n,)).reshape(s) for o, n, s in zip(offs, SIZES, SHAPES)
    ]


def _offs_dyn_zero(buf):
    z = _zero_from(buf)
    return [jnp.int32(o) + z for o in OFFSETS]


def _offs_while(buf, zero):
    k0 = zero

    def cond(c):
        return c[0] < 1

    def body(c):
        k = c[0]
        return (k + 1,) + tuple(o + k for o in c[1:])

    out = jax.lax.while_loop(cond, body, (k0,) + tuple(jnp.int32(o) for o in OFFSETS))
    return list(out[1:])


def _with_split_tangent(primal_views):
    @jax.custom_jvp
    def views(buf):
        return primal_views(buf)

    @views.defjvp
    def _jvp(primals, tangents):
        (buf,), (t,) = primals, tangents
        return views(buf), _split(t)

    return views


VIEWS = {
    "split": _split,
    "dyn_zero": _with_split_tangent(lambda b: _dyn(b, _offs_dyn_zero(b))),
    "while_offs": _with_split_tangent(lambda b: _dyn(b, _offs_while(b, _zero_from(b)))),
    "while_offs_k": _with_split_tangent(lambda b: _dyn(b, _offs_while(b, jnp.int32(0)))),
    "gradtx": lambda b: views_p.bind(b, sizes=tuple(SIZES), shapes=tuple(SHAPES)),
}


def loss_leaf(leaves, x, y):
    h = x
    for i in range(LAYERS):
        h = h + jnp.tanh(h @ leaves[2 * i] + leaves[2 * i + 1])
    return jnp.mean((h - y) ** 2)


def program(variant: str):
    rng = np.random.default_rng(0)
    leaves = [jnp.asarray(rng.standard_normal(s) / np.sqrt(WIDTH), jnp.float32) for s in SHAPES]
    x = jnp.asarray(rng.standard_normal((128, WIDTH)), jnp.float32)
    y = jnp.sin(x)
    if variant == "leaf":
        f = jax.jit(jax.value_and_grad(loss_leaf))
        return f, (leaves, x, y)
    buf = jnp.concatenate([a.ravel() for a in leaves])
    view = VIEWS[variant]
    f = jax.jit(jax.value_and_grad(lambda b, x, y: loss_leaf(view(b), x, y)))
    return f, (buf, x, y)


_NAME = re.compile(r"%[\w.\-]+")
_META = re.compile(r",? ?metadata=\{[^}]*\}")


def fusion_stats(text: str) -> tuple[int, int]:
    """(fusions, distinct fused computations) in an optimized HLO module's text."""
    bodies, cur = [], None
    for line in text.splitlines():
        if re.match(r"^%?fused_computation[\w.\-]* ", line) or re.match(
            r"^%[\w.\-]*fus[\w.\-]* \(", line
        ):
            cur = []
            continue
        if cur is not None:
            if line.startswith("}"):
                bodies.append("\n".join(cur))
                cur = None
            else:
                cur.append(_NAME.sub("%", _META.sub("", line)).strip())
    uniq = {hashlib.sha1(b.encode()).hexdigest() for b in bodies}
    return len(bodies), len(uniq)


def main() -> None:
    progs = {v: program(v) for v in VARIANTS}
    ref = None
    times: dict = {v: [] for v in VARIANTS}
    stats = {}
    compiled = {}
    for r in range(REPS):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for v in order:
            f, args = progs[v]
            lowered = f.lower(*args)
            t0 = time.perf_counter()
            c = lowered.compile()
            times[v].append(time.perf_counter() - t0)
            compiled[v] = c
            print(f"# {v} compile {times[v][-1]:.2f} s", file=sys.stderr, flush=True)
    for v in VARIANTS:
        c = compiled[v]
        stats[v] = fusion_stats(c.as_text())
        f, args = progs[v]
        val, g = c(*args)
        flat = g if v == "leaf" else g
        gv = np.concatenate([np.ravel(a) for a in flat]) if v == "leaf" else np.asarray(g)
        if ref is None:
            ref = (float(val), gv)
        same = float(val) == ref[0] and np.array_equal(gv, ref[1])
        step = ""
        if "--step" in sys.argv:
            ts = []
            for _ in range(20):
                t0 = time.perf_counter()
                jax.block_until_ready(c(*args))
                ts.append(time.perf_counter() - t0)
            step = f" step {statistics.median(ts) * 1e3:.2f} ms"
        print(
            f"{v:14s} compile {statistics.median(times[v]):6.2f} s  fusions {stats[v][0]:4d}"
            f"  distinct {stats[v][1]:4d}  same-as-{VARIANTS[0]} {same}{step}",
            flush=True,
        )


class _SplitOnly:
    """Stands in for ``packed_views`` while a program is traced: the views are one split."""

    @staticmethod
    def bind(buf, *, sizes, shapes):
        from gradtx._core.packed_views import split_views

        return split_views(buf, sizes=sizes, shapes=shapes)


def model_step(name: str, rounds: int) -> None:
    """``--model-step NAME``: step time of model_bench's packed step with the views of
    gradtx against the same step with one ``split`` (the earlier views), and optax's."""
    import model_bench as mb

    import gradtx._core.packed as packed_mod

    model = mb._build(name)
    otx, gtx = mb.chains()
    split = mb.train_case("packed split", model, gtx, gradtx_apply(), True)
    fn = split.fn

    def traced_with_split(*a):
        real, packed_mod.views_p = packed_mod.views_p, _SplitOnly
        try:
            return fn(*a)
        finally:
            packed_mod.views_p = real

    split.fn = traced_with_split
    cases = [
        split,
        mb.train_case("packed views", model, gtx, gradtx_apply(), True),
        mb.train_case("optax", model, otx, mb.optax.apply_updates, False),
    ]
    for impl, r in mb.measure(cases, rounds, mirror=False).items():
        print(
            f"{name} {impl:13s} step {r['step_ms']:.2f} ms  x packed-split {r['ratio']:.3f}"
            f"  p10-p90 {r['p10_p90'][0]:.2f}-{r['p10_p90'][1]:.2f}  faster {r['faster']}"
            f"  compile {r['compile_s']:.1f} s",
            flush=True,
        )


def gradtx_apply():
    import gradtx

    return gradtx.apply_updates


if __name__ == "__main__":
    if "--model-step" in sys.argv:
        sys.path.insert(0, __import__("os").path.dirname(__file__))
        model_step(_opt("--model-step", "deep"), _opt("--rounds", 16))
    else:
        main()
