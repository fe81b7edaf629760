"""``reduce_on_plateau`` and ``lookahead``: equal to optax's on the same inputs, and hardened.

``reduce_on_plateau`` against ``optax.contrib.reduce_on_plateau`` on a positive metric (every
state field over 60 jitted steps), against a NumPy float64 loop of gradtx's documented rule on
negative metrics (where optax's threshold is wrong), without retracing as the metric changes.
``lookahead`` against ``optax.lookahead`` (optax and gradtx inner optimizers, with and without
``reset_state``) over 12 jitted steps, through a checkpoint, and through the hyperparameter
readers. Both through the conformance kit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization
from jax.sharding import Mesh, NamedSharding

import gradtx
from gradtx._wrappers.lookahead import LookaheadParams, lookahead
from gradtx._wrappers.plateau import reduce_on_plateau
from gradtx.testing import check_structure, check_transformation
from gradtx.testing._checks_structure import structure_zoo

PARAMS = {
    "dense": {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.1, 0.4, 4)},
    "head": jnp.linspace(0.5, -0.5, 8).reshape(4, 2),
}
FLOAT32_MAX = np.finfo(np.float32).max
ENTRIES = ("scale", "best_value", "plateau_count", "cooldown_count", "count", "avg_value")


def _grads(i: int, params: Any = PARAMS) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(i), len(leaves))
    g = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, g)


def _metric(n: int = 60) -> np.ndarray:
    """A positive loss: improving for 8 steps, flat (noisy) for 12, and so on, so that each
    flat stretch triggers reductions (patience <= 4)."""
    rng = np.random.default_rng(0)
    level, out = 10.0, []
    for i in range(n):
        if i % 20 < 8:
            level *= 0.9
        out.append(level * (1.0 + 0.01 * rng.standard_normal()))
    return np.asarray(out, np.float32)


# --- reduce_on_plateau ------------------------------------------------------------------------


def _plateau_run(tx: Any, values: np.ndarray) -> list:
    """The state after each of len(values) jitted steps (the metric a jit argument), and the
    updates' ratio to the gradients; optax runs under standard promotion."""

    @jax.jit
    def step(state, g, v):
        return tx.update(g, state, PARAMS, value=v)

    state, out = tx.init(PARAMS), []
    for i, v in enumerate(values):
        g = _grads(i)
        u, state = step(state, g, jnp.asarray(v))
        ratio = np.asarray(u["head"]) / np.asarray(g["head"])
        out.append({**{e: np.asarray(getattr(state, e)) for e in ENTRIES}, "ratio": ratio})
    return out


CONFIGS = {
    "factor_patience": dict(factor=0.5, patience=3),
    "cooldown_min_scale": dict(factor=0.3, patience=2, cooldown=3, min_scale=0.02),
    "accumulation": dict(factor=0.5, patience=1, accumulation_size=3),
    "atol": dict(factor=0.5, patience=2, rtol=0.0, atol=0.05, cooldown=1),
    "defaults": dict(patience=4),
}


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_plateau_equals_optax_on_a_positive_metric(config):
    kw = CONFIGS[config]
    values = _metric()
    ours = _plateau_run(reduce_on_plateau(**kw), values)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _plateau_run(optax.contrib.reduce_on_plateau(**kw), values)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        # before the first mean gradtx holds float32's largest value where optax holds +inf
        b = dict(b, best_value=np.where(np.isinf(b["best_value"]), FLOAT32_MAX, b["best_value"]))
        for e in (*ENTRIES, "ratio"):
            # rtol 0: the same float32 operations (the threshold is optax's for best >= 0)
            np.testing.assert_array_equal(a[e], b[e], err_msg=f"step {i}: {e}")
    scales = {float(s["scale"]) for s in ours}
    assert len(scales) >= 3, scales  # the metric did trigger several reductions
    if "cooldown" in kw:
        assert max(int(s["cooldown_count"]) for s in ours) == kw["cooldown"]
    if "min_scale" in kw:
        assert min(scales) == pytest.approx(kw["min_scale"])


