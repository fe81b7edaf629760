"""gradtx speaks optax's protocol: flax (nnx and linen) and optax.chain accept it unchanged."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import gradtx

# A small regression task shared by the flax tests: y = x @ w_true + 0.5.
_X = jax.random.normal(jax.random.key(0), (32, 4), jnp.float32)
_Y = _X @ jnp.array([[1.0], [-2.0], [0.5], [3.0]], jnp.float32) + 0.5


def _reference_updates(tx, params, n: int) -> list:
    """Updates of an optax transformation on ``_grads(1..n)`` (optax needs standard promotion)."""
    with jax.numpy_dtype_promotion("standard"):
        state, step, out = tx.init(params), jax.jit(tx.update), []
        for i in range(1, n + 1):
            u, state = step(_grads(i), state, params)
            out.append(u)
    return out


def _grads(key: int) -> dict:
    k1, k2 = jax.random.split(jax.random.key(key))
    return {
        "w": jax.random.normal(k1, (3, 2), jnp.float32),
        "b": jax.random.normal(k2, (2,), jnp.float32),
    }


def test_nnx_optimizer_trains_under_nnx_jit():
    class Linear(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.layer = nnx.Linear(4, 1, rngs=rngs)

        def __call__(self, x):
            return self.layer(x)

    model = Linear(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, gradtx.adam(0.1), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(_X) - _Y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(25)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]
    # nnx keeps gradtx's named state: the Adam moments are reachable by name.
    assert int(optimizer.opt_state.knobs.count) == 25


def test_linen_train_state_trains_under_jit():
    model = nn.Dense(1)
    params = model.init(jax.random.key(0), _X)["params"]
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=gradtx.adamw(0.05, weight_decay=1e-4)
    )

    @jax.jit
    def train_step(state):
        def loss_fn(p):
            return jnp.mean((state.apply_fn({"params": p}, _X) - _Y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for _ in range(20):
        state, loss = train_step(state)
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 20


def test_gradtx_inside_optax_chain_matches_optax():
    # optax.chain only calls init/update: gradtx's Adam after optax's clipping gives optax's Adam.
    ours = optax.chain(optax.clip_by_global_norm(1.0), gradtx.adam(0.1))
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
    params = _grads(0)
    state, step = ours.init(params), jax.jit(ours.update)
    for i, u_ref in enumerate(_reference_updates(ref, params, 5), start=1):
        u, state = step(_grads(i), state, params)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # float32 rounding only
    assert isinstance(state[1], gradtx.State)
    assert int(state[1].knobs.count) == 5


def test_gradtx_chain_accepts_optax_transformations():
    # An optax stage inside gradtx.chain keeps its own state under the name "optax".
    ours = gradtx.chain(optax.clip_by_global_norm(1.0), gradtx.adam(0.1))
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
    params = _grads(0)
    state, step = ours.init(params), jax.jit(ours.update)
    assert list(state) == ["optax", "adam"]
    for i, u_ref in enumerate(_reference_updates(ref, params, 5), start=1):
        u, state = step(_grads(i), state, params)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # float32 rounding only
    assert int(state.adam.knobs.count) == 5


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.adamw(1e-3),
        lambda: gradtx.chain(
            gradtx.clip_by_global_norm(1.0),
            gradtx.adam(gradtx.schedules.warmup_cosine_decay(0.0, 1e-3, 10, 100)),
        ),
        lambda: gradtx.multi_transform(
            {"w": gradtx.adam(1e-3), "b": gradtx.sgd(0.1)}, {"w": "w", "b": "b"}
        ),
        lambda: gradtx.MultiSteps(gradtx.lion(1e-4), 2),
    ],
    ids=["adamw", "chain_schedule", "multi_transform", "multi_steps"],
)
def test_equinox_partition_and_combine_keep_the_structure(make):
    """``eqx.partition`` replaces leaves with ``None`` (a hyperparameter's number too) and
    ``eqx.combine`` zips the halves: a gradtx value survives both and ``eqx.filter_jit`` over
    it runs the same update as the plain call."""
    eqx = pytest.importorskip("equinox")
    tx = make()
    for where in (eqx.is_array, eqx.is_inexact_array_like):
        dynamic, static = eqx.partition(tx, where)
        assert eqx.combine(dynamic, static) == tx
        none_leaf = lambda x: x is None  # noqa: E731 - how equinox zips the halves
        assert jax.tree.structure(dynamic, is_leaf=none_leaf) == jax.tree.structure(
            static, is_leaf=none_leaf
        )
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    grads = jax.tree.map(lambda x: x + 0.5, params)
    state = tx.init(params)
    want, _ = tx.update(grads, state, params)
    got, _ = eqx.filter_jit(lambda t, s, g: t.update(g, s, params))(tx, state, grads)
    for k in params:  # the same program on the same numbers
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
