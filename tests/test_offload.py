"""``gradtx.offload_state``: the state in host memory between steps, the same numbers.

On this CPU backend the devices have the memory kinds ``device``, ``pinned_host`` and
``unpinned_host`` (all the host's RAM), so offload runs here; the error for a backend without
``pinned_host`` is checked by giving the wrapper a backend that lacks it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import gradtx
from gradtx._precision import offload
from gradtx.testing import CHECKS, check_transformation


def _inner():
    return gradtx.adamw(gradtx.schedules.linear(1e-2, 1e-3, 10), weight_decay=0.1)


def _params(mesh=None, specs=None):
    params = {
        "w": jnp.linspace(-1.0, 1.0, 128, dtype=jnp.float32).reshape(16, 8),
        "b": jnp.linspace(0.5, 1.0, 8, dtype=jnp.float32),
    }
    if mesh is not None:
        params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
    return params


def _run(tx, params, state, n=3):
    @jax.jit
    def step(p, s):
        g = jax.tree.map(lambda x: jnp.sin(3.0 * x), p)
        updates, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, updates), s

    for _ in range(n):
        params, state = step(params, state)
    return params, state, step._cache_size()


def _kinds(state):
    return {
        jax.tree_util.keystr(k): x.sharding.memory_kind
        for k, x in jax.tree_util.tree_leaves_with_path(state)
    }


def test_cpu_has_memory_kinds():
    kinds = gradtx.memory_kinds()
    assert "pinned_host" in kinds and "device" in kinds, kinds


@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_state_lives_on_host_and_steps_match_the_plain_optimizer(kind):
    """``jax.jit(tx.init)`` on sharded params (eager init: the ZeRO-1 test below and the
    docstring example), three jitted steps against the plain optimizer."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(kind,))
    explicit = kind == AxisType.Explicit
    specs = {"w": P("x", None) if explicit else P("x"), "b": P(None) if explicit else P()}
    params = _params(mesh, specs)
    inner = _inner()
    tx = gradtx.offload_state(inner)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
        p_off, s_off, compiles = _run(tx, params, state)
        p_ref, s_ref, _ = _run(inner, params, inner.init(params))

    for where in (state, s_off):  # after init and after three jitted steps
        kinds = _kinds(where)
        assert kinds[".knobs.mu['w']"] == kinds[".knobs.nu['b']"] == "pinned_host", kinds
        assert kinds[".knobs.count"] == "device"  # scalars stay on the device
        # only the memory kind changes: the slot keeps its param's sharding
        assert where.knobs.mu["w"].sharding.spec == specs["w"]
    assert compiles == 1  # the state comes back where init put it
    assert jax.tree.structure(s_off) == jax.tree.structure(s_ref)
    # the same operations on the same values: equal bit for bit (tolerance 0)
    for a, b in zip(jax.tree.leaves((p_off, s_off)), jax.tree.leaves((p_ref, s_ref))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_offload_of_zero1_sharded_state():
    """``offload_state(shard_state(...))``: each device's shard of the state on the host."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    params = _params(mesh, {"w": P(None, None), "b": P(None)})
    inner = _inner()
    tx = gradtx.offload_state(gradtx.shard_state(inner, "data"))
    with jax.set_mesh(mesh):
        state = tx.init(params)
        p_off, s_off, compiles = _run(tx, params, state, n=2)
        p_ref, s_ref, _ = _run(inner, params, inner.init(params), n=2)
    mu = s_off.knobs.mu["w"]
    assert mu.sharding.memory_kind == "pinned_host" and mu.sharding.spec == P("data", None)
    assert compiles == 1
    for a, b in zip(jax.tree.leaves((p_off, s_off)), jax.tree.leaves((p_ref, s_ref))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_a_backend_without_host_memory_is_an_error(monkeypatch):
    monkeypatch.setattr(offload, "memory_kinds", lambda device=None: ("device",))
    tx = gradtx.offload_state(gradtx.adam(1e-3))
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.offload_state: the cpu backend") as e:
        tx.init(_params())
    assert "no 'pinned_host' memory" in str(e.value) and "['device']" in str(e.value)


def test_only_pinned_host_is_offered():
    with pytest.raises(ValueError, match=r"gradtx\.offload_state: memory_kind must be one of"):
        gradtx.offload_state(gradtx.adam(1e-3), memory_kind="unpinned_host")


def test_conformance_kit_but_for_the_memory_kind_of_sharding():
    """Every check of the kit (float32 params), strict (advisory misses fail too), except
    ``sharding``, whose rule compares the memory kind as part of the sharding: the slots are
    on ``pinned_host`` on purpose. Their placement over the devices is checked above."""
    tx = gradtx.offload_state(gradtx.sgd(0.1, momentum=0.9))
    checks = [c for c in CHECKS if c != "sharding"]
    report = check_transformation(tx, checks=checks, dtypes=(jnp.float32,), strict=True)
    assert report.misses == {}, str(report)