def _oracle(
    values: np.ndarray, factor, patience, rtol, atol, cooldown, accumulation_size, min_scale
):
    """gradtx's documented rule, a NumPy float64 loop: the states after each value."""
    scale, best, plateau, cool, n, avg, out = 1.0, np.inf, 0, 0, 0, 0.0, []
    for v in np.asarray(values, np.float64):
        n += 1
        avg = ((n - 1) * avg + v) / n
        if n == accumulation_size:
            if avg < best - rtol * abs(best) - atol or (np.isinf(best) and avg < best):
                best, plateau = avg, 0
            else:
                plateau += 1
            if cool > 0:
                plateau, cool = 0, cool - 1
            else:
                if plateau == patience:
                    scale, plateau, cool = scale * factor, 0, cooldown
                scale = max(scale, min_scale)
            n, avg = 0, 0.0
        out.append(dict(scale=scale, best_value=best, plateau_count=plateau, cooldown_count=cool))
    return out


ORACLE_CASES = {
    "negative": (-_metric(), dict(factor=0.5, patience=3, rtol=1e-2)),
    "negative_cooldown": (-_metric(), dict(factor=0.3, patience=2, rtol=5e-3, cooldown=2)),
    "crossing_zero": (_metric() - 3.0, dict(factor=0.5, patience=2, rtol=0.05, atol=0.01)),
    "positive": (_metric(), dict(factor=0.5, patience=3, rtol=1e-2, accumulation_size=2)),
}


@pytest.mark.parametrize("case", list(ORACLE_CASES), ids=list(ORACLE_CASES))
def test_plateau_matches_a_numpy_oracle_of_the_documented_rule(case):
    values, kw = ORACLE_CASES[case]
    full = dict(factor=0.1, patience=10, rtol=1e-4, atol=0.0, cooldown=0, accumulation_size=1)
    full.update(min_scale=0.0, **kw)
    ours = _plateau_run(reduce_on_plateau(**full), values)
    want = _oracle(values, **full)
    for i, (a, b) in enumerate(zip(ours, want)):
        np.testing.assert_allclose(a["scale"], b["scale"], rtol=1e-6, err_msg=f"step {i}")
        if np.isfinite(b["best_value"]):  # else gradtx holds float32's largest value
            np.testing.assert_allclose(a["best_value"], b["best_value"], rtol=1e-6)
        assert int(a["plateau_count"]) == b["plateau_count"], f"step {i}"
        assert int(a["cooldown_count"]) == b["cooldown_count"], f"step {i}"
    assert len({round(float(s["scale"]), 9) for s in ours}) >= 3


def test_plateau_reduces_on_a_worsening_negative_metric_where_optax_does_not():
    # optax's test a < (1 - rtol)·b - atol lies above b < 0: a worse value counts as better
    values = np.asarray([-10.0, -9.9, -9.8, -9.7, -9.6, -9.5], np.float32)
    ours = _plateau_run(reduce_on_plateau(factor=0.5, patience=2, rtol=0.1), values)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _plateau_run(
            optax.contrib.reduce_on_plateau(factor=0.5, patience=2, rtol=0.1), values
        )
    assert [float(s["scale"]) for s in ours] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert [float(s["best_value"]) for s in ours] == [-10.0] * 6
    assert [float(s["scale"]) for s in theirs] == [1.0] * 6  # optax: "improving" every step
    np.testing.assert_allclose(float(theirs[-1]["best_value"]), -9.5)


def test_plateau_does_not_retrace_as_the_metric_changes():
    tx = reduce_on_plateau(factor=0.5, patience=2)
    traces = []

    @jax.jit
    def step(tx, state, g, v):
        traces.append(1)
        return tx.update(g, state, PARAMS, value=v)

    state = tx.init(PARAMS)
    for i, v in enumerate(_metric(20)):
        _, state = step(tx, state, _grads(i), v)  # a NumPy float32 scalar, new each step
    _, state = step(tx.replace(factor=0.25, rtol=1e-3), state, _grads(0), np.float32(1.0))
    assert len(traces) == 1
    assert float(state.scale) < 1.0


def test_plateau_inside_a_gradtx_chain_equals_optax_chain():
    ours = gradtx.chain(gradtx.sgd(0.1), reduce_on_plateau(factor=0.5, patience=2))
    theirs = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(factor=0.5, patience=2))
    s1, s2 = ours.init(PARAMS), theirs.init(PARAMS)
    for i, v in enumerate(_metric(30)):
        g = _grads(i)
        u1, s1 = ours.update(g, s1, PARAMS, value=v)
        with jax.numpy_dtype_promotion("standard"):
            u2, s2 = theirs.update(g, s2, PARAMS, value=v)
        for x, y in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u2)):
            np.testing.assert_allclose(x, y, rtol=1e-7, err_msg=f"step {i}")  # sgd: exact
    assert float(s1.reduce_on_plateau.scale) == float(s2[1].scale) < 1.0


