"""``MultiSteps(..., in_place=True)``: the inner update on every micro-step, its state kept
where each stage computes it, the accumulator reset lazily.

Compared with the ``lax.cond`` form (the default) and with optax's ``MultiSteps`` on the same
gradients; non-emitting micro-steps must leave the inner state bit for bit unchanged; the
compiled step must have no params-sized temporaries (XLA's memory analysis); a checkpoint
taken mid-cycle continues identically.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx


def _params():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(5), jnp.float32),
    }


def _grads(i, params):
    return jax.tree_util.tree_map(lambda p: jnp.sin(p * (i + 1) + i).astype(p.dtype), params)


def _inner():
    sched = gradtx.schedules.warmup_cosine_decay(0.0, 1e-2, 3, 20)
    return gradtx.chain(gradtx.clip_by_global_norm(0.5), gradtx.adamw(sched, weight_decay=0.1))


def _run(tx, steps, apply=gradtx.apply_updates):
    params = _params()
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return apply(p, u), s, u

    out = []
    for i in range(steps):
        params, state, u = step(params, state, _grads(i, params))
        out.append((params, state, u))
    return out


@pytest.mark.parametrize("use_grad_mean", [True, False])
def test_in_place_equals_the_cond_form_and_optax(use_grad_mean):
    k, steps = 3, 10
    fast = _run(gradtx.MultiSteps(_inner(), k, use_grad_mean, in_place=True), steps)
    cond = _run(gradtx.MultiSteps(_inner(), k, use_grad_mean), steps)
    with jax.numpy_dtype_promotion("standard"):
        otx = optax.MultiSteps(
            optax.chain(
                optax.clip_by_global_norm(0.5),
                optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20), weight_decay=0.1),
            ),
            k,
            use_grad_mean=use_grad_mean,
        )
        ref = _run(otx, steps, optax.apply_updates)
    for i, ((pf, sf, uf), (pc, sc, uc), (po, so, _)) in enumerate(zip(fast, cond, ref)):
        # FMA contraction may differ where the select sits in the kernel: float32 rounding
        for a, b in ((pf, pc), (uf, uc), (sf["inner_opt_state"], sc["inner_opt_state"])):
            jax.tree_util.tree_map(
                lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b
            )
        jax.tree_util.tree_map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=3e-5, atol=1e-6), pf, po
        )
        assert int(sf["mini_step"]) == int(sc["mini_step"]) == int(so.mini_step)
        assert int(sf["gradient_step"]) == int(sc["gradient_step"]) == int(so.gradient_step)
        emitted = (i + 1) % k == 0
        assert bool(gradtx.MultiSteps(_inner(), k, in_place=True).has_updated(sf)) == emitted
        if not emitted:  # zero updates, inner state unchanged bit for bit
            jax.tree_util.tree_map(lambda x: np.testing.assert_array_equal(x, 0), uf)
            prev = fast[i - 1][1]["inner_opt_state"] if i else None
            if prev is not None and i % k:
                jax.tree_util.tree_map(np.testing.assert_array_equal, sf["inner_opt_state"], prev)


def test_the_accumulator_is_reset_lazily():
    """After an emitting micro-step the accumulator still holds that cycle's mean (the cond form
    resets it to zeros); the next micro-step starts from its own gradient, so both forms
    accumulate the same values."""
    k = 2
    fast = _run(gradtx.MultiSteps(_inner(), k, in_place=True), 3)
    cond = _run(gradtx.MultiSteps(_inner(), k), 3)
    params = _params()
    mean = jax.tree_util.tree_map(
        lambda a, b: a + (b - a) / 2, _grads(0, params), _grads(1, fast[0][0])
    )
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), fast[1][1]["acc_grads"], mean
    )
    jax.tree_util.tree_map(lambda x: np.testing.assert_array_equal(x, 0), cond[1][1]["acc_grads"])
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, fast[2][1]["acc_grads"], cond[2][1]["acc_grads"]
    )


def test_no_params_sized_temporaries_with_donation():
    shapes = [(256, 256)] * 4 + [(256,)] * 4
    params = [jnp.zeros(s, jnp.float32) for s in shapes]
    grads = [jnp.ones(s, jnp.float32) for s in shapes]
    nbytes = sum(x.size * 4 for x in params)

    def temp(tx):
        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return gradtx.apply_updates(p, u), s

        c = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile()
        return c.memory_analysis().temp_size_in_bytes

    # no more than the inner step's own temporaries (a fraction of the params)
    assert temp(gradtx.MultiSteps(_inner(), 4, in_place=True)) <= temp(_inner()) + 4096
    assert temp(_inner()) < nbytes / 2
    assert temp(gradtx.MultiSteps(_inner(), 4)) > nbytes  # the cond form stores updates


def test_checkpoint_mid_cycle_continues_identically():
    tx = gradtx.MultiSteps(_inner(), 3, in_place=True)
    full = _run(tx, 5)
    params, state, _ = full[1]  # mid-cycle: one micro-step accumulated
    restored = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), state)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    for i in range(2, 5):
        u, restored = step(params, restored, _grads(i, params))
        params = gradtx.apply_updates(params, u)
        jax.tree_util.tree_map(np.testing.assert_array_equal, params, full[i][0])
