"""Every public transformation and named optimizer passes the conformance kit, both tiers.

The transformations are discovered from the public API (``kit_cases.discover``): every public
function annotated to return a :class:`gradtx.GradientTransformation` and every public subclass
of it must have an entry in ``kit_cases.FACTORIES`` (or, for a function whose return type does
not say, in ``NOT_TRANSFORMATIONS``), so a new one cannot be forgotten.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from kit_cases import CASES, FACTORIES, KIT_ARGS, NOT_TRANSFORMATIONS, discover

from gradtx import GradientTransformation
from gradtx.testing import CHECKS, check_transformation


def test_every_public_transformation_has_an_entry():
    found, unclear = discover()
    missing = sorted(found - set(FACTORIES))
    assert not missing, f"add these public transformations to FACTORIES: {missing}"
    stale = sorted(set(FACTORIES) - found)
    assert not stale, f"FACTORIES names things that are not public transformations: {stale}"
    unsure = sorted(unclear - NOT_TRANSFORMATIONS - set(FACTORIES))
    assert not unsure, (
        f"public functions {unsure} do not annotate what they return: annotate them, or add "
        "them to FACTORIES or NOT_TRANSFORMATIONS"
    )
    assert NOT_TRANSFORMATIONS <= unclear, sorted(NOT_TRANSFORMATIONS - unclear)


def test_discovery_sees_named_optimizers_and_stages():
    found, _ = discover()
    assert {"adam", "sgd", "adafactor", "clip_by_global_norm", "chain", "Chain"} <= found
    assert not {"global_norm", "hyperparams", "pack", "State"} & found


def test_no_duplicate_case_ids():
    ids = [i for i, _ in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[i for i, _ in CASES])
def test_conformance(case):
    variant, make = case
    tx = make()
    assert isinstance(tx, GradientTransformation)
    report = check_transformation(
        tx, **KIT_ARGS.get(variant, {})
    )  # advisory misses recorded, so all of them show at once
    assert set(CHECKS) <= set(report.passed), str(report)
    hyper_parts = {"jit.hyperparameters", "vmap.hyperparameters"}  # none to vary (identity)
    for part, why in report.skipped.items():
        assert part in hyper_parts and "has no numeric" in why, str(report)
    assert report.misses == {}, str(report)  # gradtx holds itself to the advisory tier too


@pytest.mark.parametrize("make", [m for _, m in CASES], ids=[i for i, _ in CASES])
def test_weakly_typed_params_give_strongly_typed_state(make):
    """Params made from Python scalars (``jnp.full(4, 0.3)``) are weakly typed; a state that
    inherited it would change type at the first jitted step (a second trace)."""
    params = {"w": jnp.full((3, 2), 0.3), "b": jnp.full((2,), 0.1)}
    assert params["w"].weak_type
    tx = make()
    state = tx.init(params)
    weak = [
        jax.tree_util.keystr(p)
        for p, x in jax.tree_util.tree_leaves_with_path(state)
        if getattr(x, "weak_type", False)
    ]
    assert weak == [], f"{tx.name}: weakly typed state at {weak}"


@pytest.mark.parametrize("make", [m for _, m in CASES], ids=[i for i, _ in CASES])
def test_init_lowers_ahead_of_time_on_abstract_params(make):
    """``init`` on ``jax.ShapeDtypeStruct`` params: ``jax.eval_shape`` and AOT lowering
    (``jax.jit(tx.init).lower``) give the state's shapes and dtypes without any array, equal
    to those of an eager ``init`` on real params."""
    params = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros((2,), jnp.bfloat16)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    tx = make()
    eager = jax.tree.map(lambda x: (x.shape, x.dtype), tx.init(params))
    shaped = jax.tree.map(lambda x: (x.shape, x.dtype), jax.eval_shape(tx.init, abstract))
    lowered = jax.jit(tx.init).lower(abstract)
    aot = jax.tree.map(lambda x: (x.shape, x.dtype), lowered.out_info)
    assert shaped == eager, tx.name
    assert jax.tree_util.tree_leaves(aot) == jax.tree_util.tree_leaves(eager), tx.name
