"""Wrappers with optax's names: equal to optax's on the same inputs, and hardened.

``masked``, ``freeze``, ``partition``/``multi_transform`` and ``apply_if_finite`` against
``optax.<name>`` (updates over several jitted steps, counters, which leaves hold state), with
gradtx and optax inner transformations, inside each other's chains, through a msgpack
checkpoint mid-run, and on bad input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import gradtx

PARAMS = {
    "dense": {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.1, 0.4, 4)},
    "head": {"w": jnp.linspace(0.5, -0.5, 8).reshape(4, 2), "b": jnp.zeros(2)},
}
MASK = {"dense": {"w": True, "b": False}, "head": {"w": True, "b": False}}
PREFIX = {"dense": True, "head": False}  # a prefix of the params' tree
# float32. Adam's bias correction: optax computes 1 − βᵗ directly (4.7e-5 relative error for
# β2 = 0.999 at t = 1), gradtx as −expm1(t·log β) (CHANGELOG), so Adam's updates differ by up
# to ~1e-5 relative; everything else in these wrappers is exact.
RTOL = 3e-5


def _grads(i: int, nan_at: tuple[int, ...] = ()) -> dict:
    key = jax.random.PRNGKey(i)
    leaves, treedef = jax.tree_util.tree_flatten(PARAMS)
    keys = jax.random.split(key, len(leaves))
    g = [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    if i in nan_at:
        g[0] = g[0].at[(0,) * g[0].ndim].set(jnp.nan)
    return jax.tree_util.tree_unflatten(treedef, g)


def _run(tx, steps: int = 6, nan_at: tuple[int, ...] = ()) -> tuple[list, object]:
    """``steps`` jitted steps; anything holding optax runs under standard dtype promotion
    (optax is not written for the strict promotion this suite runs gradtx under)."""
    if "Foreign(" in repr(tx) or not isinstance(tx, gradtx.GradientTransformation):
        with jax.numpy_dtype_promotion("standard"):
            return _run_strict(tx, steps, nan_at)
    return _run_strict(tx, steps, nan_at)


def _run_strict(tx, steps: int, nan_at: tuple[int, ...]) -> tuple[list, object]:
    @jax.jit
    def step(params, state, g):
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state, u

    params, state, out = PARAMS, tx.init(PARAMS), []
    for i in range(steps):
        params, state, u = step(params, state, _grads(i, nan_at))
        out.append(u)
    return out, state


def _assert_runs_equal(a: list, b: list) -> None:
    for i, (x, y) in enumerate(zip(a, b)):
        for (path, u), v in zip(
            jax.tree_util.tree_leaves_with_path(x), jax.tree_util.tree_leaves(y)
        ):
            np.testing.assert_allclose(
                u, v, rtol=RTOL, atol=1e-7, err_msg=f"step {i} {jax.tree_util.keystr(path)}"
            )


# --- masked -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask",
    [MASK, PREFIX, lambda p: jax.tree_util.tree_map(lambda x: x.ndim == 2, p)],
    ids=["tree", "prefix", "callable"],
)
def test_masked_equals_optax(mask):
    ours, _ = _run(gradtx.masked(gradtx.adam(0.1), mask))
    theirs, _ = _run(optax.masked(optax.adam(0.1), mask))
    _assert_runs_equal(ours, theirs)


def test_masked_keeps_no_state_for_masked_out_leaves():
    state = gradtx.masked(gradtx.adam(0.1), MASK).init(PARAMS)
    mu = state.inner_state.knobs.mu
    assert mu["dense"]["b"] is None and mu["head"]["b"] is None
    assert mu["dense"]["w"].shape == (3, 4)


def test_masked_passes_masked_out_updates_through_unchanged():
    updates, _ = _run(gradtx.masked(gradtx.adam(0.1), MASK), steps=2)
    for i, u in enumerate(updates):
        np.testing.assert_array_equal(u["dense"]["b"], _grads(i)["dense"]["b"])


def test_masked_with_an_optax_inner_equals_optax():
    ours, _ = _run(gradtx.masked(optax.adam(0.1), MASK))
    theirs, _ = _run(optax.masked(optax.adam(0.1), MASK))
    _assert_runs_equal(ours, theirs)


def test_masked_inside_optax_chain_and_optax_masked_inside_gradtx_chain():
    ours, _ = _run(
        optax.chain(gradtx.masked(gradtx.add_decayed_weights(0.1), MASK), optax.sgd(0.1))
    )
    mixed, _ = _run(
        gradtx.chain(optax.masked(optax.add_decayed_weights(0.1), MASK), gradtx.sgd(0.1))
    )
    theirs, _ = _run(
        optax.chain(optax.masked(optax.add_decayed_weights(0.1), MASK), optax.sgd(0.1))
    )
    _assert_runs_equal(ours, theirs)
    _assert_runs_equal(mixed, theirs)


def test_masked_extra_args_are_masked_when_asked():
    seen = {}

    def init(params):
        return ()

    def update(updates, state, params=None, *, tags=None):
        seen["tags"] = tags
        return updates, state

    inner = optax.GradientTransformationExtraArgs(init, update)
    tags = jax.tree_util.tree_map(lambda _: 1, PARAMS)
    for compatible, want_none in ((True, True), (False, False)):
        tx = gradtx.masked(inner, MASK, mask_compatible_extra_args=compatible)
        tx.update(PARAMS, tx.init(PARAMS), tags=tags)
        assert (seen["tags"]["dense"]["b"] is None) is want_none


# --- freeze -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [MASK, PREFIX, True, False], ids=["tree", "prefix", "all", "none"])
def test_freeze_equals_optax(mask):
    ours, _ = _run(gradtx.chain(gradtx.freeze(mask), gradtx.sgd(0.1)))
    theirs, _ = _run(optax.chain(optax.freeze(mask), optax.sgd(0.1)))
    _assert_runs_equal(ours, theirs)


def test_frozen_leaves_get_exact_zeros():
    updates, _ = _run(gradtx.chain(gradtx.freeze(PREFIX), gradtx.adam(0.1)), steps=3)
    for u in updates:
        for x in jax.tree_util.tree_leaves(u["dense"]):
            assert np.all(np.asarray(x) == 0.0)
        assert all(np.any(np.asarray(x) != 0.0) for x in jax.tree_util.tree_leaves(u["head"]))


# --- partition / multi_transform ------------------------------------------------------------


def _labels(params):
    return jax.tree_util.tree_map(lambda x: "matrix" if x.ndim == 2 else "vector", params)


@pytest.mark.parametrize("name", ["partition", "multi_transform"])
def test_partition_equals_optax(name):
    ours = getattr(gradtx, name)(
        {"matrix": gradtx.adamw(0.1), "vector": gradtx.sgd(0.05, 0.9)}, _labels
    )
    theirs = getattr(optax, name)(
        {"matrix": optax.adamw(0.1), "vector": optax.sgd(0.05, 0.9)}, _labels
    )
    a, state = _run(ours)
    b, _ = _run(theirs)
    _assert_runs_equal(a, b)
    assert list(state.inner_states) == ["matrix", "vector"]
    # each group's state holds only its own leaves
    mu = state.inner_states["matrix"].inner_state.knobs.mu
    assert mu["dense"]["b"] is None and mu["dense"]["w"].shape == (3, 4)


def test_partition_with_label_tree_prefix_and_non_string_labels():
    labels = {"dense": 0, "head": 1}
    ours, state = _run(gradtx.partition({0: gradtx.adam(0.1), 1: gradtx.set_to_zero()}, labels))
    theirs, _ = _run(optax.partition({0: optax.adam(0.1), 1: optax.set_to_zero()}, labels))
    _assert_runs_equal(ours, theirs)
    assert list(state.inner_states) == ["0", "1"]  # keyed by repr for non-string labels


def test_partition_names_labels_without_a_transformation():
    tx = gradtx.partition({"matrix": gradtx.adam(0.1)}, _labels)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.partition.*'vector' at .*\['b'\]"):
        tx.init(PARAMS)


def test_partition_rejects_a_non_mapping():
    with pytest.raises(TypeError, match="gradtx.partition: transforms must be a mapping"):
        gradtx.partition([gradtx.adam(0.1)], _labels)


# --- apply_if_finite --------------------------------------------------------------------------


@pytest.mark.parametrize("max_errors", [0, 2])
def test_apply_if_finite_equals_optax_with_nans_at_chosen_steps(max_errors):
    nan_at = (1, 3, 4, 5, 6, 8)  # one alone, a run of four, one alone
    ours, s1 = _run(gradtx.apply_if_finite(gradtx.adam(0.1), max_errors), steps=10, nan_at=nan_at)
    theirs, s2 = _run(optax.apply_if_finite(optax.adam(0.1), max_errors), steps=10, nan_at=nan_at)
    for i, (x, y) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(
            np.asarray(x["head"]["w"]), np.asarray(y["head"]["w"]), rtol=RTOL, err_msg=f"step {i}"
        )
        assert (
            np.isnan(np.asarray(x["dense"]["w"])).any()
            == np.isnan(np.asarray(y["dense"]["w"])).any()
        )
    assert int(s1.notfinite_count) == int(s2.notfinite_count)
    assert int(s1.total_notfinite) == int(s2.total_notfinite) == len(nan_at)
    assert bool(s1.last_finite) == bool(s2.last_finite)
    assert int(s1.inner_state.knobs.count) == int(s2.inner_state[0].count)


def test_apply_if_finite_skips_and_resets():
    tx = gradtx.apply_if_finite(gradtx.sgd(1.0), max_consecutive_errors=1)
    state = tx.init(PARAMS)
    bad, good = _grads(0, nan_at=(0,)), _grads(1)
    u, state = tx.update(bad, state)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(u))
    assert int(state.notfinite_count) == 1 and not bool(state.last_finite)
    u, state = tx.update(bad, state)  # the second in a row is past the limit: applied
    assert np.isnan(np.asarray(u["dense"]["b"])).any() and int(state.notfinite_count) == 2
    u, state = tx.update(good, state)
    assert int(state.notfinite_count) == 0 and bool(state.last_finite)
    assert int(state.total_notfinite) == 2


def test_apply_if_finite_rejects_a_bad_limit():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="gradtx.apply_if_finite: max_consecutive_errors"):
            gradtx.apply_if_finite(gradtx.sgd(0.1), bad)


# --- shared properties ----------------------------------------------------------------------


def _wrappers():
    return [
        gradtx.masked(gradtx.adam(0.1), MASK),
        gradtx.freeze(MASK),
        gradtx.partition({"matrix": gradtx.adam(0.1), "vector": gradtx.sgd(0.1)}, _labels),
        gradtx.apply_if_finite(gradtx.adam(0.1), 3),
        gradtx.MultiSteps(gradtx.adam(0.1), 3),
    ]


@pytest.mark.parametrize("i", range(5))
def test_wrappers_are_hashable_values_and_trace_once(i):
    a, b = _wrappers()[i], _wrappers()[i]
    assert a == b and hash(a) == hash(b)
    traces = []

    @jax.jit
    def step(tx, g, s):
        traces.append(1)
        return tx.update(g, s, PARAMS)

    s = a.init(PARAMS)
    _, s = step(a, _grads(0), s)
    _, s = step(b, _grads(1), s)
    assert len(traces) == 1


@pytest.mark.parametrize("i", range(5))
def test_wrapper_state_msgpack_round_trip_continues_bit_identically(i):
    tx = _wrappers()[i]
    step = jax.jit(lambda g, s: tx.update(g, s, PARAMS))
    s = tx.init(PARAMS)
    for k in range(2):
        _, s = step(_grads(k, nan_at=(1,)), s)
    restored = serialization.from_bytes(tx.init(PARAMS), serialization.to_bytes(s))
    u1, s1 = step(_grads(5), s)
    u2, s2 = step(_grads(5), restored)
    for x, y in zip(jax.tree_util.tree_leaves((u1, s1)), jax.tree_util.tree_leaves((u2, s2))):
        np.testing.assert_array_equal(x, y)
    assert jax.tree_util.tree_structure(s1) == jax.tree_util.tree_structure(s2)


@pytest.mark.parametrize("i", range(5))
def test_wrappers_name_themselves_on_bad_trees(i):
    tx = _wrappers()[i]
    state = tx.init(PARAMS)
    wrong = {"dense": PARAMS["dense"]}
    with pytest.raises(gradtx.TransformError, match=rf"gradtx\.{tx.name}"):
        tx.update(wrong, state, PARAMS)


def test_masked_mask_that_does_not_fit_names_masked():
    tx = gradtx.masked(gradtx.adam(0.1), {"dense": True, "other": False})
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.masked: mask does not match"):
        tx.init(PARAMS)


def test_inner_must_be_a_transformation():
    with pytest.raises(TypeError, match="gradtx.masked: inner must be a transformation"):
        gradtx.masked(lambda g: g, MASK)
    with pytest.raises(TypeError, match="gradtx.apply_if_finite: inner must be a transformation"):
        gradtx.apply_if_finite(3, 1)


def test_wrapped_hyperparameters_stay_traceable():
    # the inner gradtx transformation is a pytree child: vmap over its learning rate
    def run(lr):
        tx = gradtx.masked(gradtx.sgd(lr), MASK)
        u, _ = tx.update(_grads(0), tx.init(PARAMS))
        return u["dense"]["w"]

    out = jax.vmap(run)(jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(out[1], 2 * out[0], rtol=1e-6)


def _by_rank(p):
    return jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.masked(gradtx.adam(0.1), _by_rank),
        lambda: gradtx.chain(gradtx.freeze(_by_rank), gradtx.adam(0.1)),
        lambda: gradtx.partition(
            {"a": gradtx.adam(0.1), "s": gradtx.sgd(0.1, momentum=0.9)},
            lambda p: jax.tree_util.tree_map(lambda x: "a" if x.ndim >= 2 else "s", p),
        ),
        lambda: gradtx.groups(
            gradtx.adamw(0.1, weight_decay=0.1),
            [gradtx.group("no_decay", gradtx.no_decay, weight_decay=0.0, lr_mult=0.5)],
        ),
    ],
    ids=["masked", "freeze", "partition", "groups"],
)
def test_wrapper_masks_on_packed_trees_equal_the_per_leaf_run(make):
    # pack(params, tx=tx) keeps each buffer on one side of every wrapper's mask or labels,
    # which the wrappers then read on the logical tree: three jitted steps equal the
    # per-leaf ones (float32 rounding of the packed reductions: rtol 1e-6).
    tx = make()
    packed = gradtx.pack(PARAMS, threshold=None, tx=tx)
    assert len(packed.layout.groups) >= 2  # the mask splits the small leaves
    s, r = tx.init(packed), tx.init(PARAMS)
    for i in range(3):
        g = _grads(i)
        u, s = jax.jit(tx.update)(gradtx.pack_like(packed, g), s, packed)
        v, r = jax.jit(tx.update)(g, r, PARAMS)
        for a, b in zip(jax.tree_util.tree_leaves(gradtx.unpack(u)), jax.tree_util.tree_leaves(v)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_a_wrapper_mask_across_a_buffer_is_refused_not_misapplied():
    # packed without tx, one buffer holds leaves on both sides of the mask: refused, naming them
    tx = gradtx.masked(gradtx.adam(0.1), _by_rank)
    with pytest.raises(gradtx.TransformError, match="different values to leaves packed"):
        tx.init(gradtx.pack(PARAMS, threshold=None))


def test_apply_if_finite_runs_on_packed_trees():
    packed = gradtx.pack(PARAMS, threshold=None)
    tx = gradtx.apply_if_finite(gradtx.adam(0.1), 1)
    ref = gradtx.apply_if_finite(gradtx.adam(0.1), 1)
    s, r = tx.init(packed), ref.init(PARAMS)
    for i in range(3):
        g = _grads(i, nan_at=(1,))
        u, s = jax.jit(tx.update)(gradtx.pack(g, threshold=None), s, packed)
        v, r = jax.jit(ref.update)(g, r, PARAMS)
        for a, b in zip(jax.tree_util.tree_leaves(gradtx.unpack(u)), jax.tree_util.tree_leaves(v)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    assert int(s.notfinite_count) == int(r.notfinite_count) == 0
    assert int(s.total_notfinite) == 1


# --- MultiSteps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k", [1, 3, lambda step: jnp.where(step < 2, 2, 3)], ids=["k1", "k3", "schedule"]
)
@pytest.mark.parametrize("mean", [True, False], ids=["mean", "sum"])
def test_multi_steps_equals_optax(k, mean):
    ours, s1 = _run(gradtx.MultiSteps(gradtx.adam(0.1), k, mean), steps=10)
    theirs, s2 = _run(
        optax.MultiSteps(optax.adam(0.1), k, mean).gradient_transformation(), steps=10
    )
    _assert_runs_equal(ours, theirs)
    assert int(s1.mini_step) == int(s2.mini_step)
    assert int(s1.gradient_step) == int(s2.gradient_step)
    _assert_runs_equal([s1.acc_grads], [s2.acc_grads])


def test_multi_steps_with_optax_skip_function_equals_optax():
    nan_at = (2, 5)
    ours, s1 = _run(
        gradtx.MultiSteps(gradtx.adam(0.1), 2, should_skip_update_fn=optax.skip_not_finite),
        steps=9,
        nan_at=nan_at,
    )
    theirs, s2 = _run(
        optax.MultiSteps(
            optax.adam(0.1), 2, should_skip_update_fn=optax.skip_not_finite
        ).gradient_transformation(),
        steps=9,
        nan_at=nan_at,
    )
    _assert_runs_equal(ours, theirs)
    assert int(s1.gradient_step) == int(s2.gradient_step) == 3  # (9 - 2 skipped) // 2
    assert int(s1.skip_state["num_not_finite"]) == int(s2.skip_state["num_not_finite"])


@pytest.mark.parametrize(
    "make", [lambda: gradtx.sgd(0.1, 0.9), lambda: gradtx.adam(0.1)], ids=["sgd", "adam"]
)
def test_accumulating_k_micro_batches_equals_one_full_batch(make):
    # The mean of k micro-batch gradients is the full batch's gradient (equal-sized batches).
    k, steps = 4, 3
    acc = gradtx.MultiSteps(make(), k)
    full = make()
    sa, sf = acc.init(PARAMS), full.init(PARAMS)
    pa = pf = PARAMS
    for t in range(steps):
        micro = [_grads(10 * t + j) for j in range(k)]
        for g in micro:
            u, sa = acc.update(g, sa, pa)
            pa = gradtx.apply_updates(pa, u)
        mean = jax.tree_util.tree_map(lambda *x: sum(x) / k, *micro)
        u, sf = full.update(mean, sf, pf)
        pf = gradtx.apply_updates(pf, u)
        for a, b in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pf)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # float32 summation order
    # the inner optimizer's clock advanced once per optimizer step, not per micro-step
    assert int(sa.gradient_step) == steps
    if "count" in sa.inner_opt_state.knobs:  # adam's bias-correction clock
        assert int(sa.inner_opt_state.knobs.count) == steps


def test_multi_steps_has_optax_helpers_and_emits_zeros_between():
    tx = gradtx.MultiSteps(gradtx.sgd(1.0), every_k_schedule=3)
    assert tx.gradient_transformation() is tx and tx.inner_opt == gradtx.sgd(1.0)
    state = tx.init(PARAMS)
    flags = []
    for i in range(6):
        u, state = tx.update(_grads(i), state)
        flags.append(bool(tx.has_updated(state)))
        if not flags[-1]:
            assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(u))
    assert flags == [False, False, True, False, False, True]


def test_multi_steps_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gradtx.multi_steps: every_k_schedule"):
        gradtx.MultiSteps(gradtx.sgd(0.1), 0)
    tx = gradtx.MultiSteps(gradtx.sgd(0.1), 2, should_skip_update_fn=lambda u, s, p: (1.0, ()))
    with pytest.raises(gradtx.TransformError, match="should_skip_update_fn must return"):
        tx.update(PARAMS, tx.init(PARAMS))


def test_multi_steps_accumulator_dtype():
    p16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    assert (
        gradtx.MultiSteps(gradtx.sgd(0.1), 2).init(p16).acc_grads["dense"]["w"].dtype == jnp.float32
    )
    p64 = {"w": np.ones(3, np.float64)}
    with jax.enable_x64(True):
        s = gradtx.MultiSteps(gradtx.sgd(0.1), 2, accumulator_dtype=None).init(
            jax.tree_util.tree_map(jnp.asarray, p64)
        )
        assert s.acc_grads["w"].dtype == jnp.float64


def test_multi_steps_runs_the_inner_update_only_when_it_emits():
    # The module docstring's claim: inner.update runs on emitting micro-steps only (optax's
    # runs it on every micro-step). Counted on the host from inside the compiled step.
    calls = []

    def update(updates, state, params=None):
        jax.debug.callback(lambda: calls.append(1))
        return updates, state

    tx = gradtx.MultiSteps(gradtx.GradientTransformation(lambda p: (), update), 3)
    step = jax.jit(tx.update)
    state = tx.init(PARAMS)
    for i in range(6):
        _, state = step(_grads(i), state)
    jax.effects_barrier()
    assert len(calls) == 2
