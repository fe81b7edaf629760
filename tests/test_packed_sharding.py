"""flax's sharding recipe with gradtx.PackedOptimizer, exactly as with nnx.Optimizer (issue #14).

A model on a 2x4 ``("data", "model")`` mesh of the 8 CPU devices (``conftest.py``): a kernel
and a bias sharded by their ``nnx.with_partitioning`` annotations (kept as they are, also
when the optimizer is built inside ``nnx.jit``, where ``gradtx.pack`` sees no placements), a
bias annotated replicated and a LayerNorm without annotations (packed), and a kernel kept
unsharded by a small ``threshold``. Checked: ``nnx.get_partition_spec`` of the optimizer's
state (a kept slot has its param's spec and ``out_sharding``, as ``nnx.Optimizer``'s slot of
that param; a buffer is replicated), the recipe ``with_sharding_constraint(state, pspecs)``
under ``nnx.jit`` on Explicit and Auto meshes, the actual shardings after a jitted step, the
step's values against ``nnx.Optimizer`` on the same sharded model (oracle, ``rtol=RTOL,
atol=ATOL``: the same elementwise Adam in another fusion), and an orbax round trip onto a
target built by ``nnx.get_named_sharding``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import gradtx

nnx = pytest.importorskip("flax.nnx")

RTOL, ATOL = 1e-6, 1e-7
THRESHOLD = 32  # l2's 64-element kernel is kept as it is (unsharded)
KEPT = {  # the leaves kept as they are, and their specs
    "['l1']['kernel']": P("data", "model"),
    "['l1']['bias']": P("model"),
    "['l2']['kernel']": P(),
}
X = jax.random.normal(jax.random.key(1), (2, 8, 8))
Y = jax.random.normal(jax.random.key(2), (2, 8, 4))


class Model(nnx.Module):
    def __init__(self, rngs):
        part = nnx.with_partitioning
        self.l1 = nnx.Linear(
            8,
            16,
            rngs=rngs,
            kernel_init=part(nnx.initializers.lecun_normal(), ("data", "model")),
            bias_init=part(nnx.initializers.normal(0.1), ("model",)),
        )
        self.norm = nnx.LayerNorm(16, rngs=rngs)  # no annotations
        self.l2 = nnx.Linear(16, 4, rngs=rngs, bias_init=part(nnx.initializers.zeros, (None,)))

    def __call__(self, x):
        return self.l2(jnp.tanh(self.norm(self.l1(x))))


def _tx():
    return gradtx.adam(3e-2)


def _mesh(kind):
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(kind, kind))


def _make(packed):
    model = Model(nnx.Rngs(0))
    if packed:
        return model, gradtx.PackedOptimizer(model, _tx(), wrt=nnx.Param, threshold=THRESHOLD)
    return model, nnx.Optimizer(model, _tx(), wrt=nnx.Param)


def _create(packed):
    """flax's recipe: built in ``nnx.jit``, the state constrained to its partition specs."""

    @nnx.jit
    def create():
        model, optimizer = _make(packed)
        state = nnx.state(optimizer)
        pspecs = nnx.get_partition_spec(state)
        nnx.update(optimizer, jax.lax.with_sharding_constraint(state, pspecs))
        return model, optimizer

    return create()


@nnx.jit
def _step(model, optimizer, x, y):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)


def _slots(optimizer):
    """(kept slots by path, buffers) of the ``mu`` and ``nu`` of a PackedOptimizer."""
    kept, buffers = {}, []
    layout = optimizer.layout
    for name in ("mu", "nu"):
        node = getattr(optimizer.opt_state.knobs, name)
        for i, v in zip(layout.big, node.leaves):
            kept[(name, layout.paths[i])] = v
        buffers.extend(node.buffers)
    return kept, buffers


def _at(state, path):
    """The entry of an nnx ``State`` at a path written as ``keystr`` writes it."""
    for key in path.strip("[]'").split("']['"):
        state = state[key]
    return state


def _ref_slot(ref, name, path):
    return _at(nnx.state(getattr(ref.opt_state.knobs, name)), path)


