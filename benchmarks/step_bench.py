"""Optimizer-step and training-step benchmark: gradtx (per-leaf and packed) vs optax vs torch.

Usage (from the repository root; gradtx need not be installed)::

    PYTHONPATH=. python benchmarks/step_bench.py OUT.jsonl [--small] [--no-torch]
        [--skip-train] [--budget SECONDS] [--sweep]

The method is that of the reference ``anchor_step.py`` (docs/benchmarks.md): a step is
``jax.jit(update + apply_updates)`` with params and optimizer state donated and gradients
fixed, timed as a loop of 20 steps, median of 5 loops, after a warm-up; the *floor* is one
fused pass over a single flat float32 buffer reading p, m, v, g and writing p, m, v (28 bytes
per parameter), measured in the same run, and every figure is also given as a ratio to it.

Each result is one JSON line (printed and appended to OUT.jsonl): section, tree/model, impl,
step_ms, ratio (to the floor), compile_s, mem_mb (XLA's compiled memory analysis: arguments
+ outputs - donated aliases + temporaries) and ops (instructions in the compiled entry
computation other than parameters, tuples and bitcasts: about the kernels a GPU launches).
With many cores, programs of one section are compiled in parallel threads before timing
(compile_s is then each program's own wall time under that contention).

``--budget`` (seconds, default 450) stops starting new rows once exceeded, emitting a
``skipped`` line for each; ``--sweep`` runs only the threshold sweep behind
``gradtx.DEFAULT_THRESHOLD``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gradtx  # noqa: E402

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
OUT = ARGS[0] if ARGS else "/dev/null"
SMALL = "--small" in sys.argv
NO_TORCH = "--no-torch" in sys.argv
SKIP_TRAIN = "--skip-train" in sys.argv
BUDGET = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 450.0
ONLY = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else []
T0 = time.perf_counter()
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
PARALLEL = (CPUS or 1) >= 8
TREES = (
    sys.argv[sys.argv.index("--trees") + 1].split(",")
    if "--trees" in sys.argv
    else ["single", "transformer", "tiny"]
)


def emit(d: dict) -> None:
    line = json.dumps(d)
    print(line, flush=True)
    with open(OUT, "a") as f:
        f.write(line + "\n")


def over_budget() -> bool:
    return time.perf_counter() - T0 > BUDGET


# --- schedules (gradtx's if present, else a local warm-up cosine of the same formula) -------
def gradtx_sched():
    s = getattr(gradtx.schedules, "warmup_cosine_decay", None)
    if s is not None:
        return s(0.0, 1e-3, 100, 10_000)

    def sched(count):  # pragma: no cover
        c = count.astype(jnp.float32)
        cos = 0.5 * 1e-3 * (1 + jnp.cos(jnp.pi * jnp.clip((c - 100) / 9900, 0, 1)))
        return jnp.where(c < 100, 1e-3 * c / 100, cos)

    return sched


def chains():
    osched = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000)
    return {
        "adamw": (optax.adamw(1e-3, weight_decay=0.1), gradtx.adamw(1e-3, weight_decay=0.1)),
        "clip+adamw+sched": (
            optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(osched, weight_decay=0.1)),
            gradtx.chain(
                gradtx.clip_by_global_norm(1.0), gradtx.adamw(gradtx_sched(), weight_decay=0.1)
            ),
        ),
    }


# --- measuring ---------------------------------------------------------------------------------
def bench_loop(step, carry, fixed, iters=20, reps=5):
    """Median over ``reps`` loops of ``iters`` steps (fewer steps when one takes > 25 ms)."""
    t = time.perf_counter()
    carry = step(*carry, *fixed)
    jax.block_until_ready(carry)
    est = max(time.perf_counter() - t, 1e-9)
    if est < 2.5e-3:  # sub-ms steps: loops of >= ~50 ms, so launch jitter averages out
        iters = int(min(max(iters, 0.05 / est), 1000))
    else:
        iters = max(3, min(iters, int(0.5 / est)))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(iters):
            carry = step(*carry, *fixed)
        jax.block_until_ready(carry)
        ts.append((time.perf_counter() - t) / iters)
    return float(np.median(ts)) * 1e3


_SKIP_OPS = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "copy-start"}


def entry_ops(text: str) -> int:
    m = re.search(r"\nENTRY [^\n]*\{\n(.*?)\n\}", text, re.S)
    if not m:
        return -1
    n = 0
    for line in m.group(1).splitlines():
        op = re.search(r"=\s*\S+\s+([a-z\-]+)\(", line)
        if op and op.group(1) not in _SKIP_OPS:
            n += 1
    return n


def mem_mb(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
        b = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
        )
        return round(b / 2**20, 2)
    except Exception:
        return None


class Case:
    """One jitted program to compile and time: ``step(*carry, *fixed) -> carry``."""

    def __init__(self, impl, fn, make_args, n_carry):
        self.impl, self.fn, self.make_args, self.n_carry = impl, fn, make_args, n_carry
        self.compiled = self.error = None
        self.compile_s = 0.0

    def lower(self):
        args = jax.eval_shape(self.make_args)
        jitted = jax.jit(self.fn, donate_argnums=tuple(range(self.n_carry)))
        t = time.perf_counter()
        self.lowered = jitted.lower(*args)
        self.trace_s = time.perf_counter() - t

    def compile(self):
        t = time.perf_counter()
        try:
            self.compiled = self.lowered.compile()
        except Exception as e:  # keep going
            self.error = repr(e)[:300]
        self.compile_s = self.trace_s + time.perf_counter() - t

    def run(self):
        args = self.make_args()
        ms = bench_loop(self.compiled, args[: self.n_carry], args[self.n_carry :])
        del args
        return ms


def run_cases(cases, base, floor_ms=None):
    """Lowers, compiles (in parallel threads with many cores) and times ``cases``."""
    todo = []
    if ONLY:
        cases = [c for c in cases if any(w in c.impl for w in ONLY + ["floor"])]
    for c in cases:
        if over_budget():
            emit(dict(base, impl=c.impl, skipped="budget"))
            continue
        try:
            c.lower()
            todo.append(c)
        except Exception as e:
            emit(dict(base, impl=c.impl, error=repr(e)[:300]))
    if PARALLEL and len(todo) > 1:
        with ThreadPoolExecutor(min(len(todo), 8)) as ex:
            list(ex.map(lambda c: c.compile(), todo))
    else:
        for c in todo:
            c.compile()
    out = {}
    for c in todo:
        if c.error:
            emit(dict(base, impl=c.impl, error=c.error))
            continue
        if over_budget():
            emit(dict(base, impl=c.impl, skipped="budget"))
            continue
        try:
            ms = c.run()
        except Exception as e:
            emit(dict(base, impl=c.impl, error=repr(e)[:300]))
            continue
        if "--dump" in sys.argv:
            m = re.search(r"\nENTRY [^\n]*\{\n(.*?)\n\}", c.compiled.as_text(), re.S)
            print(c.impl, "ENTRY:\n", m.group(1)[:3000] if m else "", flush=True)
        fl = floor_ms if floor_ms is not None else ms
        out[c.impl] = ms
        emit(
            dict(
                base,
                impl=c.impl,
                step_ms=round(ms, 4),
                ratio=round(ms / fl, 3),
                compile_s=round(c.compile_s, 2),
                mem_mb=mem_mb(c.compiled),
                ops=entry_ops(c.compiled.as_text()),
            )
        )
        c.compiled = c.lowered = None
    return out


# --- optimizer steps on the three trees ------------------------------------------------------
def shapes(tree):
    if tree == "transformer":
        L, d, V = (6, 512, 8192) if SMALL else (24, 1024, 32768)
        s = [(V, d), (d,), (d,)]
        blk = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,)]
        for _ in range(L):
            s += blk + [(4 * d, d), (d,)]
        return s
    if tree == "tiny":
        return [(1000,)] * 2000
    return [(16_000_000 if SMALL else 256_000_000,)]


def floor_case(n):
    def k(p, m, v, g):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        return p - 1e-3 * m / (jnp.sqrt(v) + 1e-8), m, v

    return Case(
        "floor(fused flat)", k, lambda: [jnp.full((n,), 0.5, jnp.float32) for _ in range(4)], 3
    )


def opt_case(impl, tx, shp, apply, layout=False):
    """layout: False (per leaf), "all" (every leaf packed) or a ``pack`` threshold."""

    def make():
        key = jax.random.PRNGKey(0)
        params = [jnp.zeros(s, jnp.float32) for s in shp]
        grads = [jax.random.normal(key, s, jnp.float32) for s in shp]
        if layout is not False:
            thr = None if layout == "all" else layout
            params = gradtx.pack(params, threshold=thr)
            grads = gradtx.pack(grads, threshold=thr)
        return [params, tx.init(params), grads]

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return apply(p, u), s

    return Case(impl, step, make, 2)


def torch_ms(shp, fused, clip):
    import torch  # noqa: PLC0415

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ps = [torch.zeros(s, device=dev, requires_grad=True) for s in shp]
    for p in ps:
        p.grad = torch.randn(p.shape, device=dev)
    opt = torch.optim.AdamW(
        ps, lr=1e-3, weight_decay=0.1, fused=fused, foreach=None if fused else True
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 100))

    def step():
        if clip:
            torch.nn.utils.clip_grad_norm_(ps, 1.0, foreach=True)
        opt.step()
        if clip:
            sched.step()

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    step()
    sync()
    iters = max(3, min(20, int(0.5 / max(time.perf_counter() - t, 1e-9))))
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        ts.append((time.perf_counter() - t) / iters)
    mem = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None
    return float(np.median(ts)) * 1e3, mem


def optimizer_section():
    import warnings  # noqa: PLC0415

    warnings.filterwarnings("ignore")
    for tree in TREES:
        if tree == "none":
            continue
        shp = shapes(tree)
        n = int(sum(np.prod(s) for s in shp))
        base = {"section": "optimizer", "tree": tree, "params": n, "leaves": len(shp)}
        fl = run_cases([floor_case(n)], base)["floor(fused flat)"]
        base["floor_ms"] = round(fl, 4)
        cases = []
        for chain_name, (otx, gtx) in chains().items():
            cases += [
                opt_case(f"gradtx packed {chain_name}", gtx, shp, gradtx.apply_updates, "all"),
                opt_case(f"gradtx per-leaf {chain_name}", gtx, shp, gradtx.apply_updates),
                opt_case(f"optax {chain_name}", otx, shp, optax.apply_updates),
            ]
        if tree == "transformer":
            gtx = chains()["clip+adamw+sched"][1]
            cases.append(
                opt_case(
                    "gradtx packed(default threshold) clip+adamw+sched",
                    gtx,
                    shp,
                    gradtx.apply_updates,
                    gradtx.DEFAULT_THRESHOLD,
                )
            )
        run_cases(cases, base, fl)
        if NO_TORCH:
            continue
        for fused in (False, True):
            for clip in (False, True):
                name = f"torch {'fused' if fused else 'foreach'} adamw" + (
                    " +clip+sched" if clip else ""
                )
                if over_budget():
                    emit(dict(base, impl=name, skipped="budget"))
                    continue
                try:
                    ms, mem = torch_ms(shp, fused, clip)
                    emit(
                        dict(
                            base,
                            impl=name,
                            step_ms=round(ms, 4),
                            ratio=round(ms / fl, 3),
                            mem_mb=mem,
                        )
                    )
                except Exception as e:
                    emit(dict(base, impl=name, error=repr(e)[:300]))


# --- whole training steps ------------------------------------------------------------------
def mlp_params(kind, key):
    if kind == "wide":
        blocks, d = (8, 256) if SMALL else (24, 1024)
        dims = [(d, 2 * d), (2 * d, d)] * blocks
    else:
        dims = [(32, 32)] * (100 if SMALL else 500)
    keys = jax.random.split(key, len(dims))
    return [
        {"w": jax.random.normal(k, s, jnp.float32) / np.sqrt(s[0]), "b": jnp.zeros(s[1])}
        for k, s in zip(keys, dims)
    ]


def mlp_apply(params, x):
    h = x
    for i in range(0, len(params), 2):
        a, b = params[i], params[i + 1]
        h = h + jnp.tanh(h @ a["w"] + a["b"]) @ b["w"] + b["b"]
    return h


def mlp_loss(params, x, y):
    return jnp.mean((mlp_apply(params, x) - y) ** 2)


def train_case(impl, tx, params_fn, loss, data_fn, apply, packed=None):
    """packed: None (per leaf) or the ``threshold`` given to ``gradtx.pack``."""

    def make():
        params = params_fn()
        if packed is not None:
            params = gradtx.pack(params, threshold=None if packed == "all" else packed)
        return [params, tx.init(params), *data_fn()]

    def step(p, s, *data):
        if packed is None:
            g = jax.grad(loss)(p, *data)
        else:
            g = jax.grad(lambda q: loss(gradtx.unpack(q), *data))(p)
        u, s = tx.update(g, s, p)
        return apply(p, u), s

    return Case(impl, step, make, 2)


def nnx_model():
    from flax import nnx  # noqa: PLC0415

    L, d, V, heads = (2, 128, 1024, 4) if SMALL else (8, 512, 8192, 8)

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.ln1 = nnx.LayerNorm(d, rngs=rngs)
            self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
            self.proj = nnx.Linear(d, d, rngs=rngs)
            self.ln2 = nnx.LayerNorm(d, rngs=rngs)
            self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
            self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)

        def __call__(self, x):
            b, t, _ = x.shape
            q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
            q, k, v = (z.reshape(b, t, heads, d // heads) for z in (q, k, v))
            a = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, d)
            x = x + self.proj(a)
            return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(V, d, rngs=rngs)
            blocks = [Block(rngs) for _ in range(L)]
            self.blocks = nnx.List(blocks) if hasattr(nnx, "List") else blocks
            self.ln = nnx.LayerNorm(d, rngs=rngs)

        def __call__(self, tok):
            x = self.embed(tok)
            for blk in self.blocks:
                x = blk(x)
            return self.embed.attend(self.ln(x))

    model = Model(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, tok):
        logits = nnx.merge(graphdef, p, rest)(tok[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tok[:, 1:]).mean()

    bt = (4, 65) if SMALL else (16, 257)

    def fresh():  # a copy: the step donates its params
        return jax.tree.map(jnp.copy, nnx.split(model, nnx.Param, ...)[1])

    return fresh, loss, bt, V


def train_section():
    _, (otx, gtx) = list(chains().items())[1]
    mlps = {
        "wide": ("wide MLP", 64 if SMALL else 128, 256 if SMALL else 1024),
        "deep": ("deep MLP", 128, 32),
    }
    for kind, (label, batch, d) in mlps.items():
        key = jax.random.PRNGKey(1)

        def pfn(kind=kind, key=key):
            return mlp_params(kind, key)

        def dfn(batch=batch, d=d):
            x = jax.random.normal(jax.random.PRNGKey(2), (batch, d))
            return [x, jnp.sin(x)]

        n = sum(x.size for x in jax.tree.leaves(pfn()))
        base = {
            "section": "train",
            "model": label,
            "params": int(n),
            "leaves": len(jax.tree.leaves(pfn())),
        }
        cases = [
            train_case("optax", otx, pfn, mlp_loss, dfn, optax.apply_updates),
            train_case("gradtx per-leaf", gtx, pfn, mlp_loss, dfn, gradtx.apply_updates),
            train_case(
                "gradtx packed",
                gtx,
                pfn,
                mlp_loss,
                dfn,
                gradtx.apply_updates,
                gradtx.DEFAULT_THRESHOLD,
            ),
            train_case("gradtx packed(all)", gtx, pfn, mlp_loss, dfn, gradtx.apply_updates, "all"),
        ]
        res = run_cases(cases, base)
        emit(
            dict(
                base,
                summary={k: round(res.get("optax", np.nan) / v, 3) for k, v in res.items()},
                note="summary: optax time / impl time (>1 = faster than optax)",
            )
        )
    try:
        pfn, loss, (b, t), V = nnx_model()
    except Exception as e:
        emit({"section": "train", "model": "nnx transformer", "error": repr(e)[:300]})
        return

    def dfn():
        return [jax.random.randint(jax.random.PRNGKey(3), (b, t), 0, V)]

    p0 = pfn()
    base = {
        "section": "train",
        "model": "nnx transformer",
        "params": int(sum(x.size for x in jax.tree.leaves(p0))),
        "leaves": len(jax.tree.leaves(p0)),
    }
    cases = [
        train_case("optax", otx, pfn, loss, dfn, optax.apply_updates),
        train_case("gradtx per-leaf", gtx, pfn, loss, dfn, gradtx.apply_updates),
        train_case(
            "gradtx packed", gtx, pfn, loss, dfn, gradtx.apply_updates, gradtx.DEFAULT_THRESHOLD
        ),
    ]
    res = run_cases(cases, base)
    emit(
        dict(
            base,
            summary={k: round(res.get("optax", np.nan) / v, 3) for k, v in res.items()},
            note="summary: optax time / impl time (>1 = faster than optax)",
        )
    )


def sweep():
    """Whole training step of a residual MLP stack at fixed size, leaf size varied."""
    _, (otx, gtx) = list(chains().items())[1]
    total = 1 << 18
    for w in (512, 256, 128, 64):
        layers = max(2, total // (w * w)) // 2 * 2
        dims = [(w, w)] * layers

        def pfn(dims=dims):
            keys = jax.random.split(jax.random.PRNGKey(0), len(dims))
            return [
                {"w": jax.random.normal(k, s) / np.sqrt(s[0]), "b": jnp.zeros(s[1])}
                for k, s in zip(keys, dims)
            ]

        def dfn(w=w):
            x = jax.random.normal(jax.random.PRNGKey(2), (64, w))
            return [x, jnp.sin(x)]

        base = {"section": "sweep", "leaf_size": w * w, "leaves": 2 * layers}
        res = run_cases(
            [
                train_case("gradtx per-leaf", gtx, pfn, mlp_loss, dfn, gradtx.apply_updates),
                train_case(
                    "gradtx packed(all)", gtx, pfn, mlp_loss, dfn, gradtx.apply_updates, "all"
                ),
            ],
            base,
        )
        emit(
            dict(base, packed_speedup=round(res["gradtx per-leaf"] / res["gradtx packed(all)"], 3))
        )


def main():
    emit(
        {
            "devices": str(jax.devices()),
            "jax": jax.__version__,
            "optax": optax.__version__,
            "gradtx": gradtx.__version__,
            "small": SMALL,
            "cpus": CPUS,
            "default_threshold": gradtx.DEFAULT_THRESHOLD,
        }
    )
    if "--sweep" in sys.argv:
        sweep()
        return
    optimizer_section()
    if not SKIP_TRAIN:
        train_section()
    emit({"done": True, "wall_s": round(time.perf_counter() - T0, 1)})


if __name__ == "__main__":
    main()
