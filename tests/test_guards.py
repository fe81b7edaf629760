"""The step-skipping guards ``skip_nonfinite`` and ``skip_spikes``, and ``skip_counts``.

Oracles: ``skip_nonfinite`` against ``optax.apply_if_finite`` (same updates, same give-up
step); both guards against their inner transformation run on the accepted steps only (a
skipped step must leave no trace); a NumPy float64 loop of ``skip_spikes``' rule over a
scripted sequence with spikes, a NaN and an inf (decisions, counters and the float32 ring
buffer bit for bit); the conformance kit; msgpack checkpoints mid-run; jit trace counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import gradtx
from gradtx._wrappers.counts import find_guards, skip_counts
from gradtx._wrappers.guard import SkipNonfinite, SkipSpikes, skip_nonfinite, skip_spikes
from gradtx._wrappers.loss_scale import dynamic_loss_scale

PARAMS = {
    "dense": {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.1, 0.4, 4)},
    "head": {"w": jnp.linspace(0.5, -0.5, 8).reshape(4, 2), "b": jnp.zeros(2)},
}


def _grads(i: int, nan_at: tuple[int, ...] = (), scale: float = 1.0) -> dict:
    leaves, treedef = jax.tree_util.tree_flatten(PARAMS)
    keys = jax.random.split(jax.random.PRNGKey(i), len(leaves))
    g = [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    if i in nan_at:
        g[0] = g[0].at[(0,) * g[0].ndim].set(jnp.nan)
    return jax.tree_util.tree_unflatten(treedef, g)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _is_zero(tree) -> bool:
    return all(np.all(x == 0) for x in _leaves(tree))


def _run(tx, grads: list, extras: list | None = None, standard: bool = False):
    """Jitted steps over ``grads``: (updates of each step, states after each step)."""
    extras = extras or [{}] * len(grads)

    @jax.jit
    def step(s, g, ex):
        return tx.update(g, s, PARAMS, **ex)

    def go():
        s, us, ss = tx.init(PARAMS), [], []
        for g, ex in zip(grads, extras):
            u, s = step(s, g, ex)
            us.append(u)
            ss.append(s)
        return us, ss

    if standard:  # optax is not written for the strict promotion of this suite
        with jax.numpy_dtype_promotion("standard"):
            return go()
    return go()


# The conformance kit runs on skip_nonfinite and skip_spikes (armed within its steps: window 3,
# warmup 1) through tests/kit_cases.py.


# --- skip_nonfinite ---------------------------------------------------------------------------

NAN_AT = (1, 3, 4, 5, 6, 8)  # one alone, a run of four, one alone


@pytest.mark.parametrize("limit", [0, 2])
@pytest.mark.parametrize("inner", ["gradtx_sgd", "gradtx_adam", "optax_adam"])
def test_skip_nonfinite_equals_optax_apply_if_finite(inner, limit):
    make = {
        "gradtx_sgd": lambda: gradtx.sgd(0.1),
        "gradtx_adam": lambda: gradtx.adam(0.1),
        "optax_adam": lambda: optax.adam(0.1),
    }[inner]
    grads = [_grads(i, NAN_AT) for i in range(10)]
    ours, states = _run(skip_nonfinite(make(), limit), grads, standard=True)
    theirs, optax_states = _run(optax.apply_if_finite(make(), limit), grads, standard=True)
    for i, (x, y) in enumerate(zip(ours, theirs)):
        for a, b in zip(_leaves(x), _leaves(y)):
            # the same inner computation on the same steps: equal up to XLA's fusion choices
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=f"step {i}")
    want = _nonfinite_oracle([i not in NAN_AT for i in range(10)], limit)
    for u, s, o, (applied, skipped, run, steps, gave_up) in zip(ours, states, optax_states, want):
        assert (not _is_zero(u)) == applied
        assert int(s.consecutive) == int(o.notfinite_count) == run
        assert (int(s.skipped), int(s.steps), bool(s.gave_up)) == (skipped, steps, gave_up)
    assert bool(states[-1].gave_up)  # both limits are below the run of four


def _nonfinite_oracle(finite: list[bool], limit: int | None) -> list[tuple]:
    """The documented rule as a Python loop: (applied, skipped, consecutive, steps, gave_up)."""
    out, skipped, run, steps, gave_up = [], 0, 0, 0, False
    for ok in finite:
        run = 0 if ok else run + 1
        give_up = not ok and limit is not None and run > limit
        gave_up = gave_up or give_up
        applied = ok or give_up
        skipped += not applied
        steps += applied
        out.append((applied, skipped, run, steps, gave_up))
    return out


@pytest.mark.parametrize("limit", [None, 0, 1, 3])
def test_skip_nonfinite_counters_follow_the_rule(limit):
    finite = [True, False, False, True, False, False, False, True, True, False]
    grads = [_grads(i, () if ok else (i,)) for i, ok in enumerate(finite)]
    updates, states = _run(skip_nonfinite(gradtx.sgd(1.0), limit), grads)
    for i, (want, u, s) in enumerate(zip(_nonfinite_oracle(finite, limit), updates, states)):
        applied, skipped, run, steps, gave_up = want
        got = (not _is_zero(u), int(s.skipped), int(s.consecutive), int(s.steps), bool(s.gave_up))
        assert got == want, f"step {i}"
        if applied:
            np.testing.assert_array_equal(_leaves(u)[1], -_leaves(grads[i])[1])  # rtol 0
    if limit == 1:  # gave up on the run of three, then re-armed: step 9 is skipped again
        assert bool(states[-1].gave_up) and int(states[-1].consecutive) == 1
        assert _is_zero(updates[9])


def test_skip_nonfinite_reads_the_loss_when_given():
    tx = skip_nonfinite(gradtx.adam(0.1))
    grads = [_grads(i) for i in range(4)]
    losses = [1.0, float("nan"), float("inf"), 0.5]
    extras = [{"loss": jnp.float32(v)} for v in losses]
    updates, states = _run(tx, grads, extras)
    assert [_is_zero(u) for u in updates] == [False, True, True, False]
    assert int(states[-1].skipped) == 2 and int(states[-1].steps) == 2
    # the inner state advanced only on the two finite steps: the same as adam on those alone
    ref, _ = _run(gradtx.adam(0.1), [grads[0], grads[3]])
    for a, b in zip(_leaves(updates[3]), _leaves(ref[1])):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # the same computation, fused otherwise
    assert int(states[-1].inner_state.knobs.count) == 2


def test_skip_nonfinite_rejects_a_bad_limit_and_inner():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="gradtx.skip_nonfinite: max_consecutive_skips"):
            skip_nonfinite(gradtx.sgd(0.1), bad)
    with pytest.raises(TypeError, match="gradtx.skip_nonfinite: inner must be a transformation"):
        skip_nonfinite(3)


# --- skip_spikes ------------------------------------------------------------------------------

# A scripted metric: noise around 1, spikes at 12 and 20, a NaN and an inf, a lasting level
# change at the end (skipped for as long as it lasts), a run long enough to wrap the window.
SCRIPT = [1.0, 1.2, 0.9, 1.1, 1.0, 0.95, 1.05, 1.3, 0.8, 1.0, 1.1, 0.9, 9.0, 1.0, 1.15, 0.85]
SCRIPT += [1.2, float("nan"), 1.0, float("inf"), 40.0, 1.1, 0.9, 1.05, 1.0, 0.7, 6.0, 6.5, 7.0]
WINDOW, K, WARMUP = 6, 3.0, 4


def _spikes_oracle(xs: list[float]) -> tuple[list[bool], np.ndarray, int]:
    """The documented rule in float64 over the float32-rounded values: (accepted per step,
    the ring buffer, the count of accepted values)."""
    ring, count, accepted = np.zeros(WINDOW, np.float32), 0, []
    for x in np.asarray(xs, np.float32):
        n = min(count, WINDOW)
        held = ring[:n].astype(np.float64)
        mean = held.mean() if n else 0.0
        std = np.sqrt(np.mean((held - mean) ** 2)) if n else 0.0
        limit = mean + K * std
        if count >= WARMUP and np.isfinite(x):  # no decision may sit on the edge
            assert abs(float(x) - limit) > 1e-3 * max(limit, 1.0), (x, limit)
        ok = bool(np.isfinite(x)) and not (count >= WARMUP and float(x) > limit)
        if ok:
            ring[count % WINDOW] = x
            count += 1
        accepted.append(ok)
    return accepted, ring, count


def _norm_grads(x: float) -> dict:
    """A gradient tree whose global norm is exactly float32(x): x in one element."""
    g = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
    g["head"]["w"] = g["head"]["w"].at[1, 0].set(jnp.float32(x))
    return g


@pytest.mark.parametrize("metric", ["loss", "grad_norm"])
def test_skip_spikes_equals_the_numpy_rule(metric):
    tx = skip_spikes(gradtx.sgd(1.0), window=WINDOW, k=K, warmup=WARMUP, metric=metric)
    if metric == "loss":
        grads = [_grads(i) for i in range(len(SCRIPT))]
        extras = [{"loss": jnp.float32(x)} for x in SCRIPT]
    else:
        grads, extras = [_norm_grads(x) for x in SCRIPT], None
    updates, states = _run(tx, grads, extras)
    accepted, ring, count = _spikes_oracle(SCRIPT)
    assert [not _is_zero(u) for u in updates] == accepted
    assert accepted[12] is False and accepted[20] is False and accepted[-3:] == [False] * 3
    for i, (u, g) in enumerate(zip(updates, grads)):
        if accepted[i]:
            for a, b in zip(_leaves(u), _leaves(g)):
                np.testing.assert_array_equal(a, -b)  # rtol 0: sgd(1.0) negates
    last = states[-1]
    np.testing.assert_array_equal(np.asarray(last.window), ring)  # bit for bit
    assert int(last.count) == count == int(last.steps)
    assert int(last.skipped) == len(SCRIPT) - count
    assert int(last.consecutive) == 3  # the level change at the end


def test_skip_spikes_keeps_the_inner_state_on_skipped_steps():
    grads = [_norm_grads(x) for x in SCRIPT]
    accepted, _, _ = _spikes_oracle(SCRIPT)
    tx = skip_spikes(optax.adam(0.1), window=WINDOW, k=K, warmup=WARMUP)
    ours, _ = _run(tx, grads, standard=True)
    kept = [g for g, ok in zip(grads, accepted) if ok]
    ref, _ = _run(optax.adam(0.1), kept, standard=True)
    got = [u for u, ok in zip(ours, accepted) if ok]
    for i, (x, y) in enumerate(zip(got, ref)):
        for a, b in zip(_leaves(x), _leaves(y)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=f"accepted step {i}")


def test_skip_spikes_skips_nonfinite_updates_with_a_finite_loss():
    tx = skip_spikes(gradtx.sgd(1.0), metric="loss")
    u, s = tx.update(_grads(0, nan_at=(0,)), tx.init(PARAMS), loss=jnp.float32(1.0))
    assert _is_zero(u) and int(s.skipped) == 1 and int(s.count) == 0


def test_skip_spikes_bad_input_is_named():
    tx = skip_spikes(gradtx.sgd(0.1), metric="loss")
    state = tx.init(PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.skip_spikes: metric='loss' needs"):
        tx.update(_grads(0), state, PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.skip_spikes: loss must be a scalar"):
        tx.update(_grads(0), state, PARAMS, loss=jnp.ones(2))
    for kwargs, what in [
        ({"window": 1}, "window"),
        ({"warmup": 0}, "warmup"),
        ({"window": 2.0}, "window"),
        ({"metric": "lr"}, "metric"),
        ({"k": -1.0}, "k"),
    ]:
        with pytest.raises(ValueError, match=rf"gradtx\.skip_spikes: {what}"):
            skip_spikes(gradtx.sgd(0.1), **kwargs)
    with pytest.raises(TypeError, match=r"gradtx\.skip_spikes: k must be a number"):
        skip_spikes(gradtx.sgd(0.1), k=lambda step: 3.0)
    assert tx.requires == ("loss",) and skip_spikes(gradtx.sgd(0.1)).requires == ()


# --- shared properties ------------------------------------------------------------------------


def _guards():
    return [
        skip_nonfinite(gradtx.adam(0.1), 2),
        skip_spikes(gradtx.adam(0.1), window=4, k=2.0, warmup=2),
        skip_spikes(gradtx.adam(0.1), window=4, k=2.0, warmup=2, metric="loss"),
    ]


def _step_args(i: int, tx) -> tuple[dict, dict]:
    scale = 50.0 if i == 4 else 1.0  # a spike at step 4
    extra = {"loss": jnp.float32(scale)} if getattr(tx, "requires", ()) else {}
    return _grads(i, nan_at=(2,), scale=scale), extra


@pytest.mark.parametrize("i", range(3))
def test_guard_state_msgpack_round_trip_continues_bit_identically(i):
    tx = _guards()[i]
    step = jax.jit(lambda g, s, ex: tx.update(g, s, PARAMS, **ex))
    s = tx.init(PARAMS)
    for k in range(5):
        g, ex = _step_args(k, tx)
        _, s = step(g, s, ex)
    assert int(s.skipped) >= 1
    restored = serialization.from_bytes(tx.init(PARAMS), serialization.to_bytes(s))
    a, b = s, restored
    for k in range(5, 9):
        g, ex = _step_args(k, tx)
        u1, a = step(g, a, ex)
        u2, b = step(g, b, ex)
        for x, y in zip(_leaves((u1, a)), _leaves((u2, b))):
            np.testing.assert_array_equal(x, y)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


@pytest.mark.parametrize("i", range(3))
def test_guards_are_values_and_trace_once(i):
    a, b = _guards()[i], _guards()[i]
    assert a == b and hash(a) == hash(b)
    traces = []

    @jax.jit
    def step(tx, g, s, ex):
        traces.append(1)
        return tx.update(g, s, PARAMS, **ex)

    # a changed hyperparameter (the inner learning rate; skip_spikes' k) is a traced leaf
    c = a.replace(inner=gradtx.adam(0.05))
    if isinstance(a, SkipSpikes):
        c = c.replace(k=4.0)
    s = a.init(PARAMS)
    for i, tx in enumerate([a, b, c]):
        g, ex = _step_args(i, tx)
        _, s = step(tx, g, s, ex)
    assert len(traces) == 1


@pytest.mark.parametrize("i", range(3))
def test_guards_name_themselves_on_bad_trees_and_states(i):
    tx = _guards()[i]
    g, ex = _step_args(0, tx)
    with pytest.raises(gradtx.TransformError, match=rf"gradtx\.{tx.name}"):
        tx.update({"dense": g["dense"]}, tx.init(PARAMS), PARAMS, **ex)
    with pytest.raises(gradtx.TransformError, match=rf"gradtx\.{tx.name}: state is not"):
        tx.update(g, gradtx.adam(0.1).init(PARAMS), PARAMS, **ex)


def test_guards_show_their_inner_and_run_on_packed_trees():
    tx = skip_nonfinite(gradtx.adam(0.1))
    state = tx.init(PARAMS)
    assert tx.views(state) == [(None, tx.inner, state.inner_state)]
    packed = gradtx.pack(PARAMS, threshold=None)
    for guard in (tx, skip_spikes(gradtx.adam(0.1))):
        s, r = guard.init(packed), guard.init(PARAMS)
        for i in range(3):
            g = _grads(i, nan_at=(1,))
            u, s = jax.jit(guard.update)(gradtx.pack(g, threshold=None), s, packed)
            v, r = jax.jit(guard.update)(g, r, PARAMS)
            for a, b in zip(_leaves(gradtx.unpack(u)), _leaves(v)):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)  # the norm's sum order
        assert int(s.skipped) == int(r.skipped) >= 1


# --- skip_counts ------------------------------------------------------------------------------


def test_skip_counts_reads_nested_guards_and_multisteps():
    # MultiSteps outside: micro-steps, optimizer steps, and the optimizer steps skipped
    tx = gradtx.MultiSteps(skip_nonfinite(gradtx.adam(0.1)), every_k_schedule=2)
    _, states = _run(tx, [_grads(i, nan_at=(2,)) for i in range(7)])
    counts = skip_counts(states[-1])
    assert {k: int(v) for k, v in counts.items()} == {
        "skipped": 1,  # the optimizer step whose mean held step 2's NaN
        "consecutive": 0,
        "steps": 2,  # three optimizer steps, one skipped
        "gave_up": 0,
        "mini_step": 1,
        "gradient_step": 3,
    }
    # a guard outside: it skips the micro-step, MultiSteps never sees it
    tx = gradtx.chain(skip_nonfinite(gradtx.MultiSteps(gradtx.adam(0.1), every_k_schedule=2)))
    _, states = _run(tx, [_grads(i, nan_at=(2,)) for i in range(7)])
    counts = {k: int(v) for k, v in skip_counts(states[-1]).items()}
    assert counts == {
        "skipped": 1,
        "consecutive": 0,
        "steps": 3,  # MultiSteps' optimizer steps: six micro-steps reached it
        "gave_up": 0,
        "mini_step": 0,
        "gradient_step": 3,
    }


def test_skip_counts_sums_stacked_guards_and_reads_apply_if_finite():
    inner = skip_spikes(gradtx.apply_if_finite(gradtx.sgd(0.1), 5), window=4, warmup=2, k=3.0)
    tx = skip_nonfinite(dynamic_loss_scale(inner, initial_scale=1.0))
    grads = [_norm_grads(x) for x in [1.0, float("nan"), 1.1, 0.9, 1.0, 50.0, 1.0]]
    _, states = _run(tx, grads)
    s = states[-1]
    counts = {k: int(v) for k, v in skip_counts(s).items()}
    # the NaN: skipped by the outer guard; the spike at 5 by skip_spikes; none by the others
    assert int(s.skipped) == 1 and int(s.inner_state.inner_state.skipped) == 1
    assert counts["skipped"] == 2 and counts["steps"] == int(s.inner_state.inner_state.steps)
    assert counts["notfinite"] == 0 and counts["consecutive"] == 0
    # inside jit, and on optax's own states (NamedTuples)
    assert {k: int(v) for k, v in jax.jit(skip_counts)(s).items()} == counts
    o = optax.MultiSteps(optax.apply_if_finite(optax.sgd(0.1), 2), every_k_schedule=2)
    with jax.numpy_dtype_promotion("standard"):
        os_ = o.init(PARAMS)
        for i in range(4):
            _, os_ = o.update(_grads(i, nan_at=(1,)), os_, PARAMS)
    got = {k: int(v) for k, v in skip_counts(os_).items()}
    inner = os_.inner_opt_state
    assert got == {
        "consecutive": int(inner.notfinite_count),
        "steps": 2,
        "mini_step": 0,
        "gradient_step": 2,
        "notfinite": int(inner.total_notfinite),
    }
    assert got["notfinite"] >= 1
    assert [k for _, k, _ in find_guards(os_)] == ["multi_steps", "apply_if_finite"]


def test_skip_counts_without_a_guard_is_an_error():
    with pytest.raises(ValueError, match="gradtx.skip_counts: state holds no"):
        skip_counts(gradtx.adam(0.1).init(PARAMS))


def test_weakly_typed_params_give_strongly_typed_guard_state():
    params = {"w": jnp.full((3, 2), 0.3)}
    assert params["w"].weak_type
    for tx in (skip_nonfinite(gradtx.sgd(0.1)), skip_spikes(gradtx.sgd(0.1))):
        state = tx.init(params)
        assert not any(getattr(x, "weak_type", False) for x in jax.tree_util.tree_leaves(state))
    assert isinstance(skip_nonfinite(gradtx.sgd(0.1)), SkipNonfinite)


def test_accumulation_composes_with_skipping_and_packing():
    """MultiSteps(skip_nonfinite(adam), 2) on a packed tree equals the per-leaf run to float32
    rounding (rtol 1e-6), NaN micro-batch included: the whole optimizer step is skipped, and the
    counters agree."""
    tree = {"a": jnp.linspace(-1.0, 1.0, 6), "b": jnp.ones((2, 3)), "c": jnp.zeros(4)}
    tx = gradtx.MultiSteps(gradtx.skip_nonfinite(gradtx.adam(1e-2)), 2)
    runs = []
    for packed in (False, True):
        params = gradtx.pack(tree, threshold=100) if packed else tree
        assert isinstance(params, gradtx.Packed) == packed  # one buffer of 16 floats
        state = tx.init(params)
        step = jax.jit(tx.update)
        for i in range(8):
            g = jax.tree_util.tree_map(lambda x, i=i: jnp.sin(x + i) + 0.1 * i, tree)
            if i == 3:
                g = {**g, "a": g["a"].at[1].set(jnp.nan)}
            g = gradtx.pack(g, threshold=100) if packed else g
            u, state = step(g, state, params)
            params = gradtx.apply_updates(params, u)
        runs.append((gradtx.unpack(params) if packed else params, gradtx.skip_counts(state)))
    (a, ca), (b, cb) = runs
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    assert {k: int(v) for k, v in ca.items()} == {k: int(v) for k, v in cb.items()}
    assert int(ca["skipped"]) == 1 and int(ca["gradient_step"]) == 4 and int(ca["steps"]) == 3
