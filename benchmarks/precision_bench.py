"""State bytes per parameter and step time of AdamW by state precision: float32, bfloat16 mu,
bfloat16 mu and nu, 8-bit block-quantised state; against optax (``mu_dtype``) and, on CUDA,
torch's fused AdamW with bfloat16 params and state.

Usage (from the repository root; gradtx need not be installed)::

    PYTHONPATH=. python benchmarks/precision_bench.py [--full] [--rounds N] [--steps K]
        [--out FILE.md] [--no-torch] [--skip SUBSTRING,...]

The tree is transformer-like: an embedding ``[V, d]`` and ``L`` blocks of two layer norms
(scale, bias), qkv ``[d, 3d]``, attention out ``[d, d]``, MLP ``[d, 4d]`` and ``[4d, d]`` with
biases. Default (CPU): ``L = 12, d = 256, V = 8192`` (11.6M params); ``--full`` (for a GPU):
``L = 24, d = 1024, V = 32768`` (336M params).

A step is ``jax.jit(update + apply_updates)`` with params and state donated and gradients
fixed (as ``step_bench.py``). The programs are compiled first; then ``--rounds`` rounds
(default 7) each time every row for ``--steps`` steps (default 3) in turn, so drifting load
on a shared machine hits every row alike. ``ms/step`` is the median over rounds; ``× f32``
is the median over rounds of the row's time over gradtx float32's time in the same round.
``state B/param`` is :func:`gradtx.memory_report` (``jax.eval_shape`` of ``init``: exactly
the state arrays' bytes, step counters included) over the parameter count; for torch, the
bytes of ``optimizer.state`` tensors. Prints a markdown table (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gradtx  # noqa: E402

BF16 = jnp.bfloat16


def shapes(layers: int, d: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """The transformer-like tree's leaf shapes, by name."""
    out: dict[str, tuple[int, ...]] = {"embed": (vocab, d), "final_norm": (d,)}
    block = {
        "ln1_scale": (d,),
        "ln1_bias": (d,),
        "qkv": (d, 3 * d),
        "qkv_bias": (3 * d,),
        "attn_out": (d, d),
        "attn_out_bias": (d,),
        "ln2_scale": (d,),
        "ln2_bias": (d,),
        "mlp_up": (d, 4 * d),
        "mlp_up_bias": (4 * d,),
        "mlp_down": (4 * d, d),
        "mlp_down_bias": (d,),
    }
    for i in range(layers):
        out.update({f"layer{i:02d}/{k}": s for k, s in block.items()})
    return out


def rows() -> dict[str, Any]:
    """Row name -> transformation (gradtx's and optax's AdamW, lr 1e-3, weight decay 0.1)."""

    def adamw() -> Any:
        return gradtx.adamw(1e-3, weight_decay=0.1)

    q8 = {"mu": gradtx.int8_blocks(256), "nu": gradtx.int8_blocks(256, signed=False)}
    return {
        "gradtx f32": adamw(),
        "gradtx bf16 mu": gradtx.with_state_dtypes(adamw(), {"mu": BF16}),
        "gradtx bf16 mu+nu": gradtx.with_state_dtypes(adamw(), {"mu": BF16, "nu": BF16}),
        "gradtx bf16 mu+nu, stochastic": gradtx.with_state_dtypes(
            adamw(), {"mu": BF16, "nu": BF16}, rounding="stochastic"
        ),
        "gradtx 8-bit": gradtx.with_state_dtypes(adamw(), q8),
        "gradtx 8-bit, stochastic": gradtx.with_state_dtypes(adamw(), q8, rounding="stochastic"),
        "optax f32": optax.adamw(1e-3, weight_decay=0.1),
        "optax mu_dtype=bf16": optax.adamw(1e-3, weight_decay=0.1, mu_dtype=BF16),
    }


