"""Complex parameters (issue 9, requirement 4): ``|g|² = g·conj(g)``, as optax.

Every gradtx optimizer and stage whose optax counterpart supports complex parameters is run
against optax on complex64 parameters for ``STEPS`` steps (each side applies its own updates);
tolerance ``rtol=2e-5, atol=1e-6`` on updates of size ~1e-2 (the overflow-safe squares
``(√(1-β)·g)²`` round differently from optax's ``(1-β)·g²``, ~1 ulp per step). State dtypes
match optax's (complex slots with a zero imaginary part). optax does not support complex
Adadelta, Lion, sign SGD or clipping by value (its own tests skip them); gradtx's Adadelta
is checked against a NumPy complex128 oracle instead, and the norm-based stages against the
real-pair oracle (a complex array's norm is the norm of its real and imaginary parts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

optax = pytest.importorskip("optax")

STEPS = 6
SHAPES = {"w": (4, 3), "b": (3,)}
TOL = {"rtol": 2e-5, "atol": 1e-6}
# RAdam's ρ_t − 4 at step 6 is a float32 difference of numbers ~2000, rounded differently by
# gradtx and optax (~1e-2 relative; see test_radam_matches_optax in tests/test_vs_optax.py).
CASE_TOL = {"radam": {"rtol": 3e-2, "atol": 1e-7}}


def _cplx(rng, shape, scale=1.0):
    return jnp.asarray(
        scale * (rng.normal(size=shape) + 1j * rng.normal(size=shape)), jnp.complex64
    )


def _data(seed=0):
    rng = np.random.default_rng(seed)
    params = {k: _cplx(rng, s) for k, s in SHAPES.items()}
    grads = [
        {k: _cplx(rng, s, np.exp(rng.normal(scale=0.5))) for k, s in SHAPES.items()}
        for _ in range(STEPS)
    ]
    return params, grads


def _run(tx, params, grads, standard=False):
    ctx = jax.numpy_dtype_promotion("standard" if standard else "strict")
    with ctx:
        state = tx.init(params)
        out = []
        for g in grads:
            u, state = tx.update(g, state, params)
            params = optax.apply_updates(params, u)
            out.append(u)
    return out, state


# (id, gradtx factory, optax factory), under settings where the two definitions agree (see
# tests/test_vs_optax.py for why each setting is chosen).
CASES = [
    ("sgd_momentum", lambda: gradtx.sgd(0.05, momentum=0.9), lambda: optax.sgd(0.05, 0.9)),
    (
        "adagrad",
        lambda: gradtx.adagrad(0.1, initial_accumulator_value=0.1, eps=0.0),
        lambda: optax.adagrad(0.1, initial_accumulator_value=0.1, eps=0.0),
    ),
    (
        "rmsprop",
        lambda: gradtx.rmsprop(0.01, eps=0.1, eps_in_sqrt=True),
        lambda: optax.rmsprop(0.01, eps=0.1, eps_in_sqrt=True),
    ),
    (
        "rmsprop_centered",
        lambda: gradtx.rmsprop(
            0.01, decay=0.95, initial_scale=0.5, eps_in_sqrt=True, centered=True
        ),
        lambda: optax.rmsprop(0.01, decay=0.95, initial_scale=0.5, eps_in_sqrt=True, centered=True),
    ),
    ("adam", lambda: gradtx.adam(0.01), lambda: optax.adam(0.01)),
    (
        "adam_eps_root",
        lambda: gradtx.adam(0.01, b1=0.8, b2=0.95, eps=0.05, eps_root=0.1),
        lambda: optax.adam(0.01, b1=0.8, b2=0.95, eps=0.05, eps_root=0.1),
    ),
    ("adamw", lambda: gradtx.adamw(0.01), lambda: optax.adamw(0.01)),
    ("nadam", lambda: gradtx.nadam(0.01), lambda: optax.nadam(0.01)),
    ("adamax", lambda: gradtx.adamax(0.01, b1=0.8, b2=0.95), lambda: optax.adamax(0.01, 0.8, 0.95)),
    ("adabelief", lambda: gradtx.adabelief(0.01), lambda: optax.adabelief(0.01)),
    (
        "yogi_zero_init",
        lambda: gradtx.yogi(0.01, initial_accumulator_value=0.0),
        lambda: optax.chain(
            optax.scale_by_yogi(initial_accumulator_value=0.0), optax.scale_by_learning_rate(0.01)
        ),
    ),
    ("radam", lambda: gradtx.radam(0.01), lambda: optax.radam(0.01)),
    ("lamb", lambda: gradtx.lamb(0.01), lambda: optax.lamb(0.01)),
    (
        "lars",
        lambda: gradtx.lars(0.1, weight_decay=1e-2),
        lambda: optax.lars(0.1, weight_decay=1e-2),
    ),
    ("adafactor", lambda: gradtx.adafactor(), lambda: optax.adafactor()),
    (
        "adafactor_factored",
        lambda: gradtx.adafactor(0.1, min_dim_size_to_factor=2, decay_rate=0.7),
        lambda: optax.adafactor(0.1, min_dim_size_to_factor=2, decay_rate=0.7),
    ),
    (
        "clip_by_global_norm",
        lambda: gradtx.clip_by_global_norm(1.0),
        lambda: optax.clip_by_global_norm(1.0),
    ),
    (
        "clip_by_block_rms",
        lambda: gradtx.clip_by_block_rms(0.5),
        lambda: optax.clip_by_block_rms(0.5),
    ),
    (
        "adaptive_grad_clip",
        lambda: gradtx.adaptive_grad_clip(0.05),
        lambda: optax.adaptive_grad_clip(0.05),
    ),
    (
        "add_decayed_weights",
        lambda: gradtx.add_decayed_weights(0.1),
        lambda: optax.add_decayed_weights(0.1),
    ),
    (
        "scale_by_trust_ratio",
        lambda: gradtx.scale_by_trust_ratio(),
        lambda: optax.scale_by_trust_ratio(),
    ),
]


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_complex_vs_optax(name, ours, theirs):
    params, grads = _data()
    a, sa = _run(ours(), params, grads)
    b, sb = _run(theirs(), params, grads, standard=True)
    tol = CASE_TOL.get(name, TOL)
    for step, (ua, ub) in enumerate(zip(a, b), 1):
        for k in SHAPES:
            assert ua[k].dtype == jnp.complex64
            np.testing.assert_allclose(ua[k], ub[k], **tol, err_msg=f"{name} {k} step {step}")
    assert any(float(jnp.max(jnp.abs(jnp.imag(u[k])))) > 1e-4 for u in a for k in SHAPES)
    # Slots as optax keeps them: every inexact state leaf is complex64.
    ours_dtypes = sorted(str(x.dtype) for x in jax.tree.leaves(sa) if x.ndim)
    theirs_dtypes = sorted(str(x.dtype) for x in jax.tree.leaves(sb) if x.ndim)
    assert set(ours_dtypes) <= {"complex64"}
    assert set(ours_dtypes) == set(theirs_dtypes) or not theirs_dtypes


def test_second_moment_has_zero_imaginary_part():
    params, grads = _data(1)
    _, state = _run(gradtx.adam(0.01), params, grads)
    nu = state["knobs"]["nu"] if "knobs" in state else None
    leaves = jax.tree.leaves(nu) if nu is not None else []
    assert leaves
    for x in leaves:
        assert x.dtype == jnp.complex64
        np.testing.assert_array_equal(np.imag(x), 0)
        assert np.all(np.real(x) > 0)


def test_adadelta_complex_vs_numpy():
    """Adadelta with |g|² and |Δ|² (optax's adadelta squares without conjugating and does not
    support complex params): a NumPy complex128 oracle of Zeiler's Algorithm 1, rtol 1e-5."""
    params, grads = _data(2)
    rho, eps, lr = 0.9, 1e-6, 1.0
    ours, _ = _run(gradtx.adadelta(lr, rho=rho, eps=eps), params, grads)
    for k in SHAPES:
        eg = np.zeros(SHAPES[k])
        ex = np.zeros(SHAPES[k])
        for step, g in enumerate(grads):
            g = np.asarray(g[k], np.complex128)
            eg = rho * eg + (1 - rho) * np.abs(g) ** 2
            d = np.sqrt(ex + eps) / np.sqrt(eg + eps) * g
            ex = rho * ex + (1 - rho) * np.abs(d) ** 2
            np.testing.assert_allclose(ours[step][k], -lr * d, rtol=1e-5, atol=1e-9)