def test_plateau_keeps_low_precision_updates_and_wide_state():
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    tx = reduce_on_plateau(factor=0.5, patience=1)
    state = tx.init(params)
    assert {state[e].dtype for e in ("scale", "best_value", "avg_value")} == {
        jnp.dtype(jnp.float32)
    }
    for v in (2.0, 3.0):
        u, state = tx.update(_grads(0, params), state, params, value=v)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(u))
    assert float(state.scale) == 0.5


def test_plateau_state_checkpoint_round_trip_continues_bit_identically():
    tx = reduce_on_plateau(factor=0.5, patience=2, cooldown=1, accumulation_size=2)
    step = jax.jit(lambda s, g, v: tx.update(g, s, PARAMS, value=v))
    values = _metric(30)
    s = tx.init(PARAMS)
    for i in range(15):  # stops mid-window (15 values, windows of 2)
        _, s = step(s, _grads(i), values[i])
    restored = serialization.from_bytes(tx.init(PARAMS), serialization.to_bytes(s))
    a, b = s, restored
    for i in range(15, 30):
        ua, a = step(a, _grads(i), values[i])
        ub, b = step(b, _grads(i), values[i])
        for x, y in zip(jax.tree_util.tree_leaves((ua, a)), jax.tree_util.tree_leaves((ub, b))):
            np.testing.assert_array_equal(x, y)


