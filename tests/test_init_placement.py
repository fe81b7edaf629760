"""``init`` places every slot as the jitted step returns it (``gradtx/_core/placement.py``).

On the 8-device CPU mesh, for meshes with Explicit and with Auto axes, sharded and replicated
params: the state of ``jax.jit(tx.init)`` (compiled ahead of time from
``jax.ShapeDtypeStruct`` params) has, leaf for leaf, the sharding a jitted step returns, so
three steps compile once; ``jax.eval_shape`` and AOT lowering of ``init`` on
``jax.ShapeDtypeStruct`` params work for every transformation of the kit and, with sharded
structs on an Explicit mesh, give the sharded state.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from kit_cases import CASES

import gradtx

SCHEDULE = gradtx.schedules.linear(1e-2, 1e-3, 10)


def _mesh(kind: AxisType) -> jax.sharding.Mesh:
    return jax.make_mesh((8,), ("x",), axis_types=(kind,))


def _specs(kind: AxisType, sharded: bool) -> dict[str, P]:
    """Specs written as jit writes its outputs' (so only the state could change the cache key):
    one entry per dimension on an Explicit mesh, trailing ``None`` dropped on an Auto mesh."""
    explicit = kind == AxisType.Explicit
    if sharded:
        return {"w": P("x", None) if explicit else P("x"), "b": P("x"), "s": P()}
    return {"w": P(None, None) if explicit else P(), "b": P(None) if explicit else P(), "s": P()}


def _params(mesh: jax.sharding.Mesh, specs: dict[str, P]) -> dict[str, jax.Array]:
    shapes = {"w": (16, 8), "b": (8,), "s": ()}
    return {
        k: jax.device_put(
            np.linspace(-1.0, 1.0, math.prod(v), dtype=np.float32).reshape(v),
            NamedSharding(mesh, specs[k]),
        )
        for k, v in shapes.items()
    }


def _three_steps(tx, params, state):
    @jax.jit
    def step(p, s):
        updates, s = tx.update(p, s, p)  # the params stand in for gradients
        return gradtx.apply_updates(p, updates), s

    p, s = params, state
    for _ in range(3):
        p, s = step(p, s)
    return s, step._cache_size()


def _assert_placed_alike(state, returned):
    init_leaves = jax.tree_util.tree_leaves_with_path(state)
    out_leaves = jax.tree.leaves(returned)
    assert len(init_leaves) == len(out_leaves)
    for (path, a), b in zip(init_leaves, out_leaves):
        assert a.sharding == b.sharding, (jax.tree_util.keystr(path), a.sharding, b.sharding)


MAKERS = {
    # params-shaped slots, a scheduled count and a count of clipping's own
    "clip_adam": lambda: gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(SCHEDULE)),
    # factored row/column statistics (reductions of the param's sharding) and momentum
    "adafactor": lambda: gradtx.adafactor(min_dim_size_to_factor=2, momentum=0.9),
    # slots cast after init (the tie to the param must survive the cast)
    "bf16_state": lambda: gradtx.with_state_dtypes(
        gradtx.adam(1e-3), {"mu": jnp.bfloat16, "nu": jnp.bfloat16}
    ),
}


EXPLICIT, AUTO = AxisType.Explicit, AxisType.Auto
COMBOS = {  # (mesh axes, sharded params, transformation): the cases where placement differs
    "explicit-sharded-clip_adam": (EXPLICIT, True, "clip_adam"),
    "explicit-replicated-clip_adam": (EXPLICIT, False, "clip_adam"),
    "explicit-sharded-adafactor": (EXPLICIT, True, "adafactor"),
    "auto-sharded-clip_adam": (AUTO, True, "clip_adam"),
    "auto-replicated-clip_adam": (AUTO, False, "clip_adam"),
    "auto-sharded-adafactor": (AUTO, True, "adafactor"),
    "auto-sharded-bf16_state": (AUTO, True, "bf16_state"),
}


@pytest.mark.parametrize("combo", list(COMBOS))
def test_jitted_init_places_as_the_step_returns_and_compiles_once(combo):
    kind, sharded, make = COMBOS[combo]
    mesh = _mesh(kind)
    specs = _specs(kind, sharded)
    params = _params(mesh, specs)
    tx = MAKERS[make]()
    structs = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    with jax.set_mesh(mesh):
        compiled = jax.jit(tx.init).lower(structs).compile()  # AOT: from structs, no arrays
        state = compiled(params)
        returned, compiles = _three_steps(tx, params, state)
        eager = tx.init(params)
    assert compiles == 1  # the state init gave is the state the step returns: one cache key
    _assert_placed_alike(state, returned)
    for s, b in zip(jax.tree.leaves(compiled.output_shardings), jax.tree.leaves(returned)):
        assert s.is_equivalent_to(b.sharding, b.ndim), (s, b.sharding)
    _assert_placed_alike(eager, returned)  # eager init places the same way
    # not trivially so: slots really follow a sharded param (before the fix, jax.jit(init) on
    # an Auto mesh put them all on P(), and the step compiled twice)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if leaf.shape == params["w"].shape:
            assert leaf.sharding.spec == specs["w"], jax.tree_util.keystr(path)


def test_eval_shape_of_sharded_structs_gives_the_sharded_state():
    """On an Explicit mesh the sharding is part of the type: ``jax.eval_shape(tx.init)`` on
    sharded ``ShapeDtypeStruct`` params says where every slot will be, no arrays made."""
    mesh = _mesh(AxisType.Explicit)
    specs = _specs(AxisType.Explicit, True)
    params = _params(mesh, specs)
    structs = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    tx = MAKERS["clip_adam"]()
    with jax.set_mesh(mesh):
        abstract = jax.eval_shape(tx.init, structs)
        real = jax.jit(tx.init)(params)
    assert abstract.adam.knobs.mu["w"].sharding.spec == P("x", None)
    assert abstract.adam.knobs.nu["b"].sharding.spec == P("x")
    for (path, a), r in zip(jax.tree_util.tree_leaves_with_path(abstract), jax.tree.leaves(real)):
        assert a.shape == r.shape and a.dtype == r.dtype
        assert a.sharding is not None, jax.tree_util.keystr(path)  # counts too: P() on the mesh
        assert a.sharding.spec == r.sharding.spec, jax.tree_util.keystr(path)


@pytest.mark.parametrize("case", CASES, ids=[i for i, _ in CASES])
def test_every_transformation_inits_on_sharded_structs(case):
    """``jax.eval_shape`` and AOT lowering (``.lower``, no compile) of every kit case's
    ``init`` on sharded ``ShapeDtypeStruct`` params of an Explicit mesh; params-shaped slots
    come out with their param's sharding."""
    _, make = case
    tx = make()
    own = getattr(tx, "mesh", None)  # shard_state's cases bring their own (1-device) mesh
    mesh = own if own is not None else _mesh(AxisType.Explicit)
    specs = _specs(AxisType.Explicit, own is None)
    shapes = {"w": (16, 8), "b": (8,), "s": ()}
    structs = {
        k: jax.ShapeDtypeStruct(v, jnp.float32, sharding=NamedSharding(mesh, specs[k]))
        for k, v in shapes.items()
    }
    with jax.set_mesh(mesh):
        traced = jax.jit(tx.init).trace(structs)  # what jax.eval_shape(tx.init, ...) gives
        traced.lower()
    for path, leaf in jax.tree_util.tree_leaves_with_path(traced.out_info):
        if own is None and leaf.shape == shapes["w"] and leaf.dtype == jnp.float32:
            assert leaf.sharding.spec == specs["w"], jax.tree_util.keystr(path)
