"""Optimizer state: named entries, stable structure and dtypes, a saturating int32 count."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
from gradtx._core.stage import INT32_MAX


def _params():
    return {
        "w": jnp.full((3, 4), 0.5, jnp.float32),
        "b": jnp.full((4,), 0.25, jnp.bfloat16),
        "h": jnp.full((2,), -1.0, jnp.float16),
        "s": jnp.array(2.0, jnp.float32),
    }


def _grads(params):
    return jax.tree.map(lambda p: (0.1 * p + 0.01).astype(p.dtype), params)


def _shapes_and_dtypes(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def test_state_is_named():
    sched = gradtx.schedules.linear(1e-3, 0.0, 100)
    tx = gradtx.adam(sched)
    params = _params()
    state = tx.init(params)
    assert isinstance(state, gradtx.State)
    assert list(state) == ["knobs", "learning_rate"]
    assert state[0] is state.knobs and state[1] is state["learning_rate"]
    assert sorted(state.knobs) == ["count", "mu", "nu"]
    assert state.knobs.count.dtype == jnp.int32 and int(state.knobs.count) == 0
    assert int(state["learning_rate"].count) == 0  # a scheduled η keeps its own count
    for moment in (state.knobs.mu, state.knobs.nu):  # moments mirror the params tree
        assert jax.tree.structure(moment) == jax.tree.structure(params)
    _, state = tx.update(_grads(params), state, params)
    assert int(state.knobs.count) == 1 and int(state.learning_rate.count) == 1
    np.testing.assert_allclose(state.knobs.mu["w"], 0.1 * _grads(params)["w"], rtol=1e-6)
    # Paths name entries by what they are.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert ".knobs.mu['w']" in paths and ".knobs.count" in paths
    with pytest.raises(AttributeError, match="entries: knobs, learning_rate"):
        state.momentum  # noqa: B018


def test_state_entries_of_a_chain_are_named_after_stages():
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.sgd(0.1, momentum=0.9))
    state = tx.init(_params())
    assert list(state) == ["clip_by_global_norm", "sgd"]
    assert sorted(state.sgd.knobs) == ["mu"]  # no schedule, no bias correction: no count


@pytest.mark.parametrize("name, factory", helpers.OPTIMIZERS, ids=helpers.OPTIMIZER_IDS)
def test_update_keeps_state_structure_and_dtypes(name, factory):
    tx = factory()
    params = _params()
    grads = _grads(params)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert _shapes_and_dtypes(new_state) == _shapes_and_dtypes(state)
    assert _shapes_and_dtypes(updates) == _shapes_and_dtypes(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(new_state):
        if jax.tree_util.keystr(path).endswith(".count"):
            assert leaf.dtype == jnp.int32, path


def test_count_is_int32_and_saturates():
    tx = gradtx.adam(gradtx.schedules.linear(1e-3, 0.0, 100))
    params = _params()
    state = tx.init(params)
    near = jnp.asarray(INT32_MAX - 1, jnp.int32)
    state = state.replace(
        knobs=state.knobs.replace(count=near), learning_rate=state.learning_rate.replace(count=near)
    )
    step = jax.jit(tx.update)
    counts = []
    for _ in range(3):
        updates, state = step(_grads(params), state, params)
        counts.append((int(state.knobs.count), int(state.learning_rate.count)))
        assert state.knobs.count.dtype == jnp.int32
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    assert counts == [(INT32_MAX, INT32_MAX)] * 3  # no wrap-around to -2**31


def test_count_saturates_in_a_state_built_by_hand():
    tx = gradtx.sgd(gradtx.schedules.linear(0.1, 0.0, 10))
    params = {"w": jnp.ones(2, jnp.float32)}
    state = gradtx.State(learning_rate=gradtx.State(count=jnp.asarray(INT32_MAX, jnp.int32)))
    u, state = tx.update({"w": jnp.ones(2, jnp.float32)}, state, params)
    assert int(state.learning_rate.count) == INT32_MAX
    np.testing.assert_allclose(u["w"], 0.0)  # the linear schedule has long reached 0


def test_none_leaves_pass_through():
    # Equinox-style filtered trees: non-trainable leaves are None in params and gradients.
    params = {"w": jnp.ones(3, jnp.float32), "frozen": None, "nested": [None, jnp.ones(2)]}
    grads = {"w": jnp.full(3, 0.5, jnp.float32), "frozen": None, "nested": [None, jnp.ones(2)]}
    tx = gradtx.chain(gradtx.clip_by_global_norm(10.0), gradtx.adamw(0.1, weight_decay=0.1))
    state = tx.init(params)
    assert state.adamw.knobs.mu["frozen"] is None and state.adamw.knobs.mu["nested"][0] is None
    step = jax.jit(tx.update)
    for _ in range(2):
        updates, state = step(grads, state, params)
        assert updates["frozen"] is None and updates["nested"][0] is None
        params = gradtx.apply_updates(params, updates)
    assert params["frozen"] is None and params["nested"][0] is None
    assert float(params["w"][0]) < 1.0
