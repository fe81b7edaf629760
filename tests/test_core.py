"""A transformation is a value: equality and hashing, no retracing, traced hyperparameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.training import train_state

import gradtx

_PARAMS = {"w": jnp.array([1.0, -2.0, 3.0], jnp.float32), "b": jnp.array(0.5, jnp.float32)}


def _loss(params):
    return jnp.sum((params["w"] - 1.0) ** 2) + params["b"] ** 2


# --- equality, hashing, repr ----------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.adam(1e-3),
        lambda: gradtx.adamw(1e-3, b1=0.8, weight_decay=0.1, mask={"w": True, "b": False}),
        lambda: gradtx.sgd(gradtx.schedules.linear(0.1, 0.0, 100), momentum=0.9, nesterov=True),
        lambda: gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.lion(1e-4)),
        lambda: gradtx.optimizer(gradtx.Ema(0.9), gradtx.RMSPropScale(0.99), 1e-3, name="mine"),
    ],
    ids=["adam", "adamw_masked", "sgd_scheduled", "chain", "custom"],
)
def test_equal_configurations_compare_and_hash_equal(make):
    a, b = make(), make()
    assert a is not b
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_different_configurations_differ():
    base = gradtx.adam(1e-3)
    for other in (
        gradtx.adam(1e-2),
        gradtx.adam(1e-3, b1=0.8),
        gradtx.adam(1e-3, eps=1e-6),
        gradtx.nadam(1e-3),
        gradtx.adamw(1e-3),
    ):
        assert base != other
        assert hash(base) != hash(other)


def test_repr_shows_hyperparameters():
    text = repr(gradtx.adam(3e-4, b1=0.8, b2=0.95, eps=1e-6))
    for piece in ("gradtx.adam", "learning_rate(0.0003)", "decay=0.8", "b2=0.95", "eps=1e-06"):
        assert piece in text, (piece, text)
    text = repr(gradtx.adamw(1e-3, weight_decay=0.05))
    assert "weight_decay=0.05" in text, text


def test_rebuilding_tx_in_train_state_does_not_retrace():
    traces = 0

    @jax.jit
    def train_step(state):
        nonlocal traces
        traces += 1
        grads = jax.grad(_loss)(state.params)
        return state.apply_gradients(grads=grads)

    state = train_state.TrainState.create(
        apply_fn=lambda p, x: x, params=_PARAMS, tx=gradtx.adam(1e-3)
    )
    state = train_step(state)
    for _ in range(3):  # flax holds tx as static data: equal values hash equal, no retrace
        state = train_step(state.replace(tx=gradtx.adam(1e-3)))
    assert traces == 1
    # A different value is a different static argument (pass tx to jit to avoid this).
    train_step(state.replace(tx=gradtx.adam(1e-2)))
    assert traces == 2


# --- hyperparameters are traced leaves --------------------------------------------------------


def test_hyperparameters_change_without_recompiling():
    traces = 0

    @jax.jit
    def train(tx, params):
        nonlocal traces
        traces += 1
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(jax.grad(_loss)(params), state, params)
            params = gradtx.apply_updates(params, updates)
        return params

    configs = [dict(learning_rate=lr) for lr in (0.1, 0.03, 0.01)]
    configs += [dict(learning_rate=0.1, b1=b1) for b1 in (0.5, 0.8, 0.95)]
    configs += [dict(learning_rate=0.1, weight_decay=wd) for wd in (0.0, 0.5, 2.0)]
    results = [train(gradtx.adamw(**c), _PARAMS) for c in configs]

    assert traces == 1
    finals = [np.asarray(r["w"]) for r in results]
    # All nine configurations are different values, and give different parameters.
    distinct = {tuple(np.round(f, 7)) for f in finals}
    assert len(distinct) == len(configs)


def test_schedule_peak_changes_without_recompiling():
    traces = 0

    @jax.jit
    def first_update(tx, params):
        nonlocal traces
        traces += 1
        return tx.update(jax.grad(_loss)(params), tx.init(params), params)[0]

    outs = [
        first_update(gradtx.sgd(gradtx.schedules.linear(peak, 0.0, 10)), _PARAMS)
        for peak in (0.1, 0.2, 0.4)
    ]
    assert traces == 1
    g = jax.grad(_loss)(_PARAMS)["w"]
    for peak, u in zip((0.1, 0.2, 0.4), outs):
        np.testing.assert_allclose(u["w"], -peak * g, rtol=1e-6)


# --- the current learning rate ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda s: gradtx.adam(s),
        lambda s: gradtx.sgd(s, momentum=0.9),
        lambda s: gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(s)),
    ],
    ids=["adam", "sgd_momentum", "chain_adamw"],
)
def test_current_learning_rate_follows_the_schedule(make):
    sched = gradtx.schedules.linear(1.0, 0.0, 10)
    tx = make(sched)
    state = tx.init(_PARAMS)
    step = jax.jit(tx.update)
    for count in range(6):
        # ``count`` updates have been applied: the next one uses sched(count), sched(0) first.
        lr = gradtx.current_learning_rate(tx, state)
        np.testing.assert_allclose(lr, sched(count), rtol=1e-6)
        np.testing.assert_allclose(lr, 1.0 - count / 10, rtol=1e-6)
        _, state = step(jax.grad(_loss)(_PARAMS), state, _PARAMS)


def test_first_update_sees_schedule_at_zero():
    # sgd with a schedule: the update after ``k`` updates is exactly -sched(k) * g.
    sched = gradtx.schedules.linear(0.5, 0.0, 4)
    tx = gradtx.sgd(sched)
    g = {"w": jnp.ones(3, jnp.float32), "b": jnp.array(1.0, jnp.float32)}
    state = tx.init(_PARAMS)
    for k in range(6):
        u, state = tx.update(g, state, _PARAMS)
        np.testing.assert_allclose(u["w"], -float(sched(k)) * np.ones(3), rtol=1e-6)
    assert float(sched(0)) == 0.5
    assert float(gradtx.current_learning_rate(tx, state)) == 0.0  # past the end of the decay


def test_current_learning_rate_of_a_constant():
    tx = gradtx.adam(3e-4)
    assert gradtx.current_learning_rate(tx, tx.init(_PARAMS)) == 3e-4