def test_plateau_without_value_names_itself_and_the_argument():
    tx = reduce_on_plateau()
    state = tx.init(PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.reduce_on_plateau: .*value"):
        tx.update(PARAMS, state, PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.reduce_on_plateau: value must"):
        tx.update(PARAMS, state, value=jnp.ones(2))
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.reduce_on_plateau: state"):
        tx.update(PARAMS, optax.adam(0.1).init(PARAMS), value=1.0)


@pytest.mark.parametrize(
    "kwargs, error, arg",
    [
        (dict(factor=1.0), ValueError, "factor"),
        (dict(factor=0.0), ValueError, "factor"),
        (dict(factor=lambda step: 0.5), TypeError, "factor"),
        (dict(rtol=0.0, atol=0.0), ValueError, "rtol and atol"),
        (dict(rtol=1.5), ValueError, "rtol"),
        (dict(atol=-1.0), ValueError, "atol"),
        (dict(patience=0), ValueError, "patience"),
        (dict(patience=True), ValueError, "patience"),
        (dict(cooldown=-1), ValueError, "cooldown"),
        (dict(accumulation_size=0), ValueError, "accumulation_size"),
        (dict(accumulation_size=2.5), ValueError, "accumulation_size"),
        (dict(min_scale=-0.1), ValueError, "min_scale"),
    ],
)
def test_plateau_rejects_bad_hyperparameters(kwargs, error, arg):
    with pytest.raises(error, match=rf"gradtx\.reduce_on_plateau: {arg}"):
        reduce_on_plateau(**kwargs)


def test_plateau_is_a_hashable_value_with_optax_signature():
    import inspect  # noqa: PLC0415

    a, b = reduce_on_plateau(patience=3), reduce_on_plateau(patience=3)
    assert a == b and hash(a) == hash(b) and isinstance(a, gradtx.GradientTransformation)
    ours = inspect.signature(reduce_on_plateau).parameters
    theirs = inspect.signature(optax.contrib.reduce_on_plateau).parameters
    assert [(n, p.default) for n, p in ours.items()] == [(n, p.default) for n, p in theirs.items()]


@pytest.mark.parametrize(
    "make",
    [
        lambda: reduce_on_plateau(),
        lambda: reduce_on_plateau(0.5, 1, cooldown=1, accumulation_size=2, min_scale=0.01),
    ],
    ids=["defaults", "all_options"],
)
def test_plateau_passes_the_kit(make):
    report = check_transformation(make(), extra_args={"value": jnp.asarray(1.0)}, strict=True)
    assert report.misses == {} and not report.skipped, str(report)


# --- lookahead --------------------------------------------------------------------------------

# float32. Adam's bias correction: optax computes 1 − βᵗ directly, gradtx as −expm1(t·log β),
# so gradtx.adam and optax.adam differ by up to ~1e-5 relative (tests/test_wrappers.py).
ADAM_RTOL = 3e-5


def _lookahead_run(tx: Any, pair_type: Any, steps: int = 12) -> tuple[list, Any]:
    """``steps`` jitted steps on ``pair_type.init_synced(PARAMS)``: the pairs after each."""

    @jax.jit
    def step(params, state, g):
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    params = pair_type.init_synced(PARAMS)
    state, out = tx.init(params), []
    for i in range(steps):
        params, state = step(params, state, _grads(i))
        out.append(params)
    return out, state


# (gradtx's inner, optax's inner, rtol, atol) for the params. optax's sgd inside both: the same
# float32 rule, but XLA fuses the two jitted programs differently (a multiply-add contracted
# or not), so the params may differ by an ulp: rtol 1e-6. Adam: ADAM_RTOL of an update of size
# ~lr = 0.05 is ~1.5e-6 absolute on a param near 0.
INNERS = {
    "optax_sgd": (
        lambda: optax.sgd(0.1, momentum=0.9),
        lambda: optax.sgd(0.1, momentum=0.9),
        1e-6,
        1e-7,
    ),
    "gradtx_adam": (lambda: gradtx.adam(0.05), lambda: optax.adam(0.05), ADAM_RTOL, 2e-6),
}


@pytest.mark.parametrize("reset_state", [False, True], ids=["keep_state", "reset_state"])
@pytest.mark.parametrize("inner", list(INNERS), ids=list(INNERS))
def test_lookahead_equals_optax(inner, reset_state):
    ours_inner, theirs_inner, rtol, atol = INNERS[inner]
    ours = lookahead(ours_inner(), sync_period=3, slow_step_size=0.5, reset_state=reset_state)
    theirs = optax.lookahead(theirs_inner(), 3, 0.5, reset_state=reset_state)
    a, sa = _lookahead_run(ours, LookaheadParams)
    with jax.numpy_dtype_promotion("standard"):
        b, sb = _lookahead_run(theirs, optax.LookaheadParams)
    for i, (x, y) in enumerate(zip(a, b)):
        assert type(x) is LookaheadParams and type(y) is optax.LookaheadParams
        for half in ("fast", "slow"):
            for u, v in zip(
                jax.tree_util.tree_leaves(getattr(x, half)),
                jax.tree_util.tree_leaves(getattr(y, half)),
            ):
                np.testing.assert_allclose(u, v, rtol=rtol, atol=atol, err_msg=f"step {i} {half}")
        if i % 3 == 2:  # a synchronization: fast == slow, up to rounding (f + u' vs s + α·d)
            for u, v in zip(jax.tree_util.tree_leaves(x.fast), jax.tree_util.tree_leaves(x.slow)):
                np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)
    assert int(sa.steps_since_sync) == int(sb.steps_since_sync) == 0


@pytest.mark.parametrize("reset_state", [False, True], ids=["keep_state", "reset_state"])
def test_lookahead_is_bit_identical_to_optax_op_by_op(reset_state):
    # eagerly (no fusion) the same float32 operations: rtol 0
    ours = lookahead(optax.sgd(0.1, momentum=0.9), 3, 0.5, reset_state=reset_state)
    theirs = optax.lookahead(optax.sgd(0.1, momentum=0.9), 3, 0.5, reset_state=reset_state)
    pa, pb = LookaheadParams.init_synced(PARAMS), optax.LookaheadParams.init_synced(PARAMS)
    sa, sb = ours.init(pa), theirs.init(pb)
    for i in range(12):
        ua, sa = ours.update(_grads(i), sa, pa)
        with jax.numpy_dtype_promotion("standard"):
            ub, sb = theirs.update(_grads(i), sb, pb)
        for x, y in zip(jax.tree_util.tree_leaves(ua), jax.tree_util.tree_leaves(ub)):
            np.testing.assert_array_equal(x, y, err_msg=f"step {i}")
        pa, pb = gradtx.apply_updates(pa, ua), gradtx.apply_updates(pb, ub)
    for x, y in zip(jax.tree_util.tree_leaves(sa.fast_state), jax.tree_util.tree_leaves(sb)):
        np.testing.assert_array_equal(x, y)


def test_lookahead_returns_the_pair_type_it_is_given():
    tx = lookahead(gradtx.sgd(0.1), 2, 0.5)
    for pair_type in (LookaheadParams, optax.LookaheadParams):
        params = pair_type.init_synced(PARAMS)
        u, _ = tx.update(_grads(0), tx.init(params), params)
        assert type(u) is pair_type


def test_lookahead_init_accepts_fast_params_alone():
    tx = lookahead(gradtx.adam(0.1), 2, 0.5)
    a = tx.init(PARAMS)
    b = tx.init(LookaheadParams.init_synced(PARAMS))
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert list(a) == ["fast_state", "steps_since_sync"]


def test_lookahead_reset_state_restarts_the_fast_optimizer_at_each_sync():
    tx = lookahead(gradtx.adam(0.1), 2, 0.5, reset_state=True)
    _, state = _lookahead_run(tx, LookaheadParams, steps=3)
    assert int(state.fast_state.knobs.count) == 1  # reset at step 2, one step since
    _, state = _lookahead_run(tx, LookaheadParams, steps=4)
    fresh = gradtx.adam(0.1).init(PARAMS)
    for x, y in zip(jax.tree_util.tree_leaves(state.fast_state), jax.tree_util.tree_leaves(fresh)):
        np.testing.assert_array_equal(x, y)


def test_lookahead_state_checkpoint_round_trip_continues_bit_identically():
    tx = lookahead(gradtx.adam(0.05), 3, 0.5, reset_state=True)

    @jax.jit
    def step(params, state, g):
        u, state = tx.update(g, state, params)
        return gradtx.apply_updates(params, u), state

    params = LookaheadParams.init_synced(PARAMS)
    state = tx.init(params)
    for i in range(4):  # stops one step past a synchronization
        params, state = step(params, state, _grads(i))
    restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(state))
    pa, sa, pb, sb = params, state, params, restored
    for i in range(4, 10):
        pa, sa = step(pa, sa, _grads(i))
        pb, sb = step(pb, sb, _grads(i))
        for x, y in zip(jax.tree_util.tree_leaves((pa, sa)), jax.tree_util.tree_leaves((pb, sb))):
            np.testing.assert_array_equal(x, y)


