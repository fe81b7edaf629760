"""Live hyperparameters: ``gradtx.live``, ``set_hyperparams``, ``set_schedule_multipliers``,
``gradtx.inject_hyperparams`` (against ``optax.inject_hyperparams``) and the readers seeing
through gradtx's and optax's wrappers.

Trace counts are the point of ``live``: under ``nnx.Optimizer`` + ``nnx.jit`` and a linen
``TrainState`` + ``jax.jit`` the transformation is static, so each test changes hyperparameters
between steps and asserts one trace, and checks the numbers against a plain optimizer built
with the new value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import gradtx

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.linspace(0.1, 0.3, 3)}
SCHED = gradtx.schedules.linear(1e-2, 1e-3, 10)
# Adam against optax: optax's float32 1 − βᵗ (see tests/test_wrappers.py)
RTOL = 3e-5


def _grads(i: int) -> dict:
    leaves, treedef = jax.tree_util.tree_flatten(PARAMS)
    keys = jax.random.split(jax.random.PRNGKey(i), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    )


def _close(a, b, rtol=0.0, atol=0.0):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _steps(tx, n, state=None, params=PARAMS, start=0):
    state = tx.init(params) if state is None else state
    out = []
    for i in range(start, start + n):
        u, state = tx.update(_grads(i), state, params)
        params = optax.apply_updates(params, u)
        out.append(u)
    return out, state, params


# --- live ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.adamw(SCHED, weight_decay=0.1),
        lambda: gradtx.sgd(0.1, momentum=0.9, nesterov=True),
        lambda: gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.lion(SCHED)),
        lambda: gradtx.adafactor(1e-2),
    ],
)
def test_live_equals_the_plain_optimizer(make):
    plain, _, _ = _steps(make(), 4)
    live, _, _ = _steps(gradtx.live(make()), 4)
    _close(live, plain)  # exact: the same arithmetic, values read from the state


def test_live_names_follow_the_fields_and_are_unique():
    tx = gradtx.live(gradtx.adamw(SCHED, weight_decay=0.1))
    state = tx.init(PARAMS)
    assert set(state.hyperparams) == {"decay", "b2", "eps", "eps_root", "weight_decay"}
    assert set(state.schedules) == {"learning_rate"}
    # two stages with the same field: the dotted path tells them apart
    two = gradtx.live(gradtx.chain(gradtx.sgd(0.1), gradtx.sgd(0.2)))
    names = set(two.init(PARAMS).hyperparams)
    assert names == {"sgd.learning_rate", "sgd_1.learning_rate"}


def test_set_hyperparams_takes_effect_at_the_next_step():
    tx = gradtx.live(gradtx.adamw(1e-2, weight_decay=0.1))
    _, state, params = _steps(tx, 2)
    state = gradtx.set_hyperparams(state, learning_rate=3e-3, weight_decay=0.0, b2=0.99)
    got, _, _ = _steps(tx, 2, state, params, start=2)
    # the oracle: the plain optimizer's state, run on with the new values
    ref_tx = gradtx.adamw(3e-3, weight_decay=0.0, b2=0.99)
    _, ref_state, ref_params = _steps(gradtx.adamw(1e-2, weight_decay=0.1), 2)
    want, _, _ = _steps(ref_tx, 2, ref_state, ref_params, start=2)
    _close(got, want, rtol=1e-6)
    assert float(gradtx.current_learning_rate(tx, state)) == pytest.approx(3e-3)


def test_schedule_override_multiplier_and_return():
    tx = gradtx.live(gradtx.sgd(SCHED))
    state = tx.init(PARAMS)
    _, state, _ = _steps(tx, 3, state)
    at3 = float(SCHED(3))
    assert float(gradtx.current_learning_rate(tx, state)) == pytest.approx(at3)
    scaled = gradtx.set_schedule_multipliers(state, learning_rate=0.5)
    assert float(gradtx.current_learning_rate(tx, scaled)) == pytest.approx(0.5 * at3)
    u, scaled = tx.update(_grads(3), scaled, PARAMS)
    _close(u, jax.tree_util.tree_map(lambda g: -0.5 * at3 * g, _grads(3)), rtol=1e-6)
    # the schedule goes on under the multiplier
    assert float(gradtx.current_learning_rate(tx, scaled)) == pytest.approx(0.5 * float(SCHED(4)))
    fixed = gradtx.set_hyperparams(scaled, learning_rate=0.25)
    assert float(gradtx.current_learning_rate(tx, fixed)) == 0.25
    u, fixed = tx.update(_grads(4), fixed, PARAMS)
    _close(u, jax.tree_util.tree_map(lambda g: -0.25 * g, _grads(4)), rtol=1e-6)
    back = gradtx.set_hyperparams(fixed, learning_rate=None)
    assert float(gradtx.current_learning_rate(tx, back)) == pytest.approx(0.5 * float(SCHED(5)))


def test_changing_hyperparameters_is_one_trace_under_jit():
    tx = gradtx.live(gradtx.adamw(SCHED, weight_decay=0.1))
    traces = []

    @jax.jit
    def step(params, state, g):
        traces.append(1)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    params, state = PARAMS, tx.init(PARAMS)
    for i, (lr, wd) in enumerate([(1e-3, 0.1), (5e-4, 0.0), (1e-4, 0.2)]):
        state = gradtx.set_hyperparams(state, learning_rate=lr, weight_decay=wd)
        state = gradtx.set_schedule_multipliers(state, learning_rate=1.0 + i)
        params, state = step(params, state, _grads(i))
    assert len(traces) == 1


def test_set_hyperparams_inside_jit_and_vmap_over_a_learning_rate():
    tx = gradtx.live(gradtx.sgd(0.1))
    state = tx.init(PARAMS)

    def update_with(lr):
        s = gradtx.set_hyperparams(state, learning_rate=lr)
        return tx.update(_grads(0), s, PARAMS)[0]["w"]

    lrs = jnp.array([0.1, 0.2, 0.4])
    got = jax.jit(jax.vmap(update_with))(lrs)
    want = -lrs[:, None, None] * _grads(0)["w"][None]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


def test_nnx_optimizer_one_trace_and_the_new_values_apply():
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x):
            return self.lin(x)

    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    traces = []

    @nnx.jit
    def step(model, opt):
        traces.append(1)
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        opt.update(model, grads)

    def run(make_tx, rates):
        model = Model(nnx.Rngs(0))
        opt = nnx.Optimizer(model, make_tx(rates[0]), wrt=nnx.Param)
        for lr, wd in rates:
            if isinstance(opt.tx, type(gradtx.live(gradtx.sgd(0.1)))):
                gradtx.set_hyperparams(opt, learning_rate=lr, weight_decay=wd)
            else:
                opt = nnx.Optimizer(model, make_tx((lr, wd)), wrt=nnx.Param)
            step(model, opt)
        return model, opt

    rates = [(1e-2, 0.1), (5e-3, 0.0), (1e-3, 0.3)]
    model, opt = run(lambda r: gradtx.live(gradtx.adamw(r[0], weight_decay=r[1])), rates)
    assert len(traces) == 1
    assert float(gradtx.current_learning_rate(opt.tx, opt.opt_state)) == pytest.approx(1e-3)
    # the oracle: the same run with the plain optimizer, its state carried over by hand
    ref_model = Model(nnx.Rngs(0))
    ref_state = None
    for lr, wd in rates:
        ref_tx = gradtx.adamw(lr, weight_decay=wd)
        params = nnx.state(ref_model, nnx.Param)
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(ref_model)
        ref_state = ref_tx.init(params) if ref_state is None else ref_state
        u, ref_state = ref_tx.update(grads, ref_state, params)
        nnx.update(ref_model, optax.apply_updates(params, u))
    _close(nnx.state(model, nnx.Param), nnx.state(ref_model, nnx.Param), rtol=1e-6)


def test_linen_train_state_one_trace():
    from flax.training import train_state

    params = {"w": jnp.ones((3, 2))}
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    ts = train_state.TrainState.create(
        apply_fn=lambda p, x: x @ p["w"], params=params, tx=gradtx.live(gradtx.adam(1e-2))
    )
    traces = []

    @jax.jit
    def step(ts):
        traces.append(1)
        grads = jax.grad(lambda p: jnp.mean(ts.apply_fn(p, x) ** 2))(ts.params)
        return ts.apply_gradients(grads=grads)

    for lr in (1e-2, 3e-3, 1e-3):
        ts = gradtx.set_hyperparams(ts, learning_rate=lr)
        ts = step(ts)
    assert len(traces) == 1
    assert float(gradtx.current_learning_rate(ts.tx, ts.opt_state)) == pytest.approx(1e-3)


def test_live_checkpoint_round_trip_continues_bit_identically():
    tx = gradtx.live(gradtx.adamw(SCHED, weight_decay=0.1))
    _, state, params = _steps(tx, 2)
    state = gradtx.set_hyperparams(state, learning_rate=4e-3, eps=1e-6)
    state = gradtx.set_schedule_multipliers(state, learning_rate=0.5)
    blob = serialization.to_bytes(state)
    restored = serialization.from_bytes(tx.init(PARAMS), blob)
    a, _, _ = _steps(tx, 2, state, params, start=2)
    b, _, _ = _steps(tx, 2, restored, params, start=2)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_live_on_a_packed_tree_equals_unpacked():
    tx = gradtx.live(gradtx.adamw(SCHED, weight_decay=0.1))
    packed = gradtx.pack(PARAMS, threshold=None)
    state = tx.init(packed)
    state = gradtx.set_hyperparams(state, weight_decay=0.05)
    u, _ = tx.update(gradtx.pack(_grads(0), threshold=None), state, packed)
    ref_state = gradtx.set_hyperparams(tx.init(PARAMS), weight_decay=0.05)
    want, _ = tx.update(_grads(0), ref_state, PARAMS)
    _close(gradtx.unpack(u), want, rtol=1e-6)


def test_live_errors_name_the_problem():
    with pytest.raises(TypeError, match=r"gradtx.live: .*inject_hyperparams"):
        gradtx.live(optax.adam(1e-3))
    state = gradtx.live(gradtx.sgd(0.1)).init(PARAMS)
    with pytest.raises(KeyError, match=r"no live hyperparameter lr.*learning_rate"):
        gradtx.set_hyperparams(state, lr=0.1)
    with pytest.raises(ValueError, match=r"learning_rate has shape \(\)"):
        gradtx.set_hyperparams(state, learning_rate=jnp.ones(3))
    with pytest.raises(ValueError, match="constant"):
        gradtx.set_hyperparams(state, learning_rate=None)
    with pytest.raises(KeyError, match="no live hyperparameter"):
        gradtx.set_schedule_multipliers(state, learning_rate=2.0)  # a constant
    with pytest.raises(KeyError, match="gradtx.live"):
        gradtx.set_hyperparams(gradtx.adam(1e-3).init(PARAMS), learning_rate=0.1)
    with pytest.raises(gradtx.TransformError, match="gradtx.live: state is not"):
        gradtx.live(gradtx.sgd(0.1)).update(_grads(0), gradtx.sgd(0.1).init(PARAMS), PARAMS)


def test_set_keeps_dtype_and_sharding():
    tx = gradtx.live(gradtx.sgd(0.1))
    state = tx.init(PARAMS)
    new = gradtx.set_hyperparams(state, learning_rate=np.float64(0.5))
    assert new.hyperparams["learning_rate"].dtype == jnp.float32
    assert new.hyperparams["learning_rate"].sharding == state.hyperparams["learning_rate"].sharding
    assert state.hyperparams["learning_rate"] == pytest.approx(0.1)  # the old state is unchanged


# --- inject_hyperparams -------------------------------------------------------------------------
def test_inject_hyperparams_equals_optax():
    ours = gradtx.inject_hyperparams(optax.sgd)(optax.linear_schedule(0.1, 0.01, 5), momentum=0.9)
    theirs = optax.inject_hyperparams(optax.sgd)(optax.linear_schedule(0.1, 0.01, 5), momentum=0.9)
    with jax.numpy_dtype_promotion("standard"):
        a, sa, _ = _steps(ours, 4)
        b, sb, _ = _steps(theirs, 4)
    _close(a, b)
    assert list(sa) == list(sb._fields)
    assert sa.hyperparams.keys() == sb.hyperparams.keys()
    _close(sa.hyperparams, sb.hyperparams)
    assert int(sa.count) == int(sb.count) == 4


def test_inject_hyperparams_of_gradtx_adamw_equals_optax_adamw():
    def make(inject, factory):
        return inject(factory)(optax.linear_schedule(1e-2, 1e-3, 5), b1=0.8, weight_decay=0.1)

    with jax.numpy_dtype_promotion("standard"):
        a, _, _ = _steps(make(gradtx.inject_hyperparams, gradtx.adamw), 4)
        b, _, _ = _steps(make(optax.inject_hyperparams, optax.adamw), 4)
        # optax's own wrapper around gradtx's factory keeps working
        c, _, _ = _steps(make(optax.inject_hyperparams, gradtx.adamw), 4)
    _close(a, b, rtol=RTOL, atol=1e-9)
    _close(c, a, rtol=1e-6)


def test_inject_hyperparams_mutation_and_set_hyperparams():
    tx = gradtx.inject_hyperparams(gradtx.sgd)(0.1)
    state = tx.init(PARAMS)
    state.hyperparams["learning_rate"] = 0.5  # optax's documented in-place pattern
    u, state = tx.update(_grads(0), state, PARAMS)
    _close(u, jax.tree_util.tree_map(lambda g: -0.5 * g, _grads(0)), rtol=1e-6)
    state = gradtx.set_hyperparams(state, learning_rate=0.25)
    u, state = tx.update(_grads(1), state, PARAMS)
    _close(u, jax.tree_util.tree_map(lambda g: -0.25 * g, _grads(1)), rtol=1e-6)
    # optax's state too
    ostate = optax.inject_hyperparams(optax.sgd)(0.1).init(PARAMS)
    ostate = gradtx.set_hyperparams(ostate, learning_rate=0.3)
    assert float(ostate.hyperparams["learning_rate"]) == pytest.approx(0.3)


def test_inject_hyperparams_arguments_are_checked_as_optax():
    with pytest.raises(ValueError, match="static_args"):
        gradtx.inject_hyperparams(gradtx.sgd, static_args=("nope",))
    tx = gradtx.inject_hyperparams(gradtx.adamw)(1e-3, mask=lambda p: p)  # mask: a schedule?
    with pytest.raises(Exception):  # noqa: B017  (optax treats it as a schedule and fails too)
        tx.init(PARAMS)
    ok = gradtx.inject_hyperparams(gradtx.adamw, static_args="mask")(
        1e-3, mask=lambda p: jax.tree_util.tree_map(lambda x: x.ndim > 1, p)
    )
    assert "mask" not in ok.init(PARAMS).hyperparams
    hash(gradtx.inject_hyperparams(gradtx.adam)(1e-3))  # a hashable value, as flax needs


# --- reading through wrappers -------------------------------------------------------------------
@pytest.mark.parametrize(
    "wrap",
    [
        lambda t: gradtx.masked(t, {"w": True, "b": False}),
        lambda t: gradtx.apply_if_finite(t, 2),
        lambda t: gradtx.MultiSteps(t, 2),
        lambda t: gradtx.live(t),
        lambda t: gradtx.chain(gradtx.clip(1.0), gradtx.apply_if_finite(t, 1)),
        lambda t: optax.MultiSteps(t, 2),
        lambda t: optax.masked(t, {"w": True, "b": False}),
        lambda t: optax.apply_if_finite(t, 2),
        lambda t: optax.chain(optax.clip(1.0), t),
    ],
)
def test_current_learning_rate_sees_through_wrappers(wrap):
    tx = wrap(gradtx.adam(SCHED))
    state = tx.init(PARAMS)
    with jax.numpy_dtype_promotion("standard"):
        for i in range(4):
            _, state = tx.update(_grads(i), state, PARAMS)
    inner = gradtx.hyperparams(tx, state)
    if "apply_if_finite" in inner:  # a gradtx chain: one entry per stage
        inner = inner["apply_if_finite"]
    assert inner["knobs"]["scale"]["b2"] == pytest.approx(0.999)
    lr = float(gradtx.current_learning_rate(tx, state))
    steps = 2 if "MultiSteps" in repr(type(tx)) or "multi_steps" in repr(tx) else 4
    assert lr == pytest.approx(float(SCHED(steps)))


def test_current_learning_rate_of_partitions_and_optax_inject():
    tx = gradtx.partition({"a": gradtx.adam(0.1), "b": gradtx.sgd(0.2)}, {"w": "a", "b": "b"})
    lrs = gradtx.current_learning_rate(tx, tx.init(PARAMS))
    assert {k: float(v) for k, v in lrs.items()} == pytest.approx({"a": 0.1, "b": 0.2})
    otx = optax.inject_hyperparams(optax.adam)(0.3)
    assert float(gradtx.current_learning_rate(otx, otx.init(PARAMS))) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="has no learning rate"):
        gradtx.current_learning_rate(gradtx.clip(1.0), gradtx.clip(1.0).init(PARAMS))


def test_inject_hyperparams_dtype_differs_from_optax_on_purpose():
    # docs/migration.md: float hyperparameters are float32 beside bfloat16 params (optax:
    # bfloat16, where b2 = 0.999 rounds to 1.0)
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    ours = gradtx.inject_hyperparams(optax.adam)(1e-3, b2=0.999).init(params)
    theirs = optax.inject_hyperparams(optax.adam)(1e-3, b2=0.999).init(params)
    assert ours.hyperparams["b2"].dtype == jnp.float32
    assert float(ours.hyperparams["b2"]) == pytest.approx(0.999)
    assert theirs.hyperparams["b2"].dtype == jnp.bfloat16
    assert float(theirs.hyperparams["b2"]) == 1.0


def test_the_docs_recipe_runs(capsys):
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "live_hyperparameters.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "live_hyperparameters.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "1e-04"