def test_global_norm_is_real_pair_norm():
    """The norm of a complex tree equals the norm of its real and imaginary parts (rtol 1e-6)
    and is real float32; clipping a complex tree scales both parts alike."""
    params, grads = _data(3)
    g = grads[0]
    norm = gradtx.global_norm(g)
    assert norm.dtype == jnp.float32
    pairs = [np.concatenate([np.real(x).ravel(), np.imag(x).ravel()]) for x in jax.tree.leaves(g)]
    ref = np.sqrt(sum(np.sum(np.square(p.astype(np.float64))) for p in pairs))
    np.testing.assert_allclose(float(norm), ref, rtol=1e-6)
    tx = gradtx.clip_by_global_norm(1.0)
    u, _ = tx.update(g, tx.init(g))
    for k in SHAPES:
        np.testing.assert_allclose(u[k], np.asarray(g[k]) / ref, rtol=1e-5)


def test_complex128_and_integer_leaves():
    """complex128 works under x64; integer and boolean leaves are still refused clearly."""
    with jax.enable_x64(True):
        p = {"z": jnp.ones(3, jnp.complex128)}
        tx = gradtx.adam(1e-2)
        u, s = tx.update(p, tx.init(p), p)
        assert u["z"].dtype == jnp.complex128
    for bad in (jnp.ones(3, jnp.int32), jnp.ones(3, bool)):
        with pytest.raises(TypeError, match=r"gradtx\.adam.*\['x'\].*floating-point"):
            gradtx.adam(1e-2).init({"x": bad})
