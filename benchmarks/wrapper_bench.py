"""The training-loop wrappers' cost: a wrapped step against the plain one, a whole
accumulation cycle against a hand-written one, and accumulation memory against optax's
MultiSteps.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/wrapper_bench.py OUT.jsonl [--small] [--rounds N]
        [--wrapped-only] [--sections hlo,wrapped,cycle,memory]

Section ``hlo`` (deterministic): every program below compiled once with params and state
donated; ``copies``: ``copy`` instructions in the compiled entry computation and in the whole
module, ``temp_mb``: XLA's temporaries (on CPU a temporary buffer this large is mapped afresh
on every call, so its page faults cost about as much as writing it).

Section ``ab-wrapped`` (interleaved rounds, ``ab_bench.ab``: compile-order and input-order
effects controlled, ratios per round): on the transformer tree, the plain clip+adamw+sched
step (the reference) against the same optimizer wrapped as a user of the training-loop issue
would: parameter groups (no weight decay on biases and norms), gradient accumulation
(``MultiSteps``, k = 1 so that every call is an optimizer step), a non-finite guard
(``skip_nonfinite``) and an EMA of the parameters (``ema_params``); also the wrappers one at a
time, and optax's plain chain. The guard is timed in both forms: the default ``lax.cond`` and
``in_place=True`` (each slot kept where its stage computes it), alone and in the wrapped step.
The two kinds of ``MultiSteps`` micro-step of its general path (``k > 1``) are timed alone:
an emitting one (``every_k_schedule=lambda step: 1``, a function, so the general path with
every call emitting) and a non-emitting one (``k = 2**30``).

Section ``ab-cycle``: one accumulation cycle of k = 4 micro-steps (4 calls of the step with
the same gradients) of ``MultiSteps(plain, 4)`` against the hand-written cycle (the
reference), as one would write it without a wrapper: ``acc = g``, ``acc = acc + g`` twice and
``acc = (acc + g)/4`` (each a jitted call, the accumulator donated), then one call of the plain
step on ``acc``. (The mean is formed in the last accumulation, not in the plain step: read by
the norm and both moments there, it would be materialized, a params-sized temporary.)
``step_ms`` is per cycle; the ratio is the accumulation overhead. optax's ``MultiSteps`` cycle
is timed beside them.

Section ``accumulation-memory``: ``MultiSteps(adamw, k=4)``, gradtx's and optax's, one
micro-step compiled with params and state donated; XLA's memory analysis (arguments, outputs,
temporaries) and the state bytes.
"""

from __future__ import annotations

import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ab_bench  # noqa: E402
import step_bench as sb  # noqa: E402

import gradtx  # noqa: E402

K = 4
SECTIONS = (
    sys.argv[sys.argv.index("--sections") + 1].split(",")
    if "--sections" in sys.argv
    else ["hlo", "wrapped", "cycle"] + ([] if "--wrapped-only" in sys.argv else ["memory"])
)


def _plain() -> tuple:
    return sb.chains()["clip+adamw+sched"]


def _variants() -> dict:
    _, gtx = _plain()
    groups = gradtx.groups(gtx, [gradtx.group("no_decay", gradtx.no_decay, weight_decay=0.0)])
    return {
        "gradtx groups": groups,
        "gradtx MultiSteps(k=1)": gradtx.MultiSteps(gtx, 1),
        "gradtx MultiSteps emitting (k=lambda step: 1)": gradtx.MultiSteps(gtx, lambda s: 1),
        "gradtx MultiSteps non-emitting (k=2**30)": gradtx.MultiSteps(gtx, 2**30),
        "gradtx skip_nonfinite": gradtx.skip_nonfinite(gtx),
        "gradtx skip_nonfinite(in_place)": gradtx.skip_nonfinite(gtx, in_place=True),
        "gradtx ema_params": gradtx.ema_params(gtx, 0.999),
        "gradtx all four": gradtx.MultiSteps(
            gradtx.ema_params(gradtx.skip_nonfinite(groups), 0.999), 1
        ),
        "gradtx all four (in_place)": gradtx.MultiSteps(
            gradtx.ema_params(gradtx.skip_nonfinite(groups, in_place=True), 0.999), 1
        ),
        "gradtx groups + skip(in_place) + ema": gradtx.ema_params(
            gradtx.skip_nonfinite(groups, in_place=True), 0.999
        ),
        "gradtx ema_params(every=10)": gradtx.ema_params(gtx, 0.99, every=10),
        "gradtx all four (in_place, ema every=10)": gradtx.MultiSteps(
            gradtx.ema_params(gradtx.skip_nonfinite(groups, in_place=True), 0.99, every=10), 1
        ),
    }


