"""``gradtx.sophia`` and its estimators: equal to ``optax.contrib.sophia`` (the same Hutchinson
draws), a NumPy float64 oracle on a quadratic whose Hessian is known, the estimators' rules,
convergence, errors and optax's signature.

Tolerances: against optax ``rtol=1e-5`` (bias corrections ``-expm1(t·log β)`` here,
``1 − βᵗ`` in optax, a few float32 ulps); the float64 oracle ``rtol=1e-5`` with ``atol=1e-7``
over 25 float32 steps (Hutchinson's estimate is exact for a diagonal Hessian, so the oracle is
deterministic).
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

optax = pytest.importorskip("optax")

STEPS = 25
RNG = np.random.default_rng(0)
_A = RNG.normal(size=(6, 6))
DENSE = jnp.asarray(_A @ _A.T / 6 + 0.3 * np.eye(6), jnp.float32)


def _loss(p: Any) -> jax.Array:
    """A non-quadratic objective with a dense Hessian (Hutchinson's estimate is noisy)."""
    w = p["w"].reshape(-1)
    return 0.5 * w @ DENSE @ w + 0.05 * jnp.sum(w**4) + jnp.sum(jnp.cosh(0.5 * p["b"]))


PARAMS = {
    "w": jnp.asarray(RNG.normal(size=(2, 3)), jnp.float32),
    "b": jnp.asarray(RNG.normal(size=(4,)), jnp.float32),
}
_grad = jax.jit(jax.grad(_loss))


def _run(tx: Any, promotion: str, steps: int = STEPS, loss: Any = _loss) -> tuple[list, Any]:
    grad = _grad if loss is _loss else jax.jit(jax.grad(loss))
    with jax.numpy_dtype_promotion(promotion):
        step = jax.jit(lambda g, s, p: tx.update(g, s, p, obj_fn=loss))
        params, state, ups = PARAMS, tx.init(PARAMS), []
        for _ in range(steps):
            u, state = step(grad(params), state, params)
            params = jax.tree_util.tree_map(lambda p, x: p + x, params, u)
            ups.append(u)
    return ups, state


def test_sophia_equals_optax():
    """A dense, non-quadratic Hessian: the estimates are noisy, and equal only with optax's
    draws (the same key splits)."""
    case = "interval_3_decay_mask"
    kw = dict(
        gamma=0.05, update_interval=3, weight_decay=0.01, weight_decay_mask={"w": True, "b": False}
    )
    ours, sa = _run(gradtx.sophia(0.05, **kw), "strict")
    theirs, sb = _run(optax.contrib.sophia(0.05, **kw), "standard")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for k in b:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7, err_msg=f"{case} {i}")
    o = sb[0]
    for k in PARAMS:
        np.testing.assert_allclose(sa.knobs.nu[k], o.nu[k], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(sa.knobs.mu[k], o.mu[k], rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(sa.knobs.hessian_fn_state.key, o.hessian_fn_state.key)
    assert int(sa.knobs.count) == int(o.count) == STEPS


def _oracle(a, c, theta, lr, b1, b2, eps, wd, gamma, rho, k, steps):
    """Sophia's documented rule in float64 for f(θ) = ½ Σ aᵢθᵢ² + cᵀθ (Hessian diag(a))."""
    m, h, out = np.zeros_like(theta), np.zeros_like(theta), []
    for t in range(1, steps + 1):
        g = a * theta + c
        m = b1 * m + (1 - b1) * g
        u = (m / (1 - b1**t)) / np.maximum(gamma * h, eps)
        if rho is not None:
            u = np.clip(u, -rho, rho)
        if (t - 1) % k == 0:
            h = b2 * h + (1 - b2) * a  # Hutchinson: u ⊙ (diag(a) u) = a exactly
        step = -lr * (u + wd * theta)
        theta = theta + step
        out.append((step, np.abs(u) < (np.inf if rho is None else rho)))
    return out


ORACLE = {
    "clipped_interval_4": dict(lr=0.1, b1=0.9, b2=0.8, eps=1e-8, wd=0.01, gamma=0.4, rho=1.0, k=4),
    # no clipping: the first step divides by ε (h = 0), so η is tiny and ε large
    "unclipped_interval_1": dict(
        lr=1e-3, b1=0.8, b2=0.5, eps=0.5, wd=0.0, gamma=2.0, rho=None, k=1
    ),
}


@pytest.mark.parametrize("case", list(ORACLE))
def test_sophia_matches_a_numpy_oracle(case):
    hp = ORACLE[case]
    a = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 0.25])
    c = np.array([0.3, -0.2, 0.5, -1.0, 0.1, 0.05])
    theta0 = np.array([1.0, -2.0, 0.5, 1.5, -0.5, 3.0])
    a32, c32 = jnp.asarray(a, jnp.float32), jnp.asarray(c, jnp.float32)
    loss = lambda p: 0.5 * jnp.sum(a32 * p**2) + c32 @ p  # noqa: E731
    tx = gradtx.sophia(
        hp["lr"],
        hp["b1"],
        hp["b2"],
        hp["eps"],
        hp["wd"],
        gamma=hp["gamma"],
        clip_threshold=hp["rho"],
        update_interval=hp["k"],
    )
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, obj_fn=loss))
    grad = jax.jit(jax.grad(loss))
    w = jnp.asarray(theta0, jnp.float32)
    state = tx.init(w)
    unclipped = 0
    for t, (want, inside) in enumerate(_oracle(a, c, theta0, steps=STEPS, **hp), 1):
        u, state = step(grad(w), state, w)
        np.testing.assert_allclose(u, want, rtol=1e-5, atol=1e-7, err_msg=f"step {t}")
        w = w + u
        unclipped += int(inside.sum())
    refreshes = len(range(0, STEPS, hp["k"]))
    np.testing.assert_allclose(state.knobs.nu, (1 - hp["b2"] ** refreshes) * a, rtol=1e-5)
    if hp["rho"] is not None:  # both regimes ran: clipped (h = 0 at first) and not
        assert 0 < unclipped < STEPS * a.size


