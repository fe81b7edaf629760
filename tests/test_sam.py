"""``gradtx.sam``: equal to ``optax.contrib.sam`` in both modes, a NumPy float64 oracle of the
paper's rule, errors, and optax's signature.

Tolerances: with the same optax inner optimizers on both sides the wrapper's arithmetic is the
same float32 operations in another order (``c − p + u`` here, ``c − p + u`` in optax too, but
under ``lax.cond``), so ``rtol=1e-6``; with gradtx's inner optimizers against optax's,
``rtol=2e-5`` (Adam's bias correction is ``-expm1(t·log β)`` here, ``1 − βᵗ`` in optax); the
float64 oracle ``rtol=1e-5`` over 24 calls of a float32 run.
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

STEPS = 20
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(3, 16, 5)), jnp.float32)  # three batches
Y = jnp.asarray(RNG.normal(size=(3, 16, 4)), jnp.float32)
PARAMS = {
    "w": jnp.asarray(0.5 * RNG.normal(size=(5, 4)), jnp.float32),
    "b": jnp.zeros(4, jnp.float32),
}


def _loss(p: Any, i: Any = 0) -> jax.Array:
    pred = jnp.tanh(X[i % 3] @ p["w"] + p["b"][None, :])
    return jnp.mean((pred - Y[i % 3]) ** 2)


_grad = jax.jit(jax.grad(_loss))


def _inners(kind: str) -> tuple[Any, Any]:
    """(optimizer, adversarial optimizer): gradtx's or optax's, SAM's standard pair."""
    if kind == "gradtx":
        adv = gradtx.chain(gradtx.normalize_by_update_norm(eps=0.0), gradtx.sgd(0.05))
        return gradtx.sgd(0.05, momentum=0.9), adv
    return optax.sgd(0.05, momentum=0.9), optax.chain(optax.contrib.normalize(), optax.sgd(0.05))


def _run(tx: Any, opaque: bool, promotion: str, steps: int = STEPS) -> tuple[list, list, Any]:
    """Updates and params after each jitted call (gradients at the params each side holds)."""
    kw = {"grad_fn": jax.grad(_loss)} if opaque else {}
    with jax.numpy_dtype_promotion(promotion):
        step = jax.jit(lambda g, s, p: tx.update(g, s, p, **kw))
        params, state = PARAMS, tx.init(PARAMS)
        ups, path = [], []
        for _ in range(steps):
            u, state = step(_grad(params), state, params)
            params = jax.tree_util.tree_map(lambda p, x: p + x, params, u)
            ups.append(u)
            path.append(params)
    return ups, path, state


CASES = [
    ("transparent_k2", "gradtx", dict(sync_period=2)),
    ("transparent_k3_keep_state", "optax", dict(sync_period=3, reset_state=False)),
    ("transparent_k1", "optax", dict(sync_period=1)),
    ("opaque_k3", "gradtx", dict(sync_period=3, opaque_mode=True)),
    ("opaque_k2_keep_state", "optax", dict(sync_period=2, opaque_mode=True, reset_state=False)),
]


@pytest.mark.parametrize("case, inner, kw", CASES, ids=[c[0] for c in CASES])
def test_sam_equals_optax(case, inner, kw):
    """gradtx.sam around gradtx's (or optax's) inner optimizers against optax.contrib.sam around
    optax's, each side taking the gradients at its own params."""
    opaque = kw.get("opaque_mode", False)
    promotion = "strict" if inner == "gradtx" else "standard"  # optax's inners need standard
    ours, path_a, sa = _run(gradtx.sam(*_inners(inner), **kw), opaque, promotion)
    theirs, path_b, sb = _run(optax.contrib.sam(*_inners("optax"), **kw), opaque, "standard")
    # a real step's c − p + o cancels (|c − p| ≈ 0.05): a few ulps of it, absolute
    rtol, atol = 1e-5, 1e-7
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for k in b:
            assert a[k].dtype == jnp.float32
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=f"{case} {i}")
    assert int(sa.steps_since_sync) == int(sb.steps_since_sync)
    if opaque:
        assert sa.cache is None and sb.cache is None
    else:
        for k in PARAMS:
            np.testing.assert_allclose(sa.cache[k], sb.cache[k], rtol=rtol, atol=atol)
    # the run moved: the loss went down over the real steps
    assert float(_loss(path_a[-1])) < 0.97 * float(_loss(PARAMS))