def test_hyperparameter_readers_see_through_lookahead():
    sched = gradtx.schedules.linear(1.0, 0.0, 10)
    inner = gradtx.adam(sched)
    tx = lookahead(inner, 3, 0.5)
    _, state = _lookahead_run(tx, LookaheadParams, steps=4)
    assert gradtx.hyperparams(tx, state) == gradtx.hyperparams(inner, state.fast_state)
    np.testing.assert_allclose(float(gradtx.current_learning_rate(tx, state)), 0.6, rtol=1e-6)
    assert tx.views(state) == [(None, inner, state.fast_state)]


def test_lookahead_is_a_hashable_value_whose_step_size_is_traced():
    a, b = lookahead(gradtx.sgd(0.1), 3, 0.5), lookahead(gradtx.sgd(0.1), 3, 0.5)
    assert a == b and hash(a) == hash(b)
    assert lookahead(optax.sgd(0.1), 3, 0.5) != lookahead(optax.sgd(0.1), 3, 0.5)  # new optax fns
    traces = []

    @jax.jit
    def step(tx, params, state, g):
        traces.append(1)
        return tx.update(g, state, params)

    params = LookaheadParams.init_synced(PARAMS)
    state = a.init(params)
    for i, alpha in enumerate((0.5, 0.3, 0.8)):
        _, state = step(a.replace(slow_step_size=alpha), params, state, _grads(i))
    assert len(traces) == 1