def _entry(text: str) -> str:
    m = re.search(r"\nENTRY [^\n]*\{\n(.*?)\n\}", text, re.S)
    return m.group(1) if m else ""


def _hlo(impl: str, compiled) -> None:
    text = compiled.as_text()
    m = compiled.memory_analysis()
    sb.emit(
        {
            "section": "hlo",
            "tree": "transformer",
            "impl": impl,
            "copies_entry": _entry(text).count(" copy("),
            "copies_all": text.count(" copy("),
            "conditionals": text.count(" conditional("),
            "temp_mb": round(m.temp_size_in_bytes / 2**20, 1) if m else None,
        }
    )


def _fresh(fn):
    return lambda *a: fn(*a)


class CycleCase(sb.Case):
    """A cycle of calls of several jitted parts on one argument list ``make_args()`` (its
    first ``n_carry`` entries donated). ``parts``: ``(fn, ins, outs, count)``: ``fn`` takes
    the arguments at indices ``ins`` and returns new values for the indices ``outs``, and
    runs ``count`` times in a row. ``compiled`` runs the whole cycle."""

    def __init__(self, impl, make_args, n_carry, parts):
        super().__init__(impl, None, make_args, n_carry)
        self.parts = parts

    def copy(self) -> CycleCase:
        """The same cycle of new function objects: traced and compiled anew."""
        fresh = [(_fresh(fn), *rest) for fn, *rest in self.parts]
        return CycleCase(self.impl, self.make_args, self.n_carry, fresh)

    def lower(self):
        args = jax.eval_shape(self.make_args)
        t = time.perf_counter()
        self.lowered = [
            jax.jit(fn, donate_argnums=[j for j, i in enumerate(ins) if i < self.n_carry]).lower(
                *[args[i] for i in ins]
            )
            for fn, ins, _, _ in self.parts
        ]
        self.trace_s = time.perf_counter() - t

    def compile(self):
        t = time.perf_counter()
        try:
            self.executables = [lowered.compile() for lowered in self.lowered]
        except Exception as e:  # keep going
            self.error = repr(e)[:300]
            return
        self.compile_s = self.trace_s + time.perf_counter() - t
        steps = [(c, ins, outs, n) for c, (_, ins, outs, n) in zip(self.executables, self.parts)]

        def cycle(*args):
            args = list(args)
            for c, ins, outs, n in steps:
                for _ in range(n):
                    for i, v in zip(outs, c(*[args[i] for i in ins])):
                        args[i] = v
            return tuple(args[: self.n_carry])

        self.compiled = cycle


def _copy(case):  # ab_bench's fresh copy of a case, also for a CycleCase
    return case.copy() if isinstance(case, CycleCase) else _plain_copy(case)


_plain_copy = ab_bench._copy
ab_bench._copy = _copy


def _cycles(shp) -> list:
    _, gtx = _plain()
    key = jax.random.PRNGKey(0)

    def make(tx, acc):
        def fn():
            params = [jnp.zeros(s, jnp.float32) for s in shp]
            grads = [jax.random.normal(key, s, jnp.float32) for s in shp]
            return (
                [params, tx.init(params)]
                + ([[jnp.zeros_like(p) for p in params]] if acc else [])
                + [grads]
            )

        return fn

    def first(acc, g):
        return ([x.copy() for x in g],)

    def add(acc, g):
        return ([a + x for a, x in zip(acc, g)],)

    def last(acc, g):
        return ([(a + x) / K for a, x in zip(acc, g)],)

    def plain(p, s, mean):  # the accumulator passed through (donated, not written)
        u, s = gtx.update(mean, s, p)
        return gradtx.apply_updates(p, u), s, mean

    def accumulating(tx, apply):
        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return apply(p, u), s

        return [(step, (0, 1, 2), (0, 1), K)]

    otx = optax.MultiSteps(_plain()[0], K).gradient_transformation()
    ms = gradtx.MultiSteps(gtx, K)
    ms_in_place = gradtx.MultiSteps(gtx, K, in_place=True)
    return [
        CycleCase(f"hand-written cycle (k={K})", make(gtx, True), 3,
                  [(first, (2, 3), (2,), 1), (add, (2, 3), (2,), K - 2),
                   (last, (2, 3), (2,), 1), (plain, (0, 1, 2), (0, 1, 2), 1)]),
        CycleCase(f"gradtx MultiSteps cycle (k={K})", make(ms, False), 2,
                  accumulating(ms, gradtx.apply_updates)),
        CycleCase(f"gradtx MultiSteps(in_place) cycle (k={K})", make(ms_in_place, False), 2,
                  accumulating(ms_in_place, gradtx.apply_updates)),
        CycleCase(f"optax MultiSteps cycle (k={K})", make(otx, False), 2,
                  accumulating(otx, optax.apply_updates)),
    ]  # fmt: skip


