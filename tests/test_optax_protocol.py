"""optax's protocol details that optax's own tests rely on, with gradtx substituted.

``optax.tree.get`` finds entries of gradtx's state; ``GradientTransformation(init_fn,
update_fn)`` builds a transformation from two functions; stateless stages ignore whatever
state they are given (optax passes ``None``, ``{}``, ``0``); ``trace(decay=1.0)`` sums.
Found by running optax's test files against gradtx (``tools/optax_suite.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx

P = {"w": jnp.asarray([1.0, -2.0, 0.5]), "b": jnp.asarray(0.25)}
G = {"w": jnp.asarray([0.5, 0.25, -1.0]), "b": jnp.asarray(2.0)}


@pytest.mark.parametrize("mu_dtype", [None, jnp.bfloat16])
def test_optax_tree_get_finds_gradtx_entries(mu_dtype):
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-3, mu_dtype=mu_dtype))
    state = tx.init(P)
    _, state = tx.update(G, state, P)
    mu = optax.tree.get(state, "mu")
    assert mu is state.adamw.knobs.mu
    assert mu["w"].dtype == (mu_dtype or jnp.float32)
    assert int(optax.tree.get(state, "count")) == 1
    paths = optax.tree_utils.tree_get_all_with_path(state, "nu")
    assert len(paths) == 1 and paths[0][1] is state.adamw.knobs.nu


def test_state_is_a_read_only_dict():
    state = gradtx.adam(1e-3).init(P)
    assert isinstance(state, dict) and list(state) == ["knobs", "learning_rate"]
    assert dict(state)["knobs"] is state.knobs is state[0] and state.get("nope", 3) == 3
    for mutate in (
        lambda: state.__setitem__("knobs", 1),
        lambda: state.update(knobs=1),
        lambda: state.pop("knobs"),
        lambda: state.clear(),
        lambda: state.setdefault("x", 1),
    ):
        with pytest.raises(TypeError, match="State is immutable"):
            mutate()
    assert list(state) == ["knobs", "learning_rate"]  # nothing changed
    assert state == jax.tree.map(lambda x: x, state) and not (state != state)
    assert state != dict(state)  # a plain dict is not a State


def _init(params):
    return {"n": jnp.zeros([], jnp.int32)}


def _update(updates, state, params=None, *, scale=1.0):
    out = jax.tree.map(lambda g: -scale * g, updates)
    return out, {"n": state["n"] + 1}


def test_gradient_transformation_from_two_functions():
    tx = gradtx.GradientTransformation(_init, _update)
    ref = optax.GradientTransformationExtraArgs(_init, _update)
    assert isinstance(tx, gradtx.GradientTransformation) and hash(tx) == hash(
        gradtx.GradientTransformation(_init, _update)
    )
    for t in (tx, ref):
        state = t.init(P)
        u, state = jax.jit(t.update)(G, state, P)
        np.testing.assert_array_equal(u["w"], -G["w"])
        assert int(state["n"]) == 1
    # keyword arguments reach the function when it accepts them, others are dropped
    u, _ = tx.update(G, tx.init(P), P, scale=2.0, loss=jnp.float32(1.0))
    np.testing.assert_array_equal(u["w"], -2.0 * G["w"])
    # inside both chains
    for chain in (gradtx.chain, optax.chain):
        c = chain(gradtx.clip_by_global_norm(1.0), tx)
        u, _ = c.update(G, c.init(P), P, scale=1.0)
        want = jax.tree.map(lambda g: -g / float(optax.tree.norm(G)), G)
        np.testing.assert_allclose(u["w"], want["w"], rtol=1e-6)


@pytest.mark.parametrize("state", [None, {}, 0, (), optax.EmptyState()], ids=repr)
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (gradtx.clip(0.5), optax.clip(0.5)),
        (gradtx.clip_by_block_rms(0.5), optax.clip_by_block_rms(0.5)),
        (gradtx.scale(0.5), optax.scale(0.5)),
        (gradtx.add_decayed_weights(0.1), optax.add_decayed_weights(0.1)),
    ],
    ids=["clip", "clip_by_block_rms", "scale", "add_decayed_weights"],
)
def test_stateless_stages_ignore_the_state_given(state, ours, theirs):
    u, s = ours.update(G, state, P)
    want, _ = theirs.update(G, theirs.init(P), P)
    assert s is state
    np.testing.assert_allclose(u["w"], want["w"], rtol=1e-6)
    assert ours.update(None, state, P) == (None, state) == theirs.update(None, state, P)


def test_stateful_stage_still_checks_its_state():
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.adam.*state is not"):
        gradtx.adam(1e-3).update(G, None, P)


def test_trace_decay_one_sums_as_optax():
    ours, theirs = gradtx.trace(1.0), optax.trace(1.0)
    s, t = ours.init(P), theirs.init(P)
    for k in range(4):
        g = jax.tree.map(lambda x, k=k: x * (k + 1), G)
        u, s = ours.update(g, s, P)
        v, t = theirs.update(g, t, P)
        np.testing.assert_allclose(u["w"], v["w"], rtol=1e-6)
    np.testing.assert_allclose(u["w"], 10 * G["w"], rtol=1e-6)  # 1 + 2 + 3 + 4
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        gradtx.trace(1.5)
