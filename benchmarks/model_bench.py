"""Whole training steps on real models: gradtx packed vs gradtx per leaf vs optax.

Usage (from the repository root; gradtx need not be installed)::

    PYTHONPATH=. python benchmarks/model_bench.py [OUT.md] [--quick] [--rounds N]
        [--models transformer,resnet,pinn,deep,many] [--jsonl PATH] [--mirror-all]
        [--compile-only [--impls optax,...] [--many-experts N]] [--table-from JSONL]
        [--sweep [--total K] [--widths 362,256,...]] [--leaves-figure PNG]
        [--figure-from JSONL,JSONL]

A step is forward + backward + ``clip_by_global_norm(1)`` -> ``adamw`` (weight decay 0.1) with
a warm-up cosine schedule (0 -> 1e-3 over 100 steps, cosine to 10,000), params, optimizer
state and the model's other state (batch statistics) donated, the batch fixed; jitted once
per implementation:

- ``optax``: the optax chain on the params tree;
- ``gradtx per-leaf``: the gradtx chain on the same tree;
- ``gradtx packed``: ``gradtx.pack(params, tx=tx)`` (the default, measured threshold), the
  loss written on ``gradtx.unpack(packed)`` (the manual recipe of docs/packing.md);
- two probes that say where the time goes: ``sgd per-leaf`` (the same forward and backward,
  ``p - 1e-3 g`` per leaf: what a free optimizer would leave) and ``sgd packed`` (the same on
  the packed tree: its difference to ``sgd per-leaf`` is the cost of the views and of the
  gradient's concatenation).

Timing follows ``ab_bench.py`` (docs/benchmarks.md): programs compiled first (for
``transformer`` and ``resnet``, or all with ``--mirror-all``: a throwaway copy of the
reference, then each program twice in mirrored order, their geometric mean used; the others
once each, optax first, as when their packed programs compiled for a minute), then
interleaved rounds in which each program runs one loop of >= 50 ms, order rotated each round,
two halves with inputs allocated in opposite orders; each time is divided by optax's time in
the same round. ``many`` (5,000 leaves) is for compile time: on a 2-core CPU
its per-leaf programs take over 10 minutes, so measure it with ``--compile-only --impls X``,
one process (and ``timeout``) per program; ``--many-experts N`` changes its size.

Models: ``deep`` (200 residual tanh layers of width 32: 400 leaves), ``pinn`` (a Burgers
PINN: 24 tanh layers of width 32 with a trained scale per layer, second derivatives in the
loss: 74 leaves), ``resnet`` (flax nnx: 3 stages of 2 basic blocks, 16/32/64 channels,
BatchNorm with running statistics kept outside the optimizer as ``nnx.BatchStat``: 47
leaves), ``transformer`` (flax nnx: 8 pre-LN blocks of ``nnx.MultiHeadAttention``, d = 64,
4 heads: 131 leaves) and ``many`` (2,500 small experts
as separate leaves, 5,000 leaves, used through one stacked einsum).

Writes one JSON line per result (``--jsonl``, default ``/dev/null``) and, with OUT.md, a
markdown table. ``--sweep`` times per-leaf vs packed steps of MLP stacks at fixed size with the
leaf size varied (the measurement behind ``gradtx._packing.pack.THRESHOLDS["cpu"]``);
``--total K`` sets the stacks' size to 2^K kernel elements (default 18), ``--widths`` the
kernel widths; ``--leaves-figure PNG`` plots the sweep's step times against the number of
leaves, ``--figure-from`` redraws it from earlier runs; ``--table-from`` rewrites the table.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
_argv, sys.argv = sys.argv, sys.argv[:1]  # step_bench and ab_bench read sys.argv on import
import ab_bench  # noqa: E402
import step_bench as sb  # noqa: E402

import gradtx  # noqa: E402

sys.argv = _argv
del _argv
from model_zoo import MODELS, Model, mlp_stack  # noqa: E402


def _opt(name: str, default: Any) -> Any:
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


QUICK = "--quick" in sys.argv
ROUNDS = _opt("--rounds", 4 if QUICK else 16)
JSONL = _opt("--jsonl", "/dev/null")
SELECTED = _opt("--models", "transformer,resnet,pinn,deep,many").split(",")
IMPLS = [x for x in _opt("--impls", "").split(",") if x]
OUT = next((a for a in sys.argv[1:] if a.endswith(".md")), None)


def emit(d: dict) -> None:
    line = json.dumps(d)
    print(line, flush=True)
    with open(JSONL, "a") as f:
        f.write(line + "\n")


def chains() -> tuple[Any, Any]:
    osched = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000)
    gsched = gradtx.schedules.warmup_cosine_decay(0.0, 1e-3, 100, 10_000)
    otx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(osched, weight_decay=0.1))
    gtx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(gsched, weight_decay=0.1))
    return otx, gtx


def train_case(
    impl: str, model: Model, tx: Any, apply: Any, packed: bool, threshold: Any = "auto"
) -> sb.Case:
    """One program: ``step(params, opt_state, rest, *batch) -> (params, opt_state, rest)``;
    ``packed``: the params are ``gradtx.pack(params, tx=tx, threshold=threshold)``."""
    own = tx if isinstance(tx, gradtx.GradientTransformation) else None

    def make() -> list:
        p = jax.tree.map(jnp.copy, model.params)
        if packed:
            p = gradtx.pack(p, tx=own, threshold=threshold)
        return [p, tx.init(p), jax.tree.map(jnp.copy, model.rest), *model.batch]

    def step(p: Any, s: Any, rest: Any, *batch: Any) -> tuple:
        def loss_fn(q: Any) -> Any:
            return model.loss(gradtx.unpack(q) if packed else q, rest, *batch)

        (_, rest), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        with jax.numpy_dtype_promotion("standard"):
            u, s = tx.update(g, s, p)
        return apply(p, u), s, rest

    return sb.Case(impl, step, make, 3)


PROBES = ("sgd per-leaf", "sgd packed")
#: Models whose programs are compiled twice in mirrored order (``--mirror-all``: every model).
#: The others are compiled once, in the order optax, gradtx per-leaf, gradtx packed, probes
#: (the compile-order effect, if any, favours optax): their packed programs took a minute each
#: before the packed views shared kernels (docs/benchmarks.md), and the rows stay comparable.
MIRRORED = ("transformer", "resnet")


def cases_for(model: Model, probes: bool = True) -> list:
    otx, gtx = chains()
    out = [
        train_case("optax", model, otx, optax.apply_updates, False),
        train_case("gradtx per-leaf", model, gtx, gradtx.apply_updates, False),
        train_case("gradtx packed", model, gtx, gradtx.apply_updates, True),
    ]
    if probes:
        sgd = optax.sgd(1e-3)
        out += [
            train_case("sgd per-leaf", model, sgd, optax.apply_updates, False),
            train_case("sgd packed", model, sgd, gradtx.apply_updates, True),
        ]
    return out


def _copy(case: sb.Case) -> sb.Case:
    fn = case.fn
    return sb.Case(case.impl, lambda *a: fn(*a), case.make_args, case.n_carry)


def measure(cases: list, rounds: int, mirror: bool, once: tuple = ()) -> dict:
    """Compiles ``cases`` (the first is the reference) and times them in interleaved rounds
    (``ab_bench``'s method, see the module docstring); returns per impl its statistics.
    ``mirror``: compile a throwaway copy of the reference first and every program twice, in
    mirrored order (except the impls in ``once``, compiled once: the probes)."""
    if mirror:
        warm = _copy(cases[0])
        warm.lower()
        warm.compile()
        warm.compiled = warm.lowered = None
    instances = [(c.impl, 0, c) for c in cases]
    if mirror:
        instances += [(c.impl, 1, _copy(c)) for c in cases[::-1] if c.impl not in once]
    for impl, k, c in instances:
        c.lower()
        c.compile()
        if c.error:
            raise RuntimeError(f"{c.impl}: {c.error}")
        print(f"# compiled {impl} ({k}): {c.compile_s:.1f} s", file=sys.stderr, flush=True)
    halves: list[dict] = []
    iters: dict = {}
    for order in (instances, instances[::-1]):
        entries = []
        for impl, k, c in order:
            args = c.make_args()
            carry, fixed = tuple(args[: c.n_carry]), tuple(args[c.n_carry :])
            n, carry = ab_bench._loop_len(c.compiled, carry, fixed)
            iters.setdefault(impl, n)
            entries.append([(impl, k), c.compiled, carry, fixed, iters[impl]])
        times: dict = {}
        ab_bench._rounds(entries, max(1, rounds // 2), times)
        halves.append(times)
        del entries

    def per_round(h: dict, impl: str) -> np.ndarray:
        ks = [k for k in (0, 1) if (impl, k) in h]
        return np.exp(np.mean([np.log(h[(impl, k)]) for k in ks], axis=0))

    ref = cases[0].impl
    out = {}
    for c in cases:
        ratios = [per_round(h, c.impl) / per_round(h, ref) for h in halves]
        pooled = np.concatenate(ratios)
        out[c.impl] = {
            "step_ms": float(np.median(np.concatenate([per_round(h, c.impl) for h in halves]))),
            "ratio": float(np.sqrt(np.median(ratios[0]) * np.median(ratios[1]))),
            "p10_p90": [float(q) for q in np.percentile(pooled, [10, 90])],
            "faster": f"{int((pooled < 1).sum())}/{len(pooled)}",
            "compile_s": c.compile_s,
            "ops": sb.entry_ops(c.compiled.as_text()),
        }
    for _, _, c in instances:
        c.compiled = c.lowered = None
    return out


def compile_only(name: str) -> None:
    """``--compile-only``: lowers and compiles each selected program once, one JSON line each
    (for models whose per-leaf programs take minutes; run each in its own ``timeout``)."""
    model = _build(name)
    for c in cases_for(model):
        if IMPLS and c.impl not in IMPLS:
            continue
        c.lower()
        c.compile()
        n = len(jax.tree.leaves(model.params))
        emit({"model": name, "leaves": n, "impl": c.impl, "compile_s": round(c.compile_s, 2)})


def _build(name: str) -> Model:
    if name == "many" and "--many-experts" in sys.argv:
        return MODELS[name](QUICK, _opt("--many-experts", 0))  # type: ignore[call-arg]
    return MODELS[name](QUICK)


def run_model(name: str) -> dict:
    model = _build(name)
    leaves = jax.tree.leaves(model.params)
    otx, gtx = chains()
    rep = gradtx.pack_report(model.params, tx=gtx)
    base = {
        "model": name,
        "label": model.label,
        "leaves": len(leaves),
        "packed_leaves": rep.num_packed,
        "buffers": len(rep.buffers),
        "params": int(sum(x.size for x in leaves)),
        "passes_per_leaf": rep.passes_per_leaf,
        "passes_packed": rep.passes_packed,
    }
    many = name == "many"
    t = time.perf_counter()
    rounds = max(2, ROUNDS // 2) if many else ROUNDS
    mirror = not QUICK and (name in MIRRORED or "--mirror-all" in sys.argv)
    res = measure(cases_for(model, probes=not many), rounds, mirror, PROBES)
    base["mirrored"] = mirror
    base["wall_s"] = round(time.perf_counter() - t, 1)
    for impl, r in res.items():
        emit(dict(base, impl=impl, **{k: _round(v) for k, v in r.items()}))
    return dict(base, results=res)


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


def _rows_from(jsonl: str) -> list:
    """The rows of :func:`run_model` rebuilt from an earlier run's JSON lines."""
    rows: dict = {}
    with open(jsonl) as f:
        for line in f:
            d = json.loads(line)
            if "impl" not in d or "ratio" not in d:
                continue
            row = rows.setdefault(d["model"], {k: v for k, v in d.items() if k != "impl"})
            row.setdefault("results", {})[d["impl"]] = d
    return list(rows.values())


def table(rows: list) -> str:
    head = (
        "| model | leaves (packed) | params | optax ms | gradtx per-leaf | gradtx packed "
        "| speed-up packed | compile s: optax / per-leaf / packed | sgd per-leaf / sgd packed "
        "| fused passes per leaf → packed (est.) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )

    def cell(r: dict) -> str:
        lo, hi = r["p10_p90"]
        return f"{r['ratio']:.2f} ({lo:.2f}–{hi:.2f}; {r['faster']})"

    body = []
    for row in rows:
        r = row["results"]
        o, pl, pk = r["optax"], r["gradtx per-leaf"], r["gradtx packed"]
        probe = (
            f"{r['sgd per-leaf']['ratio']:.2f} / {r['sgd packed']['ratio']:.2f}"
            if "sgd packed" in r
            else "–"
        )
        body.append(
            f"| {row['label']} | {row['leaves']:,} ({row['packed_leaves']:,} in "
            f"{row['buffers']}) | {row['params']:,} | {o['step_ms']:.2f} | {cell(pl)} | "
            f"{cell(pk)} | **{1 / pk['ratio']:.2f}×** | {o['compile_s']:.1f} / "
            f"{pl['compile_s']:.1f} / {pk['compile_s']:.1f} | {probe} | "
            f"{row['passes_per_leaf']:,} → {row['passes_packed']:,} |"
        )
    return head + "\n".join(body) + "\n"


# --- the threshold sweep and the figure -----------------------------------------------------
def sweep() -> list:
    """MLP stacks of 2^18 kernel elements (2^14 in ``--quick``) and equal FLOPs, kernel size
    varied: optax, gradtx per leaf, gradtx with the biases packed (``threshold`` just below
    the kernel size) and with the kernels packed too (``threshold=None``). The speed-up of
    packing the kernels is ``biases only / all``."""
    total = 1 << _opt("--total", 14 if QUICK else 18)  # kernel elements (log2)
    widths = (64, 32) if QUICK else (362, 256, 181, 128, 90, 64, 32)
    if "--widths" in sys.argv:
        widths = tuple(int(w) for w in _opt("--widths", "").split(","))
    _, gtx = chains()
    otx, _ = chains()
    rows = []
    for w in widths:
        layers = max(2, round(total / (w * w)))
        model = mlp_stack(layers, w, 64)
        res = measure(
            [
                train_case("optax", model, otx, optax.apply_updates, False),
                train_case("gradtx per-leaf", model, gtx, gradtx.apply_updates, False),
                train_case("packed biases", model, gtx, gradtx.apply_updates, True, w * w - 1),
                train_case("packed all", model, gtx, gradtx.apply_updates, True, None),
            ],
            ROUNDS,
            True,
        )
        row = {
            "section": "sweep",
            "kernel": w * w,
            "layers": layers,
            "leaves": 2 * layers,
            **{f"{k} ms": round(r["step_ms"], 4) for k, r in res.items()},
            **{f"{k} ratio": round(r["ratio"], 4) for k, r in res.items()},
            "kernels_packed_speedup": round(
                res["packed biases"]["ratio"] / res["packed all"]["ratio"], 3
            ),
            "p10_p90": {k: [round(q, 3) for q in r["p10_p90"]] for k, r in res.items()},
        }
        emit(row)
        rows.append(row)
    return rows


def sweep_table(rows: list) -> str:
    out = (
        "| kernel size | layers (leaves) | optax ms | gradtx per-leaf | packed biases "
        "| packed all | packing the kernels |\n|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        out += (
            f"| {r['kernel']:,} | {r['layers']} ({r['leaves']}) | {r['optax ms']:.2f} | "
            f"{r['gradtx per-leaf ratio']:.2f} | {r['packed biases ratio']:.2f} | "
            f"{r['packed all ratio']:.2f} | {r['kernels_packed_speedup']:.2f}× |\n"
        )
    return out


def leaves_figure(rows: list, path: str) -> None:
    """Step time against the number of leaves (equal params and FLOPs), relative to optax's
    step in the same rounds (absolute times drift with the machine's load between rows)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = sorted(rows, key=lambda r: r["leaves"])
    n = [r["leaves"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.axhline(1.0, color="0.5", lw=1, ls="--", label="optax (per leaf)")
    for key, label, style in (
        ("gradtx per-leaf", "gradtx per leaf", "o-"),
        ("packed biases", "gradtx packed, kernels as they are", "v-"),
        ("packed all", "gradtx packed, every leaf", "^-"),
    ):
        ax.plot(n, [r[f"{key} ratio"] for r in rows], style, label=label)
    for x, r in zip(n, rows):
        ax.annotate(
            f"{r['kernel']:,}",
            (x, r["packed all ratio"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(0, -11),
            ha="center",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("leaves (2^18 kernel elements, equal FLOPs; kernel size written below)")
    ax.set_ylabel("whole training step / optax's (same rounds)")
    ax.set_title(
        f"Step time vs number of leaves, {jax.default_backend().upper()} "
        f"({len(os.sched_getaffinity(0))} cores), jax {jax.__version__}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    emit({"figure": path})


def _figure_from(paths: str, out: str) -> None:
    """Redraws the figure from the sweep rows of earlier runs' JSON lines (comma-separated
    paths); a kernel size measured in several runs is drawn at the geometric mean of its
    ratios."""
    by_kernel: dict = {}
    for path in paths.split(","):
        with open(path) as f:
            for line in f:
                if '"section": "sweep"' in line:
                    row = json.loads(line)
                    by_kernel.setdefault(row["kernel"], []).append(row)
    rows = []
    for runs in by_kernel.values():
        row = dict(runs[0])
        for key in [k for k in row if k.endswith(" ratio")]:
            row[key] = float(np.exp(np.mean([np.log(r[key]) for r in runs])))
        rows.append(row)
    leaves_figure(rows, out)


def main() -> None:
    meta = {
        "script": "model_bench",
        "devices": str(jax.devices()),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "quick": QUICK,
        "rounds": ROUNDS,
        "threshold": gradtx._packing.pack.auto_threshold(),
    }
    emit(meta)
    t0 = time.perf_counter()
    if "--figure-from" in sys.argv:
        _figure_from(
            _opt("--figure-from", ""), _opt("--leaves-figure", "docs/img/packing_leaves_cpu.png")
        )
        return
    if "--sweep" in sys.argv or "--leaves-figure" in sys.argv:
        rows = sweep()
        if OUT:
            with open(OUT, "w") as f:
                f.write(f"<!-- {json.dumps(meta)} -->\n" + sweep_table(rows))
        if "--leaves-figure" in sys.argv:
            leaves_figure(rows, _opt("--leaves-figure", "docs/img/packing_leaves_cpu.png"))
        return
    if "--compile-only" in sys.argv:
        for name in SELECTED:
            compile_only(name)
        return
    if "--table-from" in sys.argv:
        rows = _rows_from(_opt("--table-from", ""))
    else:
        rows = [run_model(name) for name in SELECTED]
    text = table(rows)
    print(text)
    if OUT:
        with open(OUT, "w") as f:
            f.write(f"<!-- {json.dumps(meta)} wall {time.perf_counter() - t0:.0f} s -->\n" + text)
    emit({"done": True, "wall_s": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
