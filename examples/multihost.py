"""Multi-host training with gradtx: one process per host, the same program on every one.

The recipe (JAX's multi-controller model; nothing in it is gradtx-specific except the
optimizer, whose state follows the params' sharding across hosts as it does on one):

1. **Start JAX's distributed runtime first**, before any other JAX call, in every process:
   ``jax.distributed.initialize(coordinator_address, num_processes, process_id)``. On Cloud
   TPU, SLURM or Open MPI the three arguments are found from the environment
   (``jax.distributed.initialize()``); here they are flags. On CPU the collectives between
   processes go through gloo (``jax_cpu_collectives_implementation="gloo"``, JAX's default).
2. **One global mesh** over ``jax.devices()`` -- every process's devices, not only its own
   (``jax.local_devices()``). Here ``("data", "model")``: the batch is split over ``data``
   (across hosts), the weight matrix over ``model`` (within a host).
3. **The same code everywhere.** Params and the optimizer state are made by jitted functions
   whose outputs are global arrays (``jax.jit(tx.init)`` places every slot as the step returns
   it: ``mu['w']`` sharded over ``model`` like ``w``); each process holds the shards on its own
   devices.
4. **Each process loads only its slice of the batch** and assembles the global batch with
   ``jax.make_array_from_process_local_data(sharding, local_rows, global_shape)``.
5. **Checkpoints with orbax**: every process calls ``save`` (each writes its shards) into one
   directory all hosts can reach, and ``restore`` with the target's ``ShapeDtypeStruct``\\ s
   (shape, dtype, sharding), so each process reads back only its shards.
6. Read results with ``jax.experimental.multihost_utils.process_allgather`` (a global array
   is not fully addressable from one process).

Run on two hosts (or two processes of one machine, 4 CPU devices each)::

    python examples/multihost.py --num-processes 2 --process-id 0 \
        --coordinator localhost:12355 --local-devices 4 --out /tmp/mh &
    python examples/multihost.py --num-processes 2 --process-id 1 \
        --coordinator localhost:12355 --local-devices 4 --out /tmp/mh

and on one process with all 8 devices (the reference the test compares with)::

    python examples/multihost.py --local-devices 8 --out /tmp/sh

Process 0 writes ``result.json`` (the losses, the final params, the checkpoint check) to
``--out``; :func:`train` returns the same dict and is what ``tests/test_multihost.py`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STEPS, SAVE_AT = 6, 3  # adamw steps; checkpoint after this many, then restore and go on
GLOBAL_BATCH, FEATURES, OUTPUTS = 16, 8, 8
MESH_SHAPE = (2, 4)  # ("data", "model"): data over the hosts, model within a host


def _start(args: argparse.Namespace) -> None:
    """Step 1: configure JAX and start the distributed runtime, before anything else."""
    import jax

    if args.cpu:
        jax.config.update("jax_platforms", "cpu")
    if args.local_devices:
        jax.config.update("jax_num_cpu_devices", args.local_devices)
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=args.timeout,
        )


def _data(seed: int = 0) -> tuple[Any, Any]:
    """The global batch (the same on every process, from the seed); each takes its rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((GLOBAL_BATCH, FEATURES)).astype(np.float32)
    w_true = rng.standard_normal((FEATURES, OUTPUTS)).astype(np.float32)
    return x, x @ w_true


def train(out: str | Path | None = None) -> dict[str, Any]:
    """Steps 2-6 on whatever processes and devices JAX was started with."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import gradtx

    # 2. one global mesh over every process's devices
    mesh = jax.make_mesh(MESH_SHAPE, ("data", "model"))
    rows = NamedSharding(mesh, P("data", None))  # the batch: rows over the hosts

    # 4. this process's slice of the batch -> one global array
    x, y = _data()
    per_process = GLOBAL_BATCH // jax.process_count()
    mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    batch = tuple(jax.make_array_from_process_local_data(rows, a[mine], a.shape) for a in (x, y))

    tx = gradtx.adamw(5e-2, weight_decay=1e-2)
    specs = {"w": P(None, "model"), "b": P("model")}

    def init_params() -> dict[str, jax.Array]:
        w = jnp.zeros((FEATURES, OUTPUTS), jnp.float32)
        return {"w": w, "b": jnp.zeros((OUTPUTS,), jnp.float32)}

    def loss_fn(params: Any, batch: Any) -> jax.Array:
        xb, yb = batch
        return jnp.mean((xb @ params["w"] + params["b"][None, :] - yb) ** 2)

    @jax.jit
    def step(params: Any, state: Any, batch: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)  # XLA adds the all-reduce
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state, loss

    with jax.set_mesh(mesh):
        # 3. the same code on every process: global params and state from jitted functions
        shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
        params = jax.jit(init_params, out_shardings=shardings)()
        state = jax.jit(tx.init)(params)
        losses = []
        for _ in range(SAVE_AT):
            params, state, loss = step(params, state, batch)
            losses.append(float(loss))

        # 5. orbax: every process writes its shards; restore reads them back, placed
        ckpt_dir = Path(out or ".").resolve() / "checkpoint"
        target = {"params": params, "opt_state": state}
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(ckpt_dir, target, force=True)
            ckptr.wait_until_finished()
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target
        )
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore(ckpt_dir, abstract)
        same = all(
            a.sharding == b.sharding and bool(jnp.array_equal(a, b))
            for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(target))
        )
        params, state = restored["params"], restored["opt_state"]
        for _ in range(STEPS - SAVE_AT):
            params, state, loss = step(params, state, batch)
            losses.append(float(loss))

        # 6. global values, gathered on every process
        final = multihost_utils.process_allgather(params, tiled=True)
        mu_w = state.knobs.mu["w"]
        result = {
            "processes": jax.process_count(),
            "devices": jax.device_count(),
            "losses": losses,
            "params": {k: np.asarray(v).tolist() for k, v in final.items()},
            "restored_equal": same,
            "mu_w_spec": str(mu_w.sharding.spec),
            "mu_w_local_shards": len(mu_w.addressable_shards),
            "step_compiles": step._cache_size(),
        }
    if out is not None and jax.process_index() == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "result.json").write_text(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--coordinator", default="localhost:12355", help="host:port of process 0")
    parser.add_argument("--local-devices", type=int, default=0, help="CPU devices per process")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU backend")
    parser.add_argument("--timeout", type=int, default=60, help="seconds to wait for the others")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    _start(args)
    result = train(args.out)
    if args.num_processes > 1:
        import jax

        jax.distributed.shutdown()
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]))[:200])
