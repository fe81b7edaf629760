"""ZeRO-1 on the 8-device CPU mesh: per-device state bytes and step time, replicated vs sharded.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/zero1_bench.py [--size small|medium] [--rounds N] [--auto]

The tree is transformer-like (an embedding, then per block two layer norms, a fused QKV
projection, an output projection and a 4x MLP, with their biases). The params are replicated on
a mesh of 8 CPU devices (``--xla_force_host_platform_device_count=8``, set before JAX starts),
the gradients are fixed and replicated (as after a data-parallel all-reduce), and a step is
``jax.jit(update + apply_updates)`` with params and state donated. Rows:

- ``replicated``: ``gradtx.adamw``; every device holds the whole state.
- ``ZeRO-1``: ``gradtx.shard_state(adamw, "data")``; each device holds 1/8 of every slot whose
  leaf has a dimension 8 divides (the others, and the count, stay replicated).
- ``ZeRO-1 packed``: the same on ``gradtx.pack(params)``: the small leaves (layer norms,
  biases, the 3-element gates) in one buffer, padded to a multiple of 8 and sharded.

State bytes per device are read from the state's ``addressable_shards`` (the most any device
holds) and agree with ``gradtx.memory_report``. Step times are interleaved: every program is
compiled first, then each round runs one loop of every program (at least ~50 ms) in an order
rotated from round to round, and each program's time is divided by the replicated program's in
the same round, so machine-wide slowdowns cancel in the ratio. Reported: the median step time,
the median of the per-round ratios and their 10th-90th percentile, all from one run.

On a CPU the 8 "devices" share the host's cores and memory, and the all-gather of the updates
is a memory copy: the memory column is what ZeRO-1 saves per device on any backend, the time
column is only this host's cost of the extra collectives.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gradtx  # noqa: E402

SIZES = {"small": (2, 256, 4096), "medium": (6, 512, 8192)}  # blocks, width, vocabulary


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def transformer_shapes(blocks: int, d: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"embed": (vocab, d), "ln_f": (d,)}
    for i in range(blocks):
        for name, shape in {
            "ln1": (d,),
            "ln2": (d,),
            "qkv": (d, 3 * d),
            "qkv_b": (3 * d,),
            "out": (d, d),
            "out_b": (d,),
            "up": (d, 4 * d),
            "up_b": (4 * d,),
            "down": (4 * d, d),
            "down_b": (d,),
            "gate": (3,),  # no dimension 8 divides: replicated, or padded when packed
        }.items():
            shapes[f"b{i}.{name}"] = shape
    return shapes


def _device_bytes(state) -> int:
    per: dict = {}
    for x in jax.tree.leaves(state):
        for s in x.addressable_shards:
            per[s.device] = per.get(s.device, 0) + s.data.nbytes
    return max(per.values())


def _program(tx, params, grads):
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, u), s

    state = tx.init(params)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    nbytes = _device_bytes(state)
    report = gradtx.memory_report(tx, params)
    assert report.max_device_bytes == nbytes, (report.max_device_bytes, nbytes)
    carry = (jax.tree.map(jnp.copy, params), state)
    return compiled, carry, nbytes


def _loop_len(compiled, carry, grads) -> tuple[int, tuple]:
    carry = compiled(*carry, grads)  # warm-up
    jax.block_until_ready(carry)
    t = time.perf_counter()
    carry = compiled(*carry, grads)
    jax.block_until_ready(carry)
    return int(min(max(3, 0.05 / max(time.perf_counter() - t, 1e-9)), 500)), carry


def main() -> None:
    blocks, d, vocab = SIZES[_arg("--size", "small")]
    rounds = int(_arg("--rounds", "20"))
    kind = AxisType.Auto if "--auto" in sys.argv else AxisType.Explicit
    mesh = jax.make_mesh((8,), ("data",), axis_types=(kind,))
    rng = np.random.default_rng(0)

    def put(x):
        return jax.device_put(x, NamedSharding(mesh, P(*([None] * x.ndim))))

    shapes = transformer_shapes(blocks, d, vocab)
    params = {k: put(rng.standard_normal(s).astype(np.float32) * 0.02) for k, s in shapes.items()}
    grads = {k: put(rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    adamw = gradtx.adamw(1e-3, weight_decay=0.1)
    zero = gradtx.shard_state(adamw, "data")
    packed_p = jax.device_put(gradtx.pack(params), NamedSharding(mesh, P(None)))
    packed_g = jax.device_put(gradtx.pack(grads), NamedSharding(mesh, P(None)))
    scope = jax.set_mesh(mesh) if kind is AxisType.Explicit else contextlib.nullcontext()
    with scope:
        rows = {
            "replicated": (adamw, params, grads),
            "ZeRO-1": (zero, params, grads),
            "ZeRO-1 packed": (zero, packed_p, packed_g),
        }
        progs = []
        for name, (tx, p, g) in rows.items():
            compiled, carry, nbytes = _program(tx, p, g)
            iters, carry = _loop_len(compiled, carry, g)
            progs.append([name, compiled, carry, g, iters, nbytes])
        times: dict[str, list[float]] = {name: [] for name in rows}
        for r in range(rounds):
            k = r % len(progs)
            for prog in progs[k:] + progs[:k]:
                name, compiled, carry, g, iters, _ = prog
                t = time.perf_counter()
                for _ in range(iters):
                    carry = compiled(*carry, g)
                jax.block_until_ready(carry)
                times[name].append((time.perf_counter() - t) / iters * 1e3)
                prog[2] = carry
        if "--plan" in sys.argv:
            print(zero.plan(packed_p), end="\n\n")
    base = np.asarray(times["replicated"])
    full = progs[0][5]
    print(
        f"adamw on a transformer-like tree: {n_params:,} params, {len(shapes)} leaves, "
        f"{len(jax.devices())} CPU devices ({kind}), {rounds} interleaved rounds\n"
    )
    print(
        "| state | bytes per device | vs replicated | step ms (median) | vs replicated | p10-p90 |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for name, *_, nbytes in progs:
        ratio = np.asarray(times[name]) / base
        lo, hi = np.percentile(ratio, [10, 90])
        print(
            f"| {name} | {nbytes / 2**20:.2f} MiB | {nbytes / full:.3f} | "
            f"{np.median(times[name]):.2f} | {np.median(ratio):.2f}x | {lo:.2f}-{hi:.2f} |"
        )


if __name__ == "__main__":
    main()
