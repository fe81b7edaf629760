"""Dynamic loss scaling: ``dynamic_loss_scale`` and ``loss_scale_value``.

Oracles: ``torch.amp.GradScaler("cpu")`` driven with the same finite/inf/NaN gradients (the
scale, its growth counter and an SGD trajectory); a NumPy loop of the documented rule (jmp's
``DynamicLossScale.adjust`` with a maximum) at the clamps; the unscaling against NumPy's
float32 division; an actual float16 training loop whose gradients overflow at the initial
scale; the conformance kit; a msgpack checkpoint mid-run; jit trace counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import serialization

import gradtx
from gradtx._wrappers.counts import skip_counts
from gradtx._wrappers.guard import skip_nonfinite
from gradtx._wrappers.loss_scale import DynamicLossScale, dynamic_loss_scale, loss_scale_value
from gradtx.testing import check_transformation

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.zeros(3)}
INF, NAN = float("inf"), float("nan")
# 1: a finite gradient, inf/nan: an overflow. Growth after 3 good steps (growth_interval=3).
PATTERN = [1, 1, INF, 1, 1, 1, 1, 1, 1, NAN, INF, 1, 1, 1, INF, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]


def _grads(i: int, mult: float = 1.0) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(i), 2)
    return {
        "b": mult * jax.random.normal(keys[0], (3,)),
        "w": mult * jax.random.normal(keys[1], (2, 3)),
    }


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize(
    "make",
    [  # the default settings are in the kit's table (tests/kit_cases.py)
        lambda: dynamic_loss_scale(gradtx.sgd(0.1), initial_scale=4.0, growth_interval=1),
    ],
    ids=["growing"],
)
def test_conformance_kit(make):
    report = check_transformation(make(), strict=True)
    assert report.misses == {}, str(report)


# --- torch.amp.GradScaler ---------------------------------------------------------------------


def _torch_run(pattern, init, growth, backoff, interval, lr):
    """GradScaler("cpu") on one float32 parameter; per step (scale after update, growth
    tracker, parameter after step)."""
    p = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 4))
    opt = torch.optim.SGD([p], lr=lr)
    scaler = torch.amp.GradScaler(
        "cpu",
        init_scale=init,
        growth_factor=growth,
        backoff_factor=backoff,
        growth_interval=interval,
    )
    out = []
    for i, c in enumerate(pattern):
        opt.zero_grad()
        scaler.scale((p * (0.5 + 0.1 * i)).sum()).backward()  # grad = (0.5 + 0.1 i)·S
        if c != 1:
            p.grad.fill_(c)  # the overflow of a float16 backward pass
        scaler.step(opt)
        scaler.update()
        out.append(
            (scaler.get_scale(), int(scaler._growth_tracker.item()), p.detach().numpy().copy())
        )
    return out


@pytest.mark.parametrize(
    "growth, backoff", [(2.0, 0.5), (4.0, 0.25), (3.0, 0.3)], ids=["default", "pow2", "other"]
)
def test_scale_sequence_equals_torch_grad_scaler(growth, backoff):
    init, interval, lr = 2.0**10, 3, 0.1
    want = _torch_run(PATTERN, init, growth, backoff, interval, lr)
    tx = dynamic_loss_scale(
        gradtx.sgd(lr),
        initial_scale=init,
        growth_factor=growth,
        backoff_factor=backoff,
        growth_interval=interval,
        min_scale=1e-3,
        max_scale=2.0**40,  # torch has no bounds: out of reach here
    )
    p = jnp.linspace(-1.0, 1.0, 4)
    state = tx.init(p)
    step = jax.jit(tx.update)
    for i, (c, (scale, tracker, torch_p)) in enumerate(zip(PATTERN, want)):
        s = loss_scale_value(state)
        g = jnp.full(4, (0.5 + 0.1 * i), jnp.float32) * s if c == 1 else jnp.full(4, c)
        u, state = step(g, state)
        p = gradtx.apply_updates(p, u)
        # Powers of two are exact; torch multiplies by the factor in float64 before rounding
        # to float32, JAX by the factor rounded to float32: at most 1 ulp apart per step.
        rtol = 0 if growth in (2.0, 4.0) else 1e-6
        np.testing.assert_allclose(float(loss_scale_value(state)), scale, rtol=rtol)
        assert int(state.good_steps) == tracker, f"step {i}"
        # the same SGD steps in float32, rounded in another order: an ulp of |p| ~ 1 apart
        np.testing.assert_allclose(np.asarray(p), torch_p, rtol=1e-6, atol=2e-7, err_msg=f"{i}")
    overflows = sum(c != 1 for c in PATTERN)
    assert int(state.skipped) == overflows and int(state.steps) == len(PATTERN) - overflows


# --- the rule at its clamps (jmp's DynamicLossScale.adjust, with a maximum) ----------------------


def _oracle(finite, init, growth, backoff, interval, lo, hi):
    scale, n, out = np.float32(init), 0, []
    for ok in finite:
        if ok:
            n += 1
            if n == interval:
                scale, n = np.minimum(scale * np.float32(growth), np.float32(hi)), 0
        else:
            scale, n = np.maximum(scale * np.float32(backoff), np.float32(lo)), 0
        out.append((float(scale), n))
    return out


def test_scale_is_clamped_to_min_and_max():
    finite = [False] * 6 + [True] * 14 + [False] + [True] * 3
    kwargs = dict(initial_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2)
    kwargs.update(min_scale=0.5, max_scale=64.0)
    tx = dynamic_loss_scale(gradtx.sgd(0.1), **kwargs)
    want = _oracle(finite, *kwargs.values())
    assert min(s for s, _ in want) == 0.5 and max(s for s, _ in want) == 64.0  # both reached
    state, step = tx.init(PARAMS), jax.jit(tx.update)
    for i, ok in enumerate(finite):
        u, state = step(_grads(i, 1.0 if ok else INF), state)
        assert (float(state.loss_scale), int(state.good_steps)) == want[i], f"step {i}"


# --- unscaling ---------------------------------------------------------------------------------


def test_unscaling_divides_in_float32_and_casts_back():
    g16 = jnp.asarray(np.linspace(-700.0, 700.0, 301), jnp.float16)
    tx = dynamic_loss_scale(gradtx.identity(), initial_scale=3.0)
    u, state = tx.update(g16, tx.init(jnp.zeros(301, jnp.float16)))
    want = (np.asarray(g16, np.float32) / np.float32(3.0)).astype(np.float16)
    assert u.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(u), want)  # rtol 0
    assert int(state.steps) == 1 and int(state.good_steps) == 1


def test_an_unscaled_gradient_that_overflows_float16_is_an_overflow():
    # below 1, the scale enlarges the gradients: 60000 / 0.25 is past float16's 65504
    tx = dynamic_loss_scale(gradtx.sgd(0.1), initial_scale=0.25, min_scale=0.125)
    g = jnp.full(2, 60000.0, jnp.float16)
    u, state = tx.update(g, tx.init(jnp.zeros(2, jnp.float16)))
    assert np.all(np.asarray(u) == 0) and int(state.skipped) == 1
    assert float(state.loss_scale) == 0.125


def test_an_overflow_keeps_the_inner_state():
    finite = [True, False, True, True, False, False, True, True]
    grads = [_grads(i, 1.0 if ok else NAN) for i, ok in enumerate(finite)]
    with jax.numpy_dtype_promotion("standard"):  # optax inside
        tx = dynamic_loss_scale(optax.adam(0.1), initial_scale=1.0, growth_interval=100)
        state, step, ours = tx.init(PARAMS), jax.jit(tx.update), []
        for g in grads:
            u, state = step(g, state)
            ours.append(u)
        ref, theirs = optax.adam(0.1), []
        ref_state = ref.init(PARAMS)
        for g, ok in zip(grads, finite):
            if ok:
                u, ref_state = jax.jit(ref.update)(g, ref_state)
                theirs.append(u)
    got = [u for u, ok in zip(ours, finite) if ok]
    assert all(np.all(x == 0) for u, ok in zip(ours, finite) if not ok for x in _leaves(u))
    for x, y in zip(got, theirs):
        for a, b in zip(_leaves(x), _leaves(y)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)  # scale 1: adam's own steps
    assert int(state.inner_state[0].count) == sum(finite)


# --- a float16 training loop --------------------------------------------------------------------


def test_float16_linear_regression_recovers_from_overflow_and_converges():
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (64, 4)).astype(jnp.float16)
    w_true = (20.0 * jax.random.normal(kw, (4,))).astype(jnp.float16)
    y = (x.astype(jnp.float32) @ w_true.astype(jnp.float32)).astype(jnp.float16)
    tx = dynamic_loss_scale(gradtx.sgd(0.1), growth_interval=25)

    def loss_fn(w):
        err = (x @ w).astype(jnp.float32) - y.astype(jnp.float32)
        return jnp.mean(err * err)

    @jax.jit
    def step(w, state):
        scale = loss_scale_value(state)
        loss, g = jax.value_and_grad(lambda w: loss_fn(w) * scale)(w)
        assert g.dtype == jnp.float16  # the backward pass runs in float16
        u, state = tx.update(g, state, w)
        return gradtx.apply_updates(w, u), state, loss / scale

    w, state = jnp.zeros(4, jnp.float16), tx.init(jnp.zeros(4, jnp.float16))
    first_loss, scales, skipped = float(loss_fn(w)), [], []
    for _ in range(300):
        w, state, _ = step(w, state)
        scales.append(float(state.loss_scale))
        skipped.append(int(state.skipped))
    assert skipped[0] == 1 and scales[0] == 2.0**14  # the first step overflowed
    assert skipped[4] >= 2  # backed off until the gradients fit in float16
    assert int(state.steps) >= 250 and max(scales[100:]) > min(scales[:10])  # grew back
    assert w.dtype == jnp.float16
    final = float(loss_fn(w))
    assert final < 1e-4 * first_loss, (first_loss, final)
    # float16 SGD stalls within a few ulps of the optimum (ulp 1/32 at 32..64)
    np.testing.assert_allclose(np.asarray(w, np.float32), w_true, rtol=2e-3, atol=0.02)


# --- reading the scale, checkpoints, tracing, bad input -----------------------------------------


def test_loss_scale_value_finds_the_scale_in_a_nested_state():
    tx = gradtx.MultiSteps(dynamic_loss_scale(gradtx.adam(0.1), initial_scale=8.0), 2)
    state = tx.init(PARAMS)
    assert float(loss_scale_value(state)) == 8.0
    assert float(jax.jit(loss_scale_value)(state)) == 8.0
    chain = gradtx.chain(skip_nonfinite(dynamic_loss_scale(gradtx.sgd(0.1))))
    s = chain.init(PARAMS)
    _, s = chain.update(_grads(0, INF), s)  # the outer guard skips: the scale is kept
    _, s = chain.update(_grads(1, 2.0**15), s)
    assert float(loss_scale_value(s)) == 2.0**15
    assert {k: int(v) for k, v in skip_counts(s).items()} == {
        "skipped": 1,
        "consecutive": 0,
        "steps": 1,
        "gave_up": 0,
    }
    with pytest.raises(ValueError, match="gradtx.loss_scale_value: .* it holds 0"):
        loss_scale_value(gradtx.adam(0.1).init(PARAMS))
    two = gradtx.partition(
        {"a": dynamic_loss_scale(gradtx.sgd(0.1)), "b": dynamic_loss_scale(gradtx.sgd(0.1))},
        {"w": "a", "b": "b"},
    )
    with pytest.raises(ValueError, match="it holds 2"):
        loss_scale_value(two.init(PARAMS))


def test_state_msgpack_round_trip_continues_bit_identically():
    tx = dynamic_loss_scale(gradtx.adam(0.1), initial_scale=2.0**8, growth_interval=2)
    step = jax.jit(tx.update)
    s = tx.init(PARAMS)
    for i, c in enumerate(PATTERN[:5]):
        _, s = step(_grads(i, float(loss_scale_value(s)) * c), s)
    restored = serialization.from_bytes(tx.init(PARAMS), serialization.to_bytes(s))
    a, b = s, restored
    for i, c in enumerate(PATTERN[5:12], start=5):
        g = _grads(i, float(loss_scale_value(a)) * c)
        u1, a = step(g, a)
        u2, b = step(g, b)
        for x, y in zip(_leaves((u1, a)), _leaves((u2, b))):
            np.testing.assert_array_equal(x, y)
    assert int(a.skipped) == 3
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


def test_is_a_value_and_traces_once():
    a, b = dynamic_loss_scale(gradtx.adam(0.1)), dynamic_loss_scale(gradtx.adam(0.1))
    assert a == b and hash(a) == hash(b) and isinstance(a, DynamicLossScale)
    c = a.replace(backoff_factor=0.25, growth_factor=4.0, max_scale=2.0**20)
    traces = []

    @jax.jit
    def step(tx, g, s):
        traces.append(1)
        return tx.update(g, s, PARAMS)

    s = a.init(PARAMS)
    for i, tx in enumerate([a, b, c, a]):
        _, s = step(tx, _grads(i, INF if i == 2 else 1.0), s)
    assert len(traces) == 1
    assert float(s.loss_scale) == 2.0**13  # c backed off by its own factor, 0.25


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"growth_interval": 0}, "growth_interval must be an int"),
        ({"growth_interval": 2.0}, "growth_interval must be an int"),
        ({"growth_factor": 0.5}, "growth_factor must be >= 1"),
        ({"backoff_factor": 1.5}, "backoff_factor must be in"),
        ({"backoff_factor": 0.0}, "backoff_factor must be > 0"),
        ({"initial_scale": 0.5}, "need min_scale <= initial_scale"),
        ({"max_scale": 1e3}, "need min_scale <= initial_scale <= max_scale"),
        ({"max_scale": 1e39, "initial_scale": 1e38}, "max_scale must be a finite float32"),
        ({"min_scale": float("nan")}, "min_scale must be a finite number"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=rf"gradtx\.dynamic_loss_scale: {match}"):
        dynamic_loss_scale(gradtx.sgd(0.1), **kwargs)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match=r"gradtx\.dynamic_loss_scale: initial_scale must be a"):
        dynamic_loss_scale(gradtx.sgd(0.1), initial_scale=lambda step: 2.0)
    with pytest.raises(TypeError, match=r"gradtx\.dynamic_loss_scale: inner must be"):
        dynamic_loss_scale(None)
    tx = dynamic_loss_scale(gradtx.sgd(0.1))
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.dynamic_loss_scale: state is not"):
        tx.update(_grads(0), gradtx.sgd(0.1).init(PARAMS))
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.dynamic_loss_scale"):
        tx.update({"w": PARAMS["w"]}, tx.init(PARAMS), PARAMS)