def test_lookahead_bad_input_names_lookahead():
    tx = lookahead(gradtx.sgd(0.1), 2, 0.5)
    pair = LookaheadParams.init_synced(PARAMS)
    state = tx.init(pair)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.lookahead: update needs params="):
        tx.update(_grads(0), state, PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.lookahead: update needs params="):
        tx.update(_grads(0), state)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.lookahead"):
        tx.update({"dense": _grads(0)["dense"]}, state, pair)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.lookahead"):
        tx.update(_grads(0), state, LookaheadParams(PARAMS, {"dense": PARAMS["dense"]}))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="gradtx.lookahead: sync_period"):
            lookahead(gradtx.sgd(0.1), bad, 0.5)
    with pytest.raises(ValueError, match="gradtx.lookahead: slow_step_size"):
        lookahead(gradtx.sgd(0.1), 2, 1.5)
    with pytest.raises(TypeError, match="gradtx.lookahead: inner must be a transformation"):
        lookahead(lambda g: g, 2, 0.5)


class _KitView(gradtx.GradientTransformation):
    """``lookahead`` as the kit drives a transformation: the kit's gradients have the params'
    structure (here a LookaheadParams pair), while lookahead's are taken at the fast params
    only, so this passes on their ``fast`` half. Everything else is lookahead's own."""

    name = "lookahead"
    tx: Any = None

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def update(self, updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        return self.tx.update(updates.fast, state, params, **extra)


@pytest.mark.parametrize(
    "make",
    [
        lambda: lookahead(gradtx.adam(1e-3), 2, 0.5),
        lambda: lookahead(gradtx.sgd(0.1, momentum=0.9), 1, 0.8, reset_state=True),
        lambda: lookahead(optax.adam(1e-3), 2, 0.5, reset_state=True),
    ],
    ids=["adam", "sgd_reset_every_step", "optax_inner"],
)
def test_lookahead_passes_the_kit_on_pairs(make, request):
    # The kit makes gradients shaped like the params and runs a plain-tree structure zoo, so it
    # cannot drive lookahead as is; _KitView feeds it the fast half, and the zoo is given as a
    # pair. Sharding of the fast optimizer's slots is checked below (the kit looks for slots
    # shaped like the whole pair).
    tx = _KitView(make())
    pair = LookaheadParams.init_synced(gradtx.testing.default_params())
    checks = [c for c in gradtx.testing.CHECKS if c != "structure"]
    optax_inner = "optax_inner" in request.node.name
    report = check_transformation(tx, pair, checks=checks, strict=not optax_inner)
    # optax.adam itself does not trace under strict promotion (python float ** int32 count)
    assert set(report.misses) <= ({"strict_promotion"} if optax_inner else set()), str(report)
    zoo = LookaheadParams.init_synced(structure_zoo())
    report = check_structure(tx, zoo, zoo=False, strict=True)
    assert report.misses == {}, str(report)


def test_lookahead_fast_slots_follow_the_params_sharding():
    mesh = Mesh(np.array(jax.devices()[:2]), ("x",))
    specs = gradtx.testing.partition_specs(PARAMS, {"x": 2})  # the first even dimension
    params = jax.tree_util.tree_map(
        lambda p, s: jax.device_put(p, NamedSharding(mesh, s)), PARAMS, specs
    )
    pair = LookaheadParams.init_synced(params)
    tx = lookahead(gradtx.adam(0.1), 2, 0.5)
    state = tx.init(pair)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    for i in range(2):
        u, state = step(pair, state, _grads(i))
    for p, m, uf, us in zip(
        jax.tree_util.tree_leaves(params),
        jax.tree_util.tree_leaves(state.fast_state.knobs.mu),
        jax.tree_util.tree_leaves(u.fast),
        jax.tree_util.tree_leaves(u.slow),
    ):
        for x in (m, uf, us):
            assert x.sharding.is_equivalent_to(p.sharding, p.ndim)


def test_lookahead_vmaps_and_traces_abstractly():
    tx = lookahead(gradtx.adam(0.1), 2, 0.5)

    def run(params):
        pair = LookaheadParams.init_synced(params)
        state = tx.init(pair)
        for _ in range(2):
            u, state = tx.update(jax.tree_util.tree_map(jnp.sin, params), state, pair)
            pair = gradtx.apply_updates(pair, u)
        return pair

    batch = jax.tree_util.tree_map(lambda p: jnp.stack([p, 2 * p]), PARAMS)
    got = jax.vmap(run)(batch)
    for k, scale in enumerate((1, 2)):
        want = run(jax.tree_util.tree_map(lambda p, s=scale: s * p, PARAMS))
        for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(x[k], y, rtol=1e-6)
    shapes = jax.eval_shape(run, PARAMS)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(run(PARAMS))
