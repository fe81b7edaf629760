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
cancel in the ratio. Two position effects are controlled (see :func:`ab`): executables
compiled earlier run faster (measured: up to 1.24x for the same program recompiled), so every
program is compiled twice, in mirrored order, and timed as the geometric mean of its two
executables; and inputs set up first can run faster, so the rounds are split into two halves
with the inputs allocated in opposite orders. Per program: the median step time, the ratio to
optax (< 1: faster than optax), the two halves' ratios, the 10th-90th percentile of the
per-round ratios, and the share of rounds in which the program was faster than optax.

The programs and inputs are ``step_bench.py``'s: the ``adamw`` and clip chains on the three
trees (``opt``), and whole training steps of the wide and deep MLPs and the flax nnx
transformer with the clip chain (``train``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_bench as sb  # noqa: E402

import gradtx  # noqa: E402

ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 30
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


def _rounds(entries: list, rounds: int, out: dict) -> None:
    """Times every entry once per round, in an order rotated each round; appends the per-loop
    step time (ms) to ``out[name]``."""
    for r in range(rounds):
        k = r % len(entries)
        for entry in entries[k:] + entries[:k]:
            name, compiled, carry, fixed, iters = entry
            t = time.perf_counter()
            for _ in range(iters):
                carry = compiled(*carry, *fixed)
            jax.block_until_ready(carry)
            out.setdefault(name, []).append((time.perf_counter() - t) / iters * 1e3)
            entry[2] = carry


def _copy(case: Any) -> Any:
    """The same program as a new function object: traced and compiled anew."""
    fn = case.fn
    return sb.Case(case.impl, lambda *a: fn(*a), case.make_args, case.n_carry)


def ab(cases: list, base: dict) -> None:
    """Compiles ``cases`` (the first is the reference), times them in interleaved rounds.

    Two position effects are controlled (both measured on the 2-core CPU with 2,000 leaves):

    - *Compile order.* The earlier an executable is compiled, the faster it runs: the same
      optax program compiled a second time ran 1.24x the first; with gradtx compiled first,
      optax compiled second ran 1.05x, gradtx again 1.10x, optax again 1.10x. So a throwaway
      copy of the reference is compiled first, then every program in the given order, then
      every program again in reverse order; a program's time in a round is the geometric mean
      of its two executables' times, which cancels a linear drift.
    - *Input order.* Inputs set up first can run faster (1.08x for a second set of inputs to
      the same executable), so the rounds run in two halves with the inputs allocated in
      opposite orders.

    Reported per program: the median step time, the ratio to the reference (geometric mean of
    the two halves' medians of the per-round ratios), those two medians, the 10th-90th
    percentile of the per-round ratios, the rounds in which it was faster than the reference,
    and ``recompiled``: the median ratio of its second executable to its first (the size of
    the compile-order effect it was corrected for).
    """
    warm = _copy(cases[0])
    try:
        warm.lower()
        warm.compile()
    except Exception:  # the reference's own compile reports the error
        pass
    warm.compiled = warm.lowered = None
    instances = [(c.impl, 0, c) for c in cases] + [(c.impl, 1, _copy(c)) for c in cases[::-1]]
    failed: set = set()
    for impl, _, c in instances:
        if impl in failed:
            continue
        try:
            c.lower()
            c.compile()
        except Exception as e:  # keep going
            c.error = repr(e)[:300]
        if c.error:
            sb.emit(dict(base, impl=impl, error=c.error))
            failed.add(impl)
    live = [x for x in instances if x[0] not in failed]
    impls = [c.impl for c in cases if c.impl not in failed]
    if cases[0].impl in failed or len(impls) < 2:
        return
    halves: list[dict] = []
    iters: dict = {}
    for order in (live, live[::-1]):
        entries = []
        for impl, k, c in order:
            args = c.make_args()
            carry, fixed = tuple(args[: c.n_carry]), tuple(args[c.n_carry :])
            n, carry = _loop_len(c.compiled, carry, fixed)
            iters.setdefault(impl, n)
            entries.append([(impl, k), c.compiled, carry, fixed, iters[impl]])
        times: dict = {}
        _rounds(entries, max(1, ROUNDS // 2), times)
        halves.append(times)
        del entries
    ref = cases[0].impl

    def per_round(h: dict, impl: str) -> np.ndarray:
        return np.sqrt(np.asarray(h[(impl, 0)]) * np.asarray(h[(impl, 1)]))

    first = {impl: c for impl, k, c in live if k == 0}
    for impl in impls:
        per_half = [per_round(h, impl) / per_round(h, ref) for h in halves]
        medians = [float(np.median(r)) for r in per_half]
        pooled = np.concatenate(per_half)
        drift = np.concatenate(
            [np.asarray(h[(impl, 1)]) / np.asarray(h[(impl, 0)]) for h in halves]
        )
        sb.emit(
            dict(
                base,
                impl=impl,
                step_ms=round(
                    float(np.median(np.concatenate([per_round(h, impl) for h in halves]))), 4
                ),
                ratio_to_ref=round(float(np.sqrt(medians[0] * medians[1])), 3),
                halves=[round(m, 3) for m in medians],
                p10_p90=[round(float(q), 3) for q in np.percentile(pooled, [10, 90])],
                faster_rounds=f"{int((pooled < 1).sum())}/{len(pooled)}",
                recompiled=round(float(np.median(drift)), 3),
                compile_s=round(first[impl].compile_s, 2),
                steps_per_loop=iters[impl],
            )
        )
    for _, _, c in instances:
        c.compiled = c.lowered = None


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