def test_hutchinson_is_unbiased():
    """The mean of 512 draws of u ⊙ (H u) is diag(H) within 4 standard errors (the error of a
    coordinate is Σ_{j≠i} H_ij u_i u_j, of variance Σ_{j≠i} H_ij²)."""
    tx = gradtx.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(3))
    f = lambda p: 0.5 * p @ DENSE @ p  # noqa: E731
    w = jnp.zeros(6, jnp.float32)

    def draw(state, _):
        h, state = tx.update(w, state, w, obj_fn=f)
        return state, h

    _, hs = jax.lax.scan(draw, tx.init(w), None, length=512)
    dense = np.asarray(DENSE, np.float64)
    sd = np.sqrt((dense**2).sum(1) - np.diag(dense) ** 2) / np.sqrt(512)
    assert np.all(np.abs(np.asarray(hs).mean(0) - np.diag(dense)) < 4 * sd)
    assert np.asarray(hs).std(0).min() > 0.1  # the draws do vary


def test_gnb_estimator_feeds_the_curvature():
    """With Sophia-G the first refresh stores (1 − β2)·B·ĝ², ĝ the gradient of obj_fn."""
    est = gradtx.gnb_estimator_diag_hessian(batch_size=8)
    tx = gradtx.sophia(0.1, b2=0.9, hessian_diagonal_fn=est)
    sampled = lambda p: jnp.sum(jnp.sin(p["w"])) + jnp.sum(p["b"] ** 2)  # noqa: E731
    _, state = jax.jit(lambda: tx.update(PARAMS, tx.init(PARAMS), PARAMS, obj_fn=sampled))()
    g = jax.grad(sampled)(PARAMS)
    for k in PARAMS:
        np.testing.assert_allclose(state.knobs.nu[k], 0.1 * 8 * g[k] ** 2, rtol=1e-6)