def compile_step(tx: Any, shp: dict) -> tuple[Callable, list, float]:
    """The jitted, compiled step and its arguments (params, state, grads); compile seconds."""
    params = {k: jnp.zeros(s, jnp.float32) for k, s in shp.items()}
    keys = jax.random.split(jax.random.key(0), len(shp))
    grads = {k: jax.random.normal(key, s, jnp.float32) for key, (k, s) in zip(keys, shp.items())}
    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(params)

        def step(p: Any, s: Any, g: Any) -> tuple:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        t = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    return compiled, [params, state, grads], time.perf_counter() - t


def torch_row(shp: dict, bf16: bool) -> tuple[Callable, float] | None:
    """torch.optim.AdamW(fused=True) on CUDA, float32 or bfloat16 params (the state is in the
    params' dtype); ``None`` without torch or CUDA."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dt = torch.bfloat16 if bf16 else torch.float32
    ps = [torch.zeros(s, device="cuda", dtype=dt, requires_grad=True) for s in shp.values()]
    for p in ps:
        p.grad = torch.randn(p.shape, device="cuda", dtype=dt)
    opt = torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.1, fused=True)
    opt.step()  # creates the state
    torch.cuda.synchronize()
    state_bytes = sum(
        t.numel() * t.element_size()
        for st in opt.state.values()
        for t in st.values()
        if torch.is_tensor(t)
    )

    def run(k: int) -> None:
        for _ in range(k):
            opt.step()
        torch.cuda.synchronize()

    return run, state_bytes / sum(p.numel() for p in ps)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="L=24, d=1024, V=32768 (for a GPU)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3, help="steps per row per round")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated substrings of rows to leave out")
    cfg = ap.parse_args(argv)
    layers, d, vocab = (24, 1024, 32768) if cfg.full else (12, 256, 8192)
    shp = shapes(layers, d, vocab)
    n_params = sum(int(np.prod(s)) for s in shp.values())
    abstract = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shp.items()}

    skip = [w for w in cfg.skip.split(",") if w]
    txs = {k: v for k, v in rows().items() if k == "gradtx f32" or not any(w in k for w in skip)}
    steps: dict[str, Callable[[int], None]] = {}
    info: dict[str, dict[str, float]] = {}
    for name, tx in txs.items():
        with jax.numpy_dtype_promotion("standard"):
            bpp = gradtx.memory_report(tx, abstract).bytes_per_param
        compiled, args, compile_s = compile_step(tx, shp)
        box = {"args": args}

        def run(k: int, compiled: Any = compiled, box: dict = box) -> None:
            p, s, g = box["args"]
            for _ in range(k):
                p, s = compiled(p, s, g)
            jax.block_until_ready((p, s))
            box["args"] = [p, s, g]

        run(1)  # warm-up
        steps[name] = run
        info[name] = {"bpp": bpp, "compile_s": compile_s}
        print(f"compiled {name} in {compile_s:.1f} s", file=sys.stderr, flush=True)
    for bf16 in () if cfg.no_torch else (False, True):
        got = torch_row(shp, bf16)
        if got is not None:
            name = "torch fused AdamW, " + ("bf16 params+state" if bf16 else "f32")
            steps[name], bpp_t = got
            steps[name](1)
            info[name] = {"bpp": bpp_t, "compile_s": 0.0}

    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(cfg.rounds):
        for name, run in steps.items():
            t = time.perf_counter()
            run(cfg.steps)
            times[name].append((time.perf_counter() - t) / cfg.steps * 1e3)
    base = np.asarray(times["gradtx f32"])
    device = jax.devices()[0]
    head = (
        f"AdamW state precision, transformer-like tree L={layers} d={d} V={vocab} "
        f"({n_params:,} params), {device.platform} ({device.device_kind}), jax {jax.__version__}, "
        f"{platform.node() or 'host'}; {cfg.rounds} interleaved rounds of {cfg.steps} steps"
    )
    lines = [
        head,
        "",
        "| row | state B/param | ms/step (median) | × gradtx f32 | compile s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in steps:
        ms = np.asarray(times[name])
        lines.append(
            f"| {name} | {info[name]['bpp']:.3f} | {np.median(ms):.2f} | "
            f"{np.median(ms / base):.2f} | {info[name]['compile_s']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if cfg.out:
        with open(cfg.out, "w") as f:
            f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
