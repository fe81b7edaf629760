"""``migrate``: slots carried over by path when layers are added, removed, resized or frozen,
or the optimizer is wrapped; training goes on as if nothing had changed for the kept leaves."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx

OLD = {
    "enc": {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.zeros(3)},
    "head": {"w": jnp.ones((3, 2))},
}


def _grads(params, i):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(i), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _trained(tx, params, steps=4):
    state = tx.init(params)
    for i in range(steps):
        u, state = tx.update(_grads(params, i), state, params)
        params = gradtx.apply_updates(params, u)
    return params, state


def test_adding_a_layer_keeps_the_others_and_training_goes_on_identically():
    tx = gradtx.adamw(1e-2, weight_decay=0.1)
    params, state = _trained(tx, OLD)
    new_params = {**params, "extra": {"w": jnp.ones((2, 2))}}
    m = gradtx.migrate(state, params, tx, new_params)
    assert m.created == [".knobs.mu['extra']['w']", ".knobs.nu['extra']['w']"]
    assert m.dropped == []
    assert ".knobs.count" in m.kept
    # the next step on the old leaves equals the old run's next step, bit for bit
    g = _grads(params, 9)
    u_old, _ = tx.update(g, state, params)
    u_new, _ = tx.update({**g, "extra": {"w": jnp.ones((2, 2))}}, m.state, new_params)
    for a, b in zip(
        jax.tree_util.tree_leaves(u_old), jax.tree_util.tree_leaves({k: u_new[k] for k in u_old})
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_removing_and_resizing_layers():
    tx = gradtx.sgd(0.1, momentum=0.9)
    params, state = _trained(tx, OLD)
    new_params = {"enc": {"w": jnp.ones((2, 5)), "b": params["enc"]["b"]}}  # w resized, head gone
    m = gradtx.migrate(state, params, tx, new_params)
    assert m.kept == {".knobs.mu['enc']['b']": ".knobs.mu['enc']['b']"}
    assert m.created == [".knobs.mu['enc']['w']"]
    assert sorted(m.dropped) == [".knobs.mu['enc']['w']", ".knobs.mu['head']['w']"]
    np.testing.assert_array_equal(
        np.asarray(m.state.knobs.mu["enc"]["b"]), np.asarray(state.knobs.mu["enc"]["b"])
    )
    assert float(jnp.abs(m.state.knobs.mu["enc"]["w"]).sum()) == 0.0
    assert "dropped  .knobs.mu['head']['w']" in str(m)


def test_freezing_a_layer_by_wrapping_in_groups():
    """The slots move under the group's state (another path: matched by slot and param path);
    the frozen leaves' slots are dropped; every group's count is the old count."""
    tx = gradtx.adam(1e-3)
    params, state = _trained(tx, OLD)
    new_tx = gradtx.groups(
        tx,
        [
            gradtx.group("frozen", r"^enc/", frozen=True),
            gradtx.group("head", r"^head/", lr_mult=0.5),
        ],
        rest=None,
    )
    m = gradtx.migrate(state, params, new_tx, params)
    head = m.state.inner_states["head"]["inner_state"]
    np.testing.assert_array_equal(
        np.asarray(head.knobs.mu["head"]["w"]), np.asarray(state.knobs.mu["head"]["w"])
    )
    assert int(head.knobs.count) == int(state.knobs.count) == 4
    assert sorted(m.dropped) == sorted(
        [
            ".knobs.mu['enc']['b']",
            ".knobs.mu['enc']['w']",
            ".knobs.nu['enc']['b']",
            ".knobs.nu['enc']['w']",
        ]
    )
    assert m.created == []
    # and the head's next update is the old one times the group's multiplier
    g = _grads(params, 5)
    u_old, _ = tx.update(g, state, params)
    u_new, _ = new_tx.update(g, m.state, params)
    np.testing.assert_allclose(
        np.asarray(u_new["head"]["w"]), 0.5 * np.asarray(u_old["head"]["w"]), rtol=1e-6
    )
    assert float(jnp.abs(u_new["enc"]["w"]).sum()) == 0.0


def test_wrapping_in_accumulation_and_from_optax_state():
    with jax.numpy_dtype_promotion("standard"):
        params, state = _trained(optax.adam(1e-3), OLD)
    new_tx = gradtx.MultiSteps(gradtx.adam(1e-3), 2)
    m = gradtx.migrate(state, params, new_tx, params)
    inner = m.state.inner_opt_state
    np.testing.assert_array_equal(
        np.asarray(inner.knobs.nu["enc"]["w"]), np.asarray(state[0].nu["enc"]["w"])
    )
    assert int(inner.knobs.count) == 4
    # the accumulator and MultiSteps' counters are new
    assert any("acc_grads" in p for p in m.created) and ".mini_step" in m.created


def test_dtype_and_sharding_follow_the_new_state():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("d",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    params = {"w": jnp.ones((4, 2))}
    old_tx = gradtx.sgd(0.1, momentum=0.9)
    _, state = _trained(old_tx, params, 2)
    new_params = {"w": jax.device_put(jnp.ones((4, 2)), spec)}
    m = gradtx.migrate(
        state, params, gradtx.sgd(0.1, momentum=0.9, accumulator_dtype=jnp.bfloat16), new_params
    )
    mu = m.state.knobs.mu["w"]
    assert mu.dtype == jnp.bfloat16 and mu.sharding == spec


def test_packed_trees_are_refused():
    packed = gradtx.pack({"a": jnp.ones(3), "b": jnp.ones(3)}, threshold=10)
    with pytest.raises(gradtx.TransformError, match="gradtx.migrate: old_params is packed"):
        gradtx.migrate({}, packed, gradtx.sgd(0.1), packed)