def test_sam_matches_a_numpy_oracle_of_the_paper():
    """SGD(η) from θ with the gradient at θ + ρ∇L/‖∇L‖ (sync_period 2) on a quadratic, against a
    float64 loop of the paper's rule; the params after each real step (every second call)."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    hess = a @ a.T / 6 + 0.5 * np.eye(6)
    b = rng.normal(size=6)
    theta = rng.normal(size=6)
    eta, rho = 0.1, 0.05
    f = lambda w: 0.5 * w @ jnp.asarray(hess, jnp.float32) @ w - jnp.asarray(b, jnp.float32) @ w  # noqa: E731
    adv = gradtx.chain(gradtx.normalize_by_update_norm(eps=0.0), gradtx.sgd(rho))
    tx = gradtx.sam(gradtx.sgd(eta), adv)
    step = jax.jit(tx.update)
    w = jnp.asarray(theta, jnp.float32)
    state = tx.init(w)
    ref = theta.copy()
    for t in range(STEPS):
        u, state = step(jax.grad(f)(w), state, w)
        w = w + u
        if t % 2 == 0:  # after the adversarial call: the ascent point of the oracle
            g = hess @ ref - b
            np.testing.assert_allclose(w, ref + rho * g / np.linalg.norm(g), rtol=1e-5)
        else:
            g = hess @ ref - b
            adv_point = ref + rho * g / np.linalg.norm(g)
            ref = ref - eta * (hess @ adv_point - b)
            np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")
    assert np.linalg.norm(hess @ ref - b) < 0.5 * np.linalg.norm(hess @ theta - b)


def test_sam_transparent_runs_one_branch_per_call():
    """Under lax.cond the outer optimizer's update is not computed on adversarial calls: a
    NaN it would make there does not reach the updates (optax mixes both as c·a + (1 − c)·b)."""
    bomb = gradtx.GradientTransformation(
        lambda p: (), lambda u, s, p=None: (jax.tree_util.tree_map(lambda x: x * jnp.nan, u), s)
    )
    tx = gradtx.sam(bomb, gradtx.sgd(0.1))
    u, state = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(u))
    assert int(state.steps_since_sync) == 1


def test_sam_passes_extra_arguments_and_declares_grad_fn():
    seen = []

    def update(u, s, p=None, *, token=None):
        seen.append(token)
        return u, s

    probe = gradtx.GradientTransformation(lambda p: (), update)
    tx = gradtx.sam(probe, probe, sync_period=1)
    tx.update(PARAMS, tx.init(PARAMS), PARAMS, token="x")
    assert seen == ["x"]
    assert gradtx.sam(probe, probe).requires == ()
    assert gradtx.sam(probe, probe, opaque_mode=True).requires == ("grad_fn",)
    line = gradtx.sam(gradtx.lbfgs(), probe)  # an inner's declared arguments are SAM's too
    assert line.requires == ("value_fn",)


def test_sam_bad_input_names_sam():
    adv = gradtx.sgd(0.1)
    with pytest.raises(ValueError, match=r"gradtx\.sam: sync_period must be an int >= 1"):
        gradtx.sam(gradtx.sgd(0.1), adv, sync_period=0)
    with pytest.raises(TypeError, match=r"gradtx\.sam: adv_optimizer must be a transformation"):
        gradtx.sam(gradtx.sgd(0.1), "sgd")
    tx = gradtx.sam(gradtx.sgd(0.1), adv, opaque_mode=True)
    state = tx.init(PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.sam: opaque_mode=True needs"):
        tx.update(PARAMS, state, PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.sam: update needs params"):
        tx.update(PARAMS, state)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.sam: state is not"):
        tx.update(PARAMS, (), PARAMS)


def test_sam_has_optax_signature():
    ours = inspect.signature(gradtx.sam).parameters
    theirs = inspect.signature(optax.contrib.sam).parameters
    assert list(ours) == list(theirs)
    for name, p in theirs.items():
        assert ours[name].default == p.default, name
        assert ours[name].kind == p.kind, name


def test_sam_readers_see_both_optimizers():
    tx = gradtx.sam(gradtx.adam(gradtx.schedules.linear(0.1, 0.0, 10)), gradtx.sgd(0.05))
    state = tx.init(PARAMS)
    step = jax.jit(tx.update)
    for _ in range(4):
        _, state = step(PARAMS, state, PARAMS)
    lrs = gradtx.current_learning_rate(tx, state)
    # two real steps of the outer optimizer were taken: η = 0.1·(1 − 2/10)
    assert float(lrs["optimizer"]) == pytest.approx(0.08)
    assert float(lrs["adv_optimizer"]) == pytest.approx(0.05)
