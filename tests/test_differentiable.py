"""Hyperparameters are ordinary traced values: vmap sweeps them, grad differentiates them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

# An ill-conditioned quadratic 0.5 θᵀAθ - bᵀθ with a non-diagonal A (eigenvalues 1 .. 10).
_A = np.array([[10.0, 2.0, 0.0], [2.0, 4.0, 1.0], [0.0, 1.0, 1.0]])
_B = np.array([1.0, -2.0, 0.5])
_THETA0 = np.array([1.0, 1.0, -1.0])


def _loss(params, dtype):
    a, b = jnp.asarray(_A, dtype), jnp.asarray(_B, dtype)
    x = params["x"]
    return 0.5 * x @ (a @ x) - b @ x


def _train(tx, theta0, steps):
    """``steps`` updates of ``tx`` from ``theta0`` in a ``lax.scan``; returns final params."""
    dtype = theta0.dtype
    params = {"x": theta0}

    def body(carry, _):
        params, state = carry
        grads = jax.grad(_loss)(params, dtype)
        updates, state = tx.update(grads, state, params)
        return (gradtx.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params


# --- vmap: a learning-rate sweep in one program ---------------------------------------------


@pytest.mark.parametrize(
    "make",
    [lambda lr: gradtx.adam(lr), lambda lr: gradtx.adamw(lr, b1=0.8, weight_decay=0.1)],
    ids=["adam", "adamw"],
)
def test_vmap_over_learning_rates_matches_separate_runs(make):
    traces = 0
    theta0 = jnp.asarray(_THETA0, jnp.float32)

    def run(lr):
        nonlocal traces
        traces += 1
        return _train(make(lr), theta0, 20)["x"]

    lrs = jnp.array([1e-3, 1e-2, 3e-2, 1e-1], jnp.float32)
    swept = jax.jit(jax.vmap(run))(lrs)
    assert traces == 1  # the whole sweep is one traced, compiled program
    assert swept.shape == (4, 3)
    single = jax.jit(lambda lr: _train(make(lr), theta0, 20)["x"])
    for i in range(len(lrs)):
        np.testing.assert_allclose(swept[i], single(lrs[i]), rtol=1e-5, atol=1e-6)  # rounding
    assert len({tuple(np.round(np.asarray(r), 5)) for r in swept}) == 4


def test_vmap_over_a_knob_hyperparameter():
    theta0 = jnp.asarray(_THETA0, jnp.float32)
    b2s = jnp.array([0.9, 0.99, 0.999], jnp.float32)
    run = lambda b2: _train(gradtx.adam(0.05, b2=b2), theta0, 10)["x"]
    swept, single = jax.jit(jax.vmap(run))(b2s), jax.jit(run)
    for i in range(len(b2s)):
        np.testing.assert_allclose(swept[i], single(b2s[i]), rtol=1e-5, atol=1e-6)


# --- grad: meta-gradients through several steps, checked in float64 ---------------------------


_META_CASES = [
    ("adam", lambda h: gradtx.adam(h[0], b1=h[1]), [0.05, 0.8]),
    ("sgd_momentum", lambda h: gradtx.sgd(h[0], momentum=h[1]), [0.02, 0.7]),
    ("nesterov", lambda h: gradtx.sgd(h[0], momentum=h[1], nesterov=True), [0.02, 0.7]),
]


@pytest.mark.parametrize("make, h0", [c[1:] for c in _META_CASES], ids=[c[0] for c in _META_CASES])
def test_grad_through_five_steps_matches_finite_differences(make, h0):
    # Scoped x64 (restored on exit): central differences in float64 have error ~1e-10 here.
    with jax.enable_x64(True):
        theta0 = jnp.asarray(_THETA0, jnp.float64)

        def meta_loss(h):
            return _loss(_train(make(h), theta0, 5), jnp.float64)

        h = jnp.asarray(h0, jnp.float64)
        grad = jax.jit(jax.grad(meta_loss))(h)
        meta_loss = jax.jit(meta_loss)
        assert grad.dtype == jnp.float64
        eps = 1e-6
        fd = []
        for i in range(len(h0)):
            e = jnp.zeros_like(h).at[i].set(eps)
            fd.append((meta_loss(h + e) - meta_loss(h - e)) / (2 * eps))
        np.testing.assert_allclose(grad, np.array(fd), rtol=1e-6, atol=1e-9)
        assert np.all(np.abs(np.asarray(grad)) > 1e-3)  # the check is not vacuous
    assert jnp.zeros(()).dtype == jnp.float32  # x64 switched off again


@pytest.mark.parametrize(
    "make",
    [
        lambda h: gradtx.adam(h[0], b1=h[1], b2=h[2]),
        lambda h: gradtx.sgd(h[0], momentum=h[1]),
        lambda h: gradtx.chain(gradtx.clip_by_global_norm(h[2] * 10), gradtx.rmsprop(h[0])),
    ],
    ids=["adam", "sgd_momentum", "clip_rmsprop"],
)
def test_jacrev_equals_jacfwd_through_scan(make):
    # Jacobian of the final parameters w.r.t. the initial ones and the hyperparameters.
    def final(theta0, h):
        return _train(make(h), theta0, 10)["x"]

    theta0 = jnp.asarray(_THETA0, jnp.float32)
    h = jnp.array([0.05, 0.8, 0.95], jnp.float32)
    rev = jax.jit(jax.jacrev(final, argnums=(0, 1)))(theta0, h)
    fwd = jax.jit(jax.jacfwd(final, argnums=(0, 1)))(theta0, h)
    for r, f in zip(rev, fwd):
        assert r.shape == f.shape
        np.testing.assert_allclose(r, f, rtol=1e-4, atol=1e-5)  # float32, 10 chained steps
        assert np.all(np.isfinite(r))
