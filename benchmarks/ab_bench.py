"""Interleaved A/B timing of gradtx against optax on the same machine, in the same minutes.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/ab_bench.py OUT.jsonl [--small] [--rounds N]
        [--sections opt,train] [--trees single,transformer,tiny]

``step_bench.py`` times each program on its own (median of 5 loops), one after the other. On
a busy or noisy machine two programs of equal speed then differ by more than 10 % from one
run to the next, so a claim like "never slower than optax" cannot be read from it. Here the
programs of one comparison (optax, gradtx per-leaf, gradtx packed) are compiled first, then
timed in rounds: in each round every program runs one loop (of at least ~50 ms, at least 3
steps), in an order rotated from round to round, and each program's time is divided by
optax's time *in that round*. Machine-wide slowdowns hit every program of a round alike and
cancel in the ratio. Reported per program: the median step time, the median of the per-round
ratios to optax (< 1: faster than optax), its 10th-90th percentile range, and the share of
rounds in which the program was faster than optax.

The programs and inputs are ``step_bench.py``'s: the ``adamw`` and clip chains on the three
trees (``opt``), and whole training steps of the wide and deep MLPs and the flax nnx
transformer with the clip chain (``train``).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_bench as sb  # noqa: E402

import gradtx  # noqa: E402

ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 21
SECTIONS = (
    sys.argv[sys.argv.index("--sections") + 1].split(",")
    if "--sections" in sys.argv
    else ["opt", "train"]
)


def _loop_len(compiled, carry, fixed) -> tuple[int, tuple]:
    """Steps per loop so that one loop takes >= ~50 ms; also returns the warmed-up carry."""
    carry = compiled(*carry, *fixed)
    jax.block_until_ready(carry)
    t = time.perf_counter()
    carry = compiled(*carry, *fixed)
    jax.block_until_ready(carry)
    est = max(time.perf_counter() - t, 1e-9)
    return int(min(max(3, 0.05 / est), 2000)), carry


def ab(cases: list, base: dict) -> None:
    """Compiles ``cases`` (the first is the reference), times them in interleaved rounds."""
    live = []
    for c in cases:
        try:
            c.lower()
            c.compile()
        except Exception as e:  # keep going
            c.error = repr(e)[:300]
        if c.error:
            sb.emit(dict(base, impl=c.impl, error=c.error))
            continue
        args = c.make_args()
        carry, fixed = tuple(args[: c.n_carry]), tuple(args[c.n_carry :])
        iters, carry = _loop_len(c.compiled, carry, fixed)
        live.append([c, carry, fixed, iters, []])
    if len(live) < 2 or live[0][0].impl != cases[0].impl:
        return
    for r in range(ROUNDS):
        k = r % len(live)
        for entry in live[k:] + live[:k]:
            c, carry, fixed, iters, ts = entry
            t = time.perf_counter()
            for _ in range(iters):
                carry = c.compiled(*carry, *fixed)
            jax.block_until_ready(carry)
            ts.append((time.perf_counter() - t) / iters * 1e3)
            entry[1] = carry
    ref = np.asarray(live[0][4])
    for c, _, _, iters, ts in live:
        ratio = np.asarray(ts) / ref
        sb.emit(
            dict(
                base,
                impl=c.impl,
                step_ms=round(float(np.median(ts)), 4),
                ratio_to_optax=round(float(np.median(ratio)), 3),
                p10_p90=[round(float(q), 3) for q in np.percentile(ratio, [10, 90])],
                faster_rounds=f"{int((ratio < 1).sum())}/{len(ratio)}",
                compile_s=round(c.compile_s, 2),
                steps_per_loop=iters,
            )
        )
    for e in live:
        e[0].compiled = e[0].lowered = None


def opt_section() -> None:
    for chain, (otx, gtx) in sb.chains().items():
        for tree in sb.TREES:
            shp = sb.shapes(tree)
            base = {"section": "ab-opt", "tree": tree, "chain": chain, "leaves": len(shp)}
            ab(
                [
                    sb.opt_case("optax", otx, shp, optax.apply_updates),
                    sb.opt_case("gradtx per-leaf", gtx, shp, gradtx.apply_updates),
                    sb.opt_case("gradtx packed", gtx, shp, gradtx.apply_updates, "all"),
                ],
                base,
            )


def train_section() -> None:
    _, (otx, gtx) = list(sb.chains().items())[1]
    for kind, label, batch, d in (("wide", "wide MLP", 64, 256), ("deep", "deep MLP", 128, 32)):
        if not sb.SMALL and kind == "wide":
            batch, d = 128, 1024

        def pfn(kind=kind):
            return sb.mlp_params(kind, jax.random.PRNGKey(1))

        def dfn(batch=batch, d=d):
            x = jax.random.normal(jax.random.PRNGKey(2), (batch, d))
            return [x, jax.numpy.sin(x)]

        base = {"section": "ab-train", "model": label, "leaves": len(jax.tree.leaves(pfn()))}
        ab(
            [
                sb.train_case("optax", otx, pfn, sb.mlp_loss, dfn, optax.apply_updates),
                sb.train_case("gradtx per-leaf", gtx, pfn, sb.mlp_loss, dfn, gradtx.apply_updates),
                sb.train_case(
                    "gradtx packed",
                    gtx,
                    pfn,
                    sb.mlp_loss,
                    dfn,
                    gradtx.apply_updates,
                    gradtx.DEFAULT_THRESHOLD,
                ),
            ],
            base,
        )
    fresh, loss, (b, t), vocab = sb.nnx_model()

    def tokens():
        return [jax.random.randint(jax.random.PRNGKey(3), (b, t), 0, vocab)]

    base = {
        "section": "ab-train",
        "model": "nnx transformer",
        "leaves": len(jax.tree.leaves(fresh())),
    }
    ab(
        [
            sb.train_case("optax", otx, fresh, loss, tokens, optax.apply_updates),
            sb.train_case("gradtx per-leaf", gtx, fresh, loss, tokens, gradtx.apply_updates),
            sb.train_case(
                "gradtx packed",
                gtx,
                fresh,
                loss,
                tokens,
                gradtx.apply_updates,
                gradtx.DEFAULT_THRESHOLD,
            ),
        ],
        base,
    )


def main() -> None:
    sb.emit(
        {
            "script": "ab_bench",
            "devices": str(jax.devices()),
            "jax": jax.__version__,
            "optax": optax.__version__,
            "small": sb.SMALL,
            "cpus": sb.CPUS,
            "rounds": ROUNDS,
        }
    )
    if "opt" in SECTIONS:
        opt_section()
    if "train" in SECTIONS:
        train_section()
    sb.emit({"done": True, "wall_s": round(time.perf_counter() - sb.T0, 1)})


if __name__ == "__main__":
    main()