def _cases(shp) -> list:
    otx, gtx = _plain()
    cases = [sb.opt_case("gradtx plain", gtx, shp, gradtx.apply_updates)]
    cases += [sb.opt_case(n, tx, shp, gradtx.apply_updates) for n, tx in _variants().items()]
    cases.append(sb.opt_case("optax plain", otx, shp, optax.apply_updates))
    return cases


def hlo_section() -> None:
    shp = sb.shapes("transformer")
    for case in _cases(shp) + _cycles(shp):
        case.lower()
        case.compile()
        if case.error:
            sb.emit({"section": "hlo", "impl": case.impl, "error": case.error})
            continue
        if isinstance(case, CycleCase):
            for i, c in enumerate(case.executables):
                _hlo(f"{case.impl} part {i}", c)
        else:
            _hlo(case.impl, case.compiled)
        case.compiled = case.lowered = case.executables = None


def wrapped_section() -> None:
    shp = sb.shapes("transformer")
    ab_bench.ab(_cases(shp), {"section": "ab-wrapped", "tree": "transformer", "leaves": len(shp)})


def cycle_section() -> None:
    shp = sb.shapes("transformer")
    ab_bench.ab(_cycles(shp), {"section": "ab-cycle", "tree": "transformer", "k": K})


def _memory(impl: str, tx, shp) -> None:
    params = [jnp.zeros(s, jnp.float32) for s in shp]
    grads = [jnp.ones(s, jnp.float32) for s in shp]
    state = tx.init(params)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    with jax.numpy_dtype_promotion("standard"):
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    m = compiled.memory_analysis()
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
    sb.emit(
        {
            "section": "accumulation-memory",
            "tree": "transformer",
            "impl": impl,
            "params_mb": round(sum(x.size * 4 for x in params) / 2**20, 1),
            "state_mb": round(state_bytes / 2**20, 1),
            "argument_mb": round(m.argument_size_in_bytes / 2**20, 1) if m else None,
            "output_mb": round(m.output_size_in_bytes / 2**20, 1) if m else None,
            "temp_mb": round(m.temp_size_in_bytes / 2**20, 1) if m else None,
            "alias_mb": round(m.alias_size_in_bytes / 2**20, 1) if m else None,
        }
    )


def memory_section() -> None:
    shp = sb.shapes("transformer")
    _memory("gradtx MultiSteps(adamw, 4)", gradtx.MultiSteps(gradtx.adamw(1e-3), 4), shp)
    _memory("optax MultiSteps(adamw, 4)", optax.MultiSteps(optax.adamw(1e-3), 4), shp)
    _memory(
        "gradtx MultiSteps(adamw, 4, in_place=True)",
        gradtx.MultiSteps(gradtx.adamw(1e-3), 4, in_place=True),
        shp,
    )
    _memory(
        "gradtx MultiSteps(adamw, 4, accumulator_dtype=bfloat16)",
        gradtx.MultiSteps(gradtx.adamw(1e-3), 4, accumulator_dtype=jnp.bfloat16),
        shp,
    )


def main() -> None:
    sb.emit({"section": "env", "jax": jax.__version__, "optax": optax.__version__,
             "device": str(jax.devices()[0]), "small": sb.SMALL,
             "load_average": os.getloadavg()})  # fmt: skip
    sections = {"memory": memory_section, "hlo": hlo_section, "wrapped": wrapped_section,
                "cycle": cycle_section}  # fmt: skip
    for name in SECTIONS:
        sections[name]()
    sb.emit({"section": "end", "load_average": os.getloadavg()})


if __name__ == "__main__":
    main()