def _check_specs_and_metadata(opt, ref):
    layout = opt.layout
    assert {layout.paths[i] for i in layout.big} == set(KEPT)
    spec = nnx.get_partition_spec(nnx.state(opt))  # runs on the packed state
    assert spec["step"].get_value() == P()
    assert spec["opt_state"]["knobs"]["count"].get_value() == P()
    kept, buffers = _slots(opt)
    for (name, path), v in kept.items():
        want = _ref_slot(ref, name, path)
        assert type(v) is type(want)  # nnx.OptVariable, as nnx.Optimizer's slot
        assert nnx.get_partition_spec(v).get_value() == KEPT[path]
        assert nnx.get_partition_spec(want).get_value() == KEPT[path]
        assert v.get_metadata().get("out_sharding") == want.get_metadata().get("out_sharding")
    for b in buffers:  # replicated: no mesh axis in the spec
        assert all(e is None for e in nnx.get_partition_spec(b).get_value())


def _check_placement(model, opt, mesh):
    kept, buffers = _slots(opt)
    params = nnx.state(model, nnx.Param)
    for (_, path), v in kept.items():
        param = _at(params, path)
        assert v[...].sharding.is_equivalent_to(param[...].sharding, v[...].ndim), path
        assert v[...].sharding.spec == KEPT[path] or KEPT[path] == P()
    for b in buffers:
        assert b[...].sharding.is_fully_replicated
        assert b[...].sharding.device_set == set(mesh.devices.flat)


def _check_values(model, opt, ref_model, ref):
    pure = lambda x: nnx.as_pure(nnx.state(x))  # noqa: E731
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)  # noqa: E731
    jax.tree.map(close, pure(model), pure(ref_model))
    state, ref_state = opt.unpacked_state(), pure(ref)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    jax.tree.map(close, state, ref_state)


@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_the_flax_recipe_in_jit_shards_like_nnx_optimizer(kind):
    mesh = _mesh(kind)
    with jax.set_mesh(mesh):
        model, opt = _create(packed=True)
        ref_model, ref = _create(packed=False)
        _check_specs_and_metadata(opt, ref)
        _check_placement(model, opt, mesh)
        for x, y in zip(X, Y):
            _step(model, opt, x, y)
            _step(ref_model, ref, x, y)
    _check_specs_and_metadata(opt, ref)  # the metadata survives the steps
    _check_placement(model, opt, mesh)
    _check_values(model, opt, ref_model, ref)


def test_built_eagerly_then_placed_by_get_named_sharding(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    mesh = _mesh(AxisType.Explicit)
    with jax.set_mesh(mesh):
        model, opt = _make(packed=True)  # concrete: pack sees the placements itself
        ref_model, ref = _make(packed=False)
        _check_specs_and_metadata(opt, ref)
        state = nnx.state(opt)
        nnx.update(opt, jax.device_put(state, nnx.get_named_sharding(state, mesh)))
        _check_placement(model, opt, mesh)
        _step(model, opt, X[0], Y[0])
        _step(ref_model, ref, X[0], Y[0])
    _check_placement(model, opt, mesh)
    _check_values(model, opt, ref_model, ref)

    # orbax: save the sharded state, restore onto the named shardings of a fresh optimizer
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "opt", nnx.as_pure(nnx.state(opt)))
        ckptr.wait_until_finished()
    with jax.set_mesh(mesh):
        _, fresh = _make(packed=True)
    assert fresh.layout is opt.layout
    state = nnx.state(fresh)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nnx.as_pure(state),
        nnx.as_pure(nnx.get_named_sharding(state, mesh)),
    )
    with ocp.StandardCheckpointer() as ckptr:
        nnx.update(fresh, ckptr.restore(tmp_path / "opt", target))
    _check_specs_and_metadata(fresh, ref)
    _check_placement(model, fresh, mesh)
    jax.tree.map(
        np.testing.assert_array_equal, nnx.as_pure(nnx.state(fresh)), nnx.as_pure(nnx.state(opt))
    )
