"""The static fast paths of ``MultiSteps`` and the parameter averages take no ``lax.cond``.

``MultiSteps(opt, 1)`` (the int) must compute what ``opt`` computes, bit for bit in the same
jitted step, and give the same updates as the general path (k as a function returning 1);
``ema_params``/``swa_params`` with ``start = 0, every = 1`` must equal their ``lax.cond`` path
bit for bit. Bitwise comparisons view the arrays as bytes (so NaN payloads and the sign of
zero count); the only stated exception is a −0.0 gradient element (see
``gradtx._wrappers.accumulation``), compared by value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx
from gradtx._wrappers.averages import EmaParams, SwaParams

PARAMS = [jnp.linspace(-1.0, 1.0, 48).reshape(6, 8), jnp.linspace(0.1, 0.4, 8), jnp.zeros(5)]
STEPS = 5


def _chain() -> gradtx.GradientTransformation:
    sched = gradtx.warmup_cosine_decay_schedule(0.0, 0.1, 2, 20)
    return gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(sched, weight_decay=0.1))


def _grads(i: int, negative_zeros: bool = False) -> list:
    keys = jax.random.split(jax.random.PRNGKey(i), len(PARAMS))
    g = [jax.random.normal(k, x.shape) for k, x in zip(keys, PARAMS)]
    if negative_zeros:  # a few -0.0 elements (and a whole -0.0 leaf)
        g[0] = g[0].at[0, :3].set(-0.0)
        g[2] = jnp.full_like(g[2], -0.0)
    return g


def _run(tx, negative_zeros=False, apply=True):
    """Jitted steps; the updates of each step, the final params and state."""

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return u, (gradtx.apply_updates(p, u) if apply else p), s

    step = jax.jit(step)
    params, state, us = PARAMS, tx.init(PARAMS), []
    for i in range(STEPS):
        u, params, state = step(params, state, _grads(i, negative_zeros))
        if not apply:
            params = gradtx.apply_updates(params, u)
        us.append(u)
    return us, params, state


def _assert_bitwise(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        x, y = np.atleast_1d(np.asarray(x)), np.atleast_1d(np.asarray(y))
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


def _conds(tx) -> int:
    """The ``lax.cond`` (``stablehlo.case``) ops in ``tx.update``'s lowering."""
    text = jax.jit(tx.update).lower(_grads(0), tx.init(PARAMS), PARAMS).as_text()
    return text.count("stablehlo.case")


@pytest.mark.parametrize("negative_zeros", [False, True], ids=["random", "negative_zeros"])
def test_multi_steps_k1_is_the_inner_step_bit_for_bit(negative_zeros):
    us, params, state = _run(gradtx.MultiSteps(_chain(), 1), negative_zeros)
    want_us, want_params, want_state = _run(_chain(), negative_zeros)
    _assert_bitwise([us, params, state.inner_opt_state], [want_us, want_params, want_state])
    assert int(state.mini_step) == 0 and int(state.gradient_step) == STEPS
    assert all(not np.any(np.asarray(a)) for a in state.acc_grads)  # never written


def test_multi_steps_k1_equals_the_general_path():
    # k as a function returning 1 takes the general path (a lax.cond on every call)
    fast, general = gradtx.MultiSteps(_chain(), 1), gradtx.MultiSteps(_chain(), lambda s: 1)
    own = _conds(_chain())  # the schedule's
    assert _conds(fast) == own and _conds(general) == own + 1
    # the updates of jitted update calls (applied outside): bit for bit
    _assert_bitwise(_run(fast, apply=False), _run(general, apply=False))
    # a -0.0 gradient element reaches the inner as -0.0 (general path: 0 + g = +0.0): equal
    # by value
    a, b = _run(fast, True, apply=False), _run(general, True, apply=False)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_multi_steps_k1_with_a_skip_function_equals_general_path_and_optax():
    def run(tx):
        params, state, us = PARAMS, tx.init(PARAMS), []
        with jax.numpy_dtype_promotion("standard"):  # optax's adam and skip_not_finite
            step = jax.jit(tx.update)
            for i in range(STEPS):
                g = _grads(i)
                if i == 2:  # skipped
                    g[1] = g[1].at[0].set(jnp.nan)
                u, state = step(g, state, params)
                params = optax.apply_updates(params, u)
                us.append(u)
        return us, params, int(state.gradient_step)

    skip = {"should_skip_update_fn": optax.skip_not_finite}
    fast = gradtx.MultiSteps(gradtx.adam(0.1), 1, **skip)
    general = gradtx.MultiSteps(gradtx.adam(0.1), lambda s: 1, **skip)
    theirs = optax.MultiSteps(optax.adam(0.1), 1, **skip).gradient_transformation()
    with jax.numpy_dtype_promotion("standard"):
        assert _conds(fast) == 1 and _conds(general) == 2  # the skip test; and the emit test
    ours = run(fast)
    _assert_bitwise(ours, run(general))
    us, params, n = run(theirs)
    assert ours[2] == n == STEPS - 1
    assert all(not np.any(np.asarray(x)) for x in ours[0][2])  # the skipped step
    for x, y in zip(ours[1], params):  # the two adams' rounding: ~3e-5 of a 0.1 step
        np.testing.assert_allclose(x, y, rtol=3e-5, atol=1e-5)


def test_multi_steps_without_skip_function_branches_only_to_emit():
    assert _conds(gradtx.MultiSteps(gradtx.sgd(0.1), 2)) == 1  # the emit test only
    assert _conds(gradtx.MultiSteps(gradtx.sgd(0.1), 1)) == 0


class _EmaCond(EmaParams):
    def _every_update(self) -> bool:  # force the lax.cond path
        return False


class _SwaCond(SwaParams):
    def _every_update(self) -> bool:
        return False


@pytest.mark.parametrize(
    "fast, cond",
    [
        (gradtx.ema_params(_chain(), 0.9), _EmaCond(_chain(), 0, 1, None, 0.9, False)),
        (
            gradtx.ema_params(_chain(), 0.9, debias=True, dtype=jnp.float32),
            _EmaCond(_chain(), 0, 1, jnp.float32, 0.9, True),
        ),
        (gradtx.swa_params(_chain()), _SwaCond(_chain(), 0, 1, None)),
    ],
    ids=["ema", "ema_debias", "swa"],
)
def test_average_every_update_path_equals_the_cond_path(fast, cond):
    own = _conds(_chain())
    assert _conds(fast) == own and _conds(cond) == own + 1
    assert _conds(gradtx.ema_params(gradtx.sgd(0.1), 0.9)) == 0
    assert _conds(gradtx.ema_params(gradtx.sgd(0.1), 0.9, every=2)) == 1
    assert _conds(gradtx.swa_params(gradtx.sgd(0.1), start=1)) == 1
    _assert_bitwise(_run(fast), _run(cond))  # in a step that applies the updates


def test_fast_paths_fall_back_where_a_rounding_could_be_fused_away():
    # bfloat16 params: the average reads θ rounded to bfloat16 through the branch's operand
    p16 = [x.astype(jnp.bfloat16) for x in PARAMS]
    text = jax.jit(gradtx.ema_params(gradtx.sgd(0.1), 0.9, dtype=jnp.float32).update).lower(
        p16, gradtx.ema_params(gradtx.sgd(0.1), 0.9, dtype=jnp.float32).init(p16), p16
    )
    assert text.as_text().count("stablehlo.case") == 1
    # a bfloat16 accumulator of float32 gradients rounds them: the general path
    assert _conds(gradtx.MultiSteps(gradtx.sgd(0.1), 1, accumulator_dtype=jnp.bfloat16)) == 1