def test_sophia_converges_on_an_ill_conditioned_problem():
    """Curvatures from 1 to 100: Sophia's defaults (η = 0.02) take the loss below 1e-4 of its
    start in 400 steps (measured: 3e-6)."""
    scales = jnp.asarray(np.geomspace(1.0, 100.0, 8), jnp.float32)
    loss = lambda p: 0.5 * jnp.sum(scales * p**2)  # noqa: E731
    tx = gradtx.sophia(0.02, weight_decay=0.0)

    def body(carry, _):
        w, s = carry
        u, s = tx.update(jax.grad(loss)(w), s, w, obj_fn=loss)
        return (w + u, s), None

    w0 = jnp.ones(8, jnp.float32)
    (w, _), _ = jax.jit(lambda w: jax.lax.scan(body, (w, tx.init(w)), None, length=400))(w0)
    assert float(loss(w)) < 1e-4 * float(loss(w0))


def test_sophia_needs_obj_fn():
    tx = gradtx.sophia(0.1)
    state = tx.init(PARAMS)
    assert tx.stages[0].requires == ("obj_fn",)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.sophia \(knobs\).*obj_fn"):
        tx.update(PARAMS, state, PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.sophia \(knobs\).*params"):
        tx.update(PARAMS, state, obj_fn=_loss)
    with pytest.raises(ValueError, match=r"gradtx\.sophia \(knobs\): update_interval"):
        gradtx.sophia(0.1, update_interval=0)
    with pytest.raises(ValueError, match=r"gradtx\.sophia \(sophia_scale\): gamma"):
        gradtx.sophia(0.1, gamma=-1.0)
    est = gradtx.hutchinson_estimator_diag_hessian()
    with pytest.raises(gradtx.TransformError, match=r"hutchinson_estimator_diag_hessian.*obj_fn"):
        est.update(PARAMS, est.init(PARAMS), PARAMS)
    with pytest.raises(TypeError, match=r"random_seed must be"):
        gradtx.hutchinson_estimator_diag_hessian("seed")
    z = {"w": jnp.ones(2, jnp.complex64)}
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.sophia \(knobs\): at \['w'\]"):
        tx.update(z, tx.init(z), z, obj_fn=lambda p: jnp.sum(jnp.abs(p["w"])))


def test_sophia_has_optax_signature():
    for ours, theirs in (
        (gradtx.sophia, optax.contrib.sophia),
        (gradtx.hutchinson_estimator_diag_hessian, optax.contrib.hutchinson_estimator_diag_hessian),
    ):
        a, b = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
        assert list(a) == list(b)
        for name, p in b.items():
            if name != "hessian_diagonal_fn":  # optax's default is its own Hutchinson estimator
                assert a[name].default == p.default, name
    default = inspect.signature(gradtx.sophia).parameters["hessian_diagonal_fn"].default
    assert default == gradtx.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(0))


def test_sophia_accepts_optax_estimators_and_keys():
    """optax's estimator inside gradtx's Sophia, and gradtx's estimator from a typed key: the
    same draws as optax's estimator (and so the same curvature)."""
    theirs = optax.contrib.hutchinson_estimator_diag_hessian()
    ours = gradtx.hutchinson_estimator_diag_hessian(jax.random.key(0))
    tx = gradtx.sophia(0.05, update_interval=1, hessian_diagonal_fn=theirs)

    @jax.jit
    def run():
        with jax.numpy_dtype_promotion("standard"):
            h_theirs, s_theirs = theirs.update(PARAMS, theirs.init(PARAMS), PARAMS, obj_fn=_loss)
            _, state = tx.update(PARAMS, tx.init(PARAMS), PARAMS, obj_fn=_loss)
        h_ours, s_ours = ours.update(PARAMS, ours.init(PARAMS), PARAMS, obj_fn=_loss)
        return h_theirs, s_theirs.key, state.knobs.nu, h_ours, s_ours.key

    h_theirs, k_theirs, nu, h_ours, k_ours = run()
    np.testing.assert_array_equal(k_ours, k_theirs)
    for k in PARAMS:
        np.testing.assert_allclose(h_ours[k], h_theirs[k], rtol=1e-6)
        # (1 − β2) in float32 is 0.01 to 1e-6
        np.testing.assert_allclose(nu[k], 0.01 * h_ours[k], rtol=1e-5)
