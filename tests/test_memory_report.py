"""``memory_report``: the state's bytes against independent counts.

Oracles: the sum of ``size·itemsize`` over ``jax.eval_shape(tx.init, params)``; XLA's own
count of the argument bytes of a jitted function of the state alone (compiled memory
analysis); hand counts for Adam with a bfloat16 first moment; ``explain``'s bytes per group;
the shards an eager ``tx.init`` on sharded params really allocates on each device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

import gradtx
from gradtx._precision.memory import MemoryReport, memory_report

PARAMS = {
    "dense": {"kernel": jnp.ones((16, 8)), "bias": jnp.ones(8)},
    "head": {"kernel": jnp.ones((8, 24)), "bias": jnp.ones(24)},
}
N = 16 * 8 + 8 + 8 * 24 + 24  # parameter elements: 352
FROZEN = [gradtx.group("frozen", r"bias", frozen=True)]

CASES = {
    "adamw_bf16": lambda: gradtx.adamw(1e-3, mu_dtype=jnp.bfloat16),
    "chain": lambda: gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(1e-3)),
    "groups": lambda: gradtx.groups(gradtx.adamw(1e-3), FROZEN),
    "multisteps_groups": lambda: gradtx.MultiSteps(gradtx.groups(gradtx.adamw(1e-3), FROZEN), 4),
    "ema_params": lambda: gradtx.ema_params(gradtx.adam(1e-3), 0.999),
    "skip_nonfinite": lambda: gradtx.skip_nonfinite(gradtx.sgd(1e-2, momentum=0.9)),
    "adafactor": lambda: gradtx.adafactor(1e-3),
    "optax_adamw": lambda: optax.adamw(1e-3),
    "optax_multi_transform": lambda: optax.multi_transform(
        {"a": optax.adam(1e-3), "b": optax.sgd(1e-2, momentum=0.9)}, {"dense": "a", "head": "b"}
    ),
}


def _oracle_bytes(tx, params) -> int:
    return sum(
        x.size * x.dtype.itemsize
        for x in jax.tree_util.tree_leaves(jax.eval_shape(tx.init, params))
    )


def _report(tx, params, **kw) -> MemoryReport:
    # optax's code is not written for the strict promotion the suite runs under
    with jax.numpy_dtype_promotion("standard"):
        return memory_report(tx, params, **kw)


@pytest.mark.parametrize("name", sorted(CASES))
def test_total_equals_eval_shape_and_xla_argument_bytes(name):
    tx = CASES[name]()
    with jax.numpy_dtype_promotion("standard"):
        expected = _oracle_bytes(tx, PARAMS)
        shapes = jax.eval_shape(tx.init, PARAMS)
    r = _report(tx, PARAMS)
    assert r.total_bytes == expected
    assert sum(r.by_slot.values()) == sum(r.by_group.values()) == sum(r.by_dtype.values())
    assert sum(r.by_dtype.values()) == expected
    assert len(r.entries) == len(jax.tree_util.tree_leaves(shapes))
    # XLA's own count of the buffers of a function taking the state alone.
    analysis = jax.jit(lambda s: s).lower(shapes).compile().memory_analysis()
    assert analysis.argument_size_in_bytes == r.total_bytes
    assert r.params_bytes == 4 * N and r.param_count == N
    assert r.bytes_per_param == r.total_bytes / N
    assert r.per_device is None and r.max_device_bytes is None


def test_slots_of_adamw_with_a_bfloat16_first_moment():
    r = memory_report(gradtx.adamw(1e-3, mu_dtype=jnp.bfloat16), PARAMS)
    assert r.by_slot == {"count": 4, "mu": 2 * N, "nu": 4 * N}
    assert r.by_slot["mu"] * 2 == r.by_slot["nu"]
    assert r.by_dtype == {"int32": 4, "bfloat16": 2 * N, "float32": 4 * N}
    assert r.by_group == {"all": 6 * N + 4}
    mu = {e.path: e for e in r.entries if e.slot == "mu"}
    assert mu[".knobs.mu['dense']['kernel']"] == (
        ".knobs.mu['dense']['kernel']", "mu", "all", "bfloat16", (16, 8), 2 * 16 * 8
    )  # fmt: skip


def test_optax_adamw_names_the_same_slots_as_gradtx():
    ours = memory_report(gradtx.adamw(1e-3), PARAMS)
    theirs = _report(optax.adamw(1e-3), PARAMS)
    assert theirs.by_slot == ours.by_slot == {"count": 4, "mu": 4 * N, "nu": 4 * N}
    assert {e.path for e in theirs.entries} >= {"[0].count", "[0].mu['head']['bias']"}


def test_frozen_group_holds_no_state_and_groups_agree_with_explain():
    tx = gradtx.groups(gradtx.adamw(1e-3), FROZEN)
    r = memory_report(tx, PARAMS)
    kernels = 16 * 8 + 8 * 24
    assert r.by_group == {"frozen": 0, "default": 2 * 4 * kernels + 4}
    assert r.by_group == {
        g: d["state_bytes"] for g, d in gradtx.explain(tx, PARAMS).by_group().items()
    }
    # Around the groups, MultiSteps' accumulator belongs to each leaf's group, its counters
    # to none.
    r = memory_report(gradtx.MultiSteps(tx, 4), PARAMS)
    assert r.by_group == {
        "frozen": 4 * (8 + 24),
        "default": 3 * 4 * kernels + 4,
        "(shared)": 8,
    }
    assert r.by_slot["acc_grads"] == 4 * N
    assert r.by_slot["mini_step"] == r.by_slot["gradient_step"] == 4


def test_wrapper_slots():
    r = memory_report(gradtx.skip_nonfinite(gradtx.ema_params(gradtx.adam(1e-3), 0.9)), PARAMS)
    assert r.by_slot["ema"] == r.by_slot["mu"] == r.by_slot["nu"] == 4 * N
    assert r.by_dtype["bool"] == 1  # skip_nonfinite's gave_up flag
    assert r.total_bytes == _oracle_bytes(
        gradtx.skip_nonfinite(gradtx.ema_params(gradtx.adam(1e-3), 0.9)), PARAMS
    )


def test_packed_shape_dtype_struct_and_none_leaves():
    tx = gradtx.adam(1e-3)
    plain = memory_report(tx, PARAMS)
    packed = memory_report(tx, gradtx.pack(PARAMS, threshold=None))
    assert packed.by_slot == plain.by_slot and packed.params_bytes == plain.params_bytes
    assert [e.path for e in packed.entries] == [
        ".knobs.count", ".knobs.mu.buffers[0]", ".knobs.nu.buffers[0]"
    ]  # fmt: skip
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), PARAMS)
    assert memory_report(tx, abstract) == plain
    bare = memory_report(tx, jnp.ones(5))  # a single array: the path is the slot's alone
    assert bare.by_slot == {"count": 4, "mu": 20, "nu": 20}
    hyper = _report(optax.inject_hyperparams(optax.adam)(1e-3), PARAMS)
    assert hyper.by_slot["hyperparams"] == 5 * 4 and hyper.by_slot["mu"] == 4 * N
    holes = {"dense": PARAMS["dense"], "head": {"kernel": PARAMS["head"]["kernel"], "bias": None}}
    r = memory_report(tx, holes)
    assert r.param_count == N - 24 and r.total_bytes == _oracle_bytes(tx, holes)


def test_nothing_is_allocated():
    # 64 GiB of float32 params: only shapes are ever made.
    big = {"w": jax.ShapeDtypeStruct((2**20, 2**14), jnp.float32)}
    r = memory_report(gradtx.adamw(1e-3, mu_dtype=jnp.bfloat16), big)
    assert r.params_bytes == 2**36
    assert r.by_slot == {"count": 4, "mu": 2**35, "nu": 2**36}
    assert "96 GiB" in str(r)


def _mesh() -> Mesh:
    assert jax.device_count() == 8, "the root conftest gives 8 CPU devices"
    return Mesh(np.array(jax.devices()), ("data",))


def _shard(params, mesh):
    return jax.tree_util.tree_map(
        lambda p: jax.device_put(p, NamedSharding(mesh, PartitionSpec("data"))), params
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.adamw(1e-3, mu_dtype=jnp.bfloat16),
        lambda: gradtx.MultiSteps(gradtx.groups(gradtx.adamw(1e-3), FROZEN), 2),
        lambda: gradtx.adafactor(1e-3),
    ],
    ids=["adamw_bf16", "multisteps_groups", "adafactor"],
)
def test_per_device_bytes_equal_the_shards_eager_init_allocates(make):
    mesh = _mesh()
    sharded = _shard(PARAMS, mesh)
    tx = make()
    r = memory_report(tx, sharded)
    assert r.total_bytes == _oracle_bytes(tx, PARAMS)
    allocated = _allocated(tx.init(sharded), mesh)  # the independent count: eager init
    assert r.per_device == allocated
    assert r.max_device_bytes == max(allocated.values())
    # On a mesh with explicit axes, jax.jit(tx.init) allocates the same shards.
    explicit = Mesh(mesh.devices, ("data",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(explicit):
        state = jax.jit(tx.init)(_shard(PARAMS, explicit))
    assert _allocated(state, explicit) == allocated


def _allocated(state, mesh) -> dict:
    out = dict.fromkeys(mesh.devices.flat, 0)
    for x in jax.tree_util.tree_leaves(state):
        for shard in x.addressable_shards:
            out[shard.device] += shard.data.nbytes
    return out


def test_per_device_is_total_over_8_plus_replicated_counters():
    mesh = _mesh()
    tx = gradtx.adamw(1e-3, mu_dtype=jnp.bfloat16)
    r = memory_report(tx, _shard(PARAMS, mesh))
    counters = 4  # Adam's step count, replicated
    assert r.per_device == dict.fromkeys(
        mesh.devices.flat, (r.total_bytes - counters) // 8 + counters
    )
    # ShapeDtypeStructs with the same shardings give the same report.
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _shard(PARAMS, mesh)
    )
    assert memory_report(tx, abstract) == r
    # mesh given and unsharded params: replicated, every device holds everything.
    full = memory_report(tx, PARAMS, mesh=mesh)
    assert full.per_device == dict.fromkeys(mesh.devices.flat, r.total_bytes)
    # A packed tree keeps the sharded leaves big: the same bytes per device.
    packed = memory_report(tx, gradtx.pack(_shard(PARAMS, mesh), threshold=None))
    assert packed.per_device == r.per_device
    # The same params on a mesh with explicit axes (shardings in the types).
    explicit = Mesh(mesh.devices, ("data",), axis_types=(AxisType.Explicit,))
    assert memory_report(tx, _shard(PARAMS, explicit)).per_device == r.per_device
    text = str(r)
    assert "device" in text and "at most 268 B on one of 8 devices" in r.describe()


def test_table_and_describe():
    r = memory_report(gradtx.groups(gradtx.adamw(1e-3, mu_dtype=jnp.bfloat16), FROZEN), PARAMS)
    text = r.table()
    assert text == str(r)
    lines = text.splitlines()
    assert lines[0].split() == ["slot", "int32", "bfloat16", "float32", "total"]
    assert lines[2].split() == ["count", "4", "B", "-", "-", "4", "B"]
    assert "frozen        0 B" in text
    one = r.describe()
    assert "\n" not in one and one.startswith(
        f"state {r.total_bytes / 1024:.3g} KiB for {N} params"
    )


def test_bad_input():
    with pytest.raises(TypeError, match=r"^gradtx\.memory_report: tx must be a transformation"):
        memory_report(gradtx.adam, PARAMS)
    with pytest.raises(TypeError, match=r"^gradtx\.memory_report: .*\['step'\] is dtype int32"):
        memory_report(gradtx.adam(1e-3), {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)})
    with pytest.raises(TypeError, match=r"^gradtx\.memory_report: .*\['w'\] is str"):
        memory_report(gradtx.adam(1e-3), {"w": "weights"})
    with pytest.raises(TypeError, match=r"^gradtx\.memory_report: mesh must be"):
        memory_report(gradtx.adam(1e-3), PARAMS, mesh=("data",))
    devices = np.array(jax.devices())
    a, b = Mesh(devices[:4], ("data",)), Mesh(devices[4:], ("data",))
    two = {"a": _shard(jnp.ones(8), a), "b": _shard(jnp.ones(8), b)}
    with pytest.raises(ValueError, match=r"^gradtx\.memory_report: the param at \['b'\]"):
        memory_report(gradtx.adam(1e-3), two)
    sharding = NamedSharding(_mesh(), PartitionSpec("data"))
    uneven = {"w": jax.ShapeDtypeStruct((10, 3), jnp.float32, sharding=sharding)}
    with pytest.raises(ValueError, match=r"^gradtx\.memory_report: tx\.init does not trace"):
        memory_report(gradtx.adam(1e-3), uneven)
    abstract = NamedSharding(_mesh().abstract_mesh, PartitionSpec("data"))
    with pytest.raises(ValueError, match=r"^gradtx\.memory_report: .* abstract mesh"):
        memory_report(
            gradtx.adam(1e-3), {"w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=abstract)}
        )
    # ... which mesh= resolves: 8 floats of each moment split over 8 devices, the count on each.
    on_abstract = {"w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=abstract)}
    r = memory_report(gradtx.adam(1e-3), on_abstract, mesh=_mesh())
    assert set(r.per_device.values()) == {4 + 2 * 4}


def test_complex_params():
    r = memory_report(gradtx.adam(1e-3), {"z": jnp.ones(4, jnp.complex64)})
    assert r.params_bytes == 32 and r.total_bytes == _oracle_bytes(
        gradtx.adam(1e-3), {"z": jnp.ones(4, jnp.complex64)}
    )
    assert r.by_slot == {"count": 4, "mu": 32, "nu": 32}  # ν is kept as complex64, as optax's
