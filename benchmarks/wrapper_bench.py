"""The training-loop wrappers' cost: a wrapped step against the plain one, and accumulation
memory against optax's MultiSteps.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/wrapper_bench.py OUT.jsonl [--small] [--rounds N]
        [--wrapped-only]

Section ``ab-wrapped`` (interleaved rounds, ``ab_bench.ab``: compile-order and input-order
effects controlled, ratios per round): on the transformer tree, the plain clip+adamw+sched
step (the reference) against the same optimizer wrapped as a user of the training-loop issue
would: parameter groups (no weight decay on biases and norms), gradient accumulation
(``MultiSteps``, k = 1 so that every call is an optimizer step), a non-finite guard
(``skip_nonfinite``) and an EMA of the parameters (``ema_params``); also the wrappers one at a
time, and optax's plain chain. The guard is timed in both forms: the default ``lax.cond`` and
``in_place=True`` (each slot kept where its stage computes it), alone and in the wrapped step.

Section ``accumulation-memory``: ``MultiSteps(adamw, k=4)``, gradtx's and optax's, one
micro-step compiled with params and state donated; XLA's memory analysis (arguments, outputs,
temporaries) and the state bytes.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ab_bench  # noqa: E402
import step_bench as sb  # noqa: E402

import gradtx  # noqa: E402


def _plain() -> tuple:
    return sb.chains()["clip+adamw+sched"]


def wrapped_section() -> None:
    otx, gtx = _plain()
    shp = sb.shapes("transformer")
    groups = gradtx.groups(gtx, [gradtx.group("no_decay", gradtx.no_decay, weight_decay=0.0)])
    variants = {
        "gradtx groups": groups,
        "gradtx MultiSteps(k=1)": gradtx.MultiSteps(gtx, 1),
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
    }
    base = {"section": "ab-wrapped", "tree": "transformer", "leaves": len(shp)}
    cases = [sb.opt_case("gradtx plain", gtx, shp, gradtx.apply_updates)]
    cases += [sb.opt_case(n, tx, shp, gradtx.apply_updates) for n, tx in variants.items()]
    cases.append(sb.opt_case("optax plain", otx, shp, optax.apply_updates))
    ab_bench.ab(cases, base)


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
        "gradtx MultiSteps(adamw, 4, accumulator_dtype=bfloat16)",
        gradtx.MultiSteps(gradtx.adamw(1e-3), 4, accumulator_dtype=jnp.bfloat16),
        shp,
    )


def main() -> None:
    sb.emit({"section": "env", "jax": jax.__version__, "optax": optax.__version__,
             "device": str(jax.devices()[0]), "small": sb.SMALL})  # fmt: skip
    if "--wrapped-only" not in sys.argv:
        memory_section()
    wrapped_section()


if __name__ == "__main__":
    main()
