"""gradtx against optax: named optimizers, stages, and each library inside the other's chain.

Each case runs the gradtx transformation and its optax counterpart, both jitted, for ``STEPS``
steps on the same parameters and the same seeded random gradients; each side applies its own
updates to its own copy of the parameters, and the updates are compared at every step. All in
float32; tolerance ``rtol=1e-5, atol=1e-7`` on updates of size ~1e-2 unless a case says why not.

Settings are those under which the two definitions agree. Intentional differences, each stated
in a ``Warning`` of the gradtx docstring, are handled case by case in the comments.

optax is not written for ``jax_numpy_dtype_promotion="strict"`` (e.g. ``scale_by_radam``
multiplies its int32 count by a Python float), so its calls run under "standard" promotion;
gradtx's run under the strict mode that conftest.py sets.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

optax = pytest.importorskip("optax")

STEPS = 20
SHAPES = {"w": (5, 3), "b": (3,), "k": (2, 3, 2)}
TOL = {"rtol": 1e-5, "atol": 1e-7}


def _data(shapes=SHAPES, seed: int = 0, dtype=jnp.float32):
    """Parameters and gradients whose overall scale wanders up and down over the steps."""
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}
    scales = np.exp(rng.normal(scale=0.7, size=STEPS))
    grads = [
        {k: jnp.asarray(c * rng.normal(size=s), dtype) for k, s in shapes.items()} for c in scales
    ]
    return params, grads


def _standard_promotion(tx):
    """``tx`` with its init and update run under standard dtype promotion (see module doc)."""

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update(updates, state, params=None, **extra):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params, **extra)

    return optax.GradientTransformationExtraArgs(init, update)


def _run(tx, params, grads, *, move=True, promotion=None, jit=False):
    """Updates of ``tx`` at every step; params follow the updates if ``move``.

    Eager by default: the per-operation compilations are shared by all the cases, where a
    jitted update costs an XLA compilation per case and side (about 0.5 s each on CPU). The
    chain tests below run jitted.
    """
    ctx = jax.numpy_dtype_promotion(promotion) if promotion else contextlib.nullcontext()
    with ctx:
        state = tx.init(params)
        update = jax.jit(tx.update) if jit else tx.update
        out = []
        for g in grads:
            u, state = update(g, state, params)
            if move:
                params = optax.apply_updates(params, u)
            out.append(u)
    return out


def _compare(ours, theirs, params=None, grads=None, *, move=True, shapes=SHAPES, jit=False, **tol):
    if params is None:
        params, grads = _data(shapes)
    a = _run(ours, params, grads, move=move, jit=jit)
    b = _run(theirs, params, grads, move=move, promotion="standard", jit=jit)
    tol = {**TOL, **tol}
    for step, (ua, ub) in enumerate(zip(a, b), 1):
        for k in shapes:
            assert ua[k].dtype == ub[k].dtype == params[k].dtype
            assert np.all(np.isfinite(ua[k])), f"param {k!r} at step {step}"
            np.testing.assert_allclose(ua[k], ub[k], **tol, err_msg=f"param {k!r} at step {step}")
    # Not vacuous: the updates are not all zero.
    assert any(float(jnp.max(jnp.abs(u[k]))) > 1e-6 for u in a for k in shapes)
    return a


MASK = {"w": True, "b": False, "k": True}

# (id, gradtx transformation, optax transformation), under settings where the two agree. Some
# cases use a large eps (0.05-0.1) so that its placement matters well beyond the tolerance.
OPTIMIZERS = [
    ("sgd", gradtx.sgd(0.05), optax.sgd(0.05)),
    ("sgd_momentum", gradtx.sgd(0.05, momentum=0.9), optax.sgd(0.05, momentum=0.9)),
    (
        "sgd_nesterov",
        gradtx.sgd(0.05, momentum=0.9, nesterov=True),
        optax.sgd(0.05, momentum=0.9, nesterov=True),
    ),
    ("sign_sgd", gradtx.sign_sgd(0.01), optax.sign_sgd(0.01)),
    # adagrad Warning: optax adds eps inside the root, gradtx outside; they agree at eps = 0
    # (with a positive initial accumulator, so nothing is divided by zero).
    (
        "adagrad",
        gradtx.adagrad(0.1, initial_accumulator_value=0.1, eps=0.0),
        optax.adagrad(0.1, initial_accumulator_value=0.1, eps=0.0),
    ),
    # rmsprop Warning: optax's eps is inside the root by default, gradtx's outside (as torch).
    # Both placements are compared, each against the same placement on the other side.
    (
        "rmsprop_eps_in_sqrt",
        gradtx.rmsprop(0.01, eps=0.1, eps_in_sqrt=True),
        optax.rmsprop(0.01, eps=0.1, eps_in_sqrt=True),
    ),
    (
        "rmsprop_eps_outside",
        gradtx.rmsprop(0.01, eps=0.1, eps_in_sqrt=False),
        optax.rmsprop(0.01, eps=0.1, eps_in_sqrt=False),
    ),
    (
        "rmsprop_centered_initial_scale",
        gradtx.rmsprop(0.01, decay=0.95, initial_scale=0.5, eps_in_sqrt=True, centered=True),
        optax.rmsprop(0.01, decay=0.95, initial_scale=0.5, eps_in_sqrt=True, centered=True),
    ),
    # optax applies the learning rate before the momentum trace, gradtx after: equal for a
    # constant learning rate (the trace is linear).
    (
        "rmsprop_momentum",
        gradtx.rmsprop(0.01, eps_in_sqrt=True, momentum=0.9),
        optax.rmsprop(0.01, eps_in_sqrt=True, momentum=0.9),
    ),
    (
        "rmsprop_nesterov",
        gradtx.rmsprop(0.01, eps_in_sqrt=True, centered=True, momentum=0.9, nesterov=True),
        optax.rmsprop(0.01, eps_in_sqrt=True, centered=True, momentum=0.9, nesterov=True),
    ),
    ("adadelta", gradtx.adadelta(1.0), optax.adadelta(1.0)),
    (
        "adadelta_weight_decay",
        gradtx.adadelta(0.5, rho=0.95, eps=1e-5, weight_decay=0.1),
        optax.adadelta(0.5, rho=0.95, eps=1e-5, weight_decay=0.1),
    ),
    ("adam", gradtx.adam(0.01), optax.adam(0.01)),
    (
        "adam_eps_root",
        gradtx.adam(0.01, b1=0.8, b2=0.95, eps=0.05, eps_root=0.1),
        optax.adam(0.01, b1=0.8, b2=0.95, eps=0.05, eps_root=0.1),
    ),
    ("adam_nesterov", gradtx.adam(0.01, nesterov=True), optax.adam(0.01, nesterov=True)),
    ("adamw", gradtx.adamw(0.01), optax.adamw(0.01)),
    (
        "adamw_mask",
        gradtx.adamw(0.01, weight_decay=0.1, mask=MASK),
        optax.adamw(0.01, weight_decay=0.1, mask=MASK),
    ),
    ("nadam", gradtx.nadam(0.01), optax.nadam(0.01)),
    (
        "nadamw",
        gradtx.nadamw(0.01, weight_decay=0.1),
        optax.nadamw(0.01, weight_decay=0.1),
    ),
    # adamax: gradtx, optax and torch all put eps inside the maximum, max(β2·u, |g| + ε); a
    # large eps checks the placement (test_adamax_large_eps_agrees).
    ("adamax_eps0", gradtx.adamax(0.01, eps=0.0), optax.adamax(0.01, eps=0.0)),
    ("adamax", gradtx.adamax(0.01, b1=0.8, b2=0.95), optax.adamax(0.01, b1=0.8, b2=0.95)),
    ("adabelief", gradtx.adabelief(0.01), optax.adabelief(0.01)),
    # yogi Warning: optax.yogi starts m (and v) at initial_accumulator_value, gradtx only v.
    # With the value 0 they agree exactly; optax.yogi does not expose the argument, so its
    # parts are chained here. The defaults are compared in test_yogi_default_initial_value.
    (
        "yogi_zero_init",
        gradtx.yogi(0.01, initial_accumulator_value=0.0),
        optax.chain(
            optax.scale_by_yogi(initial_accumulator_value=0.0), optax.scale_by_learning_rate(0.01)
        ),
    ),
    ("lion", gradtx.lion(0.01), optax.lion(0.01)),
    (
        "lion_mask",
        gradtx.lion(0.01, b1=0.95, b2=0.98, weight_decay=0.1, mask=MASK),
        optax.lion(0.01, b1=0.95, b2=0.98, weight_decay=0.1, mask=MASK),
    ),
    ("lamb", gradtx.lamb(0.01), optax.lamb(0.01)),
    (
        "lamb_weight_decay",
        gradtx.lamb(0.01, eps=0.1, weight_decay=0.1),
        optax.lamb(0.01, eps=0.1, weight_decay=0.1),
    ),
    # lamb Warning: gradtx's mask also excludes leaves from the trust ratio, optax.lamb's only
    # from the weight decay; optax's parts, with the mask on both, are the same optimizer.
    (
        "lamb_mask",
        gradtx.lamb(0.01, weight_decay=0.1, mask=MASK),
        optax.chain(
            optax.scale_by_adam(eps=1e-6),
            optax.add_decayed_weights(0.1, mask=MASK),
            optax.masked(optax.scale_by_trust_ratio(), MASK),
            optax.scale_by_learning_rate(0.01),
        ),
    ),
    # lars Warning: optax applies the learning rate before the momentum, gradtx after; equal
    # for a constant learning rate (only that is compared).
    (
        "lars",
        gradtx.lars(0.1, weight_decay=1e-2),
        optax.lars(0.1, weight_decay=1e-2),
    ),
    (
        "lars_nesterov_masks",
        gradtx.lars(
            0.1,
            weight_decay=1e-2,
            weight_decay_mask=MASK,
            trust_coefficient=0.01,
            eps=1e-3,
            trust_ratio_mask={"w": True, "b": True, "k": False},
            nesterov=True,
        ),
        optax.lars(
            0.1,
            weight_decay=1e-2,
            weight_decay_mask=MASK,
            trust_coefficient=0.01,
            eps=1e-3,
            trust_ratio_mask={"w": True, "b": True, "k": False},
            nesterov=True,
        ),
    ),
    # adafactor Warning: optax applies η before the momentum and adds the weight decay
    # unscaled by η; gradtx scales the decay by η like AdamW. Compared with a constant η (or
    # none) and no weight decay, where the two agree.
    ("adafactor", gradtx.adafactor(), optax.adafactor()),
    # min_dim_size_to_factor=2 factors the matrix and the 3-d array (over its two largest axes).
    (
        "adafactor_factored_momentum",
        gradtx.adafactor(0.1, min_dim_size_to_factor=2, momentum=0.9, decay_rate=0.7),
        optax.adafactor(0.1, min_dim_size_to_factor=2, momentum=0.9, decay_rate=0.7),
    ),
    (
        "adafactor_unscaled_unclipped",
        gradtx.adafactor(
            0.01,
            min_dim_size_to_factor=3,
            multiply_by_parameter_scale=False,
            clipping_threshold=None,
        ),
        optax.adafactor(
            0.01,
            min_dim_size_to_factor=3,
            multiply_by_parameter_scale=False,
            clipping_threshold=None,
        ),
    ),
    (
        "adafactor_not_factored",
        gradtx.adafactor(0.01, min_dim_size_to_factor=2, factored=False, clipping_threshold=0.5),
        optax.adafactor(0.01, min_dim_size_to_factor=2, factored=False, clipping_threshold=0.5),
    ),
]


@pytest.mark.parametrize(
    ("ours", "theirs"), [c[1:] for c in OPTIMIZERS], ids=[c[0] for c in OPTIMIZERS]
)
def test_optimizer_matches_optax(ours, theirs):
    _compare(ours, theirs)


def test_yogi_default_initial_value():
    """With the defaults, optax's m_0 = 1e-6 (the yogi Warning) shifts the update by
    η·1e-6·β1^t/(1−β1^t)/σ_t ≤ η·9e-6/ε = 9e-3·η (σ_t ≥ ε = 1e-3): that is the tolerance."""
    lr = 0.01
    _compare(gradtx.yogi(lr), optax.yogi(lr), atol=9e-3 * lr)


def test_adamax_large_eps_agrees():
    """With a large eps a wrong placement would show: gradtx and optax agree at every step."""
    params, grads = _data()
    a = _run(gradtx.adamax(0.01, eps=0.1), params, grads)
    b = _run(optax.adamax(0.01, eps=0.1), params, grads, promotion="standard")
    for x, y in zip(a, b):
        np.testing.assert_allclose(x["w"], y["w"], **TOL)


def test_lamb_mask_differs_from_optax_lamb():
    """The lamb Warning: with a mask, optax.lamb still applies the trust ratio to masked leaves."""
    params, grads = _data()
    a = _run(gradtx.lamb(0.01, weight_decay=0.1, mask=MASK), params, grads)
    b = _run(optax.lamb(0.01, weight_decay=0.1, mask=MASK), params, grads, promotion="standard")
    np.testing.assert_allclose(a[0]["w"], b[0]["w"], **TOL)
    assert not np.allclose(a[0]["b"], b[0]["b"], **TOL)


# radam Warning: optax rectifies at ρ_t ≥ threshold, gradtx at ρ_t > threshold; ρ_t is never
# exactly the threshold here. With β2 = 0.999, steps 1-5 are the un-rectified phase, the rest
# rectified. ρ_t − 4 is a small difference of large numbers (ρ_∞ ≈ 2000): in float32 it carries
# an error of ~1e-2 relative at step 6, computed differently by the two (and torch's, in Python
# floats, is more accurate than both). So the exact comparison is in float64; float32 is held
# to the size of that rounding.
@pytest.mark.parametrize(
    ("dtype", "tol"),
    [
        pytest.param(np.float64, {"rtol": 1e-10, "atol": 1e-13}, id="f64"),
        pytest.param(np.float32, {"rtol": 3e-2, "atol": 1e-7}, id="f32"),
    ],
)
@pytest.mark.parametrize("kw", [{}, {"b2": 0.99, "eps_root": 1e-8, "threshold": 4.0}])
def test_radam_matches_optax(kw, dtype, tol):
    ctx = jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext()
    with ctx:
        params, grads = _data(dtype=dtype)
        # Jitted: one compilation instead of a float64 one for every eager operation.
        _compare(gradtx.radam(0.01, **kw), optax.radam(0.01, **kw), params, grads, jit=True, **tol)


def test_amsgrad_differs_from_optax_by_design():
    """AmsgradScale Warning: gradtx (like torch) takes the maximum of the *raw* second moment
    and bias-corrects it afterwards, optax the maximum of the bias-corrected moments. The two
    agree at step 1 and differ later; tests/test_vs_torch.py checks gradtx against torch."""
    params, grads = _data()
    a = _run(gradtx.amsgrad(0.01), params, grads)
    b = _run(optax.amsgrad(0.01), params, grads, promotion="standard")
    for k in SHAPES:
        np.testing.assert_allclose(a[0][k], b[0][k], **TOL)
    assert not all(np.allclose(x["w"], y["w"], **TOL) for x, y in zip(a, b))


# --- stages --------------------------------------------------------------------------------

STAGES = [
    ("clip", gradtx.clip(0.5), optax.clip(0.5)),
    ("clip_by_global_norm", gradtx.clip_by_global_norm(4.0), optax.clip_by_global_norm(4.0)),
    ("clip_by_block_rms", gradtx.clip_by_block_rms(0.8), optax.clip_by_block_rms(0.8)),
    ("add_decayed_weights", gradtx.add_decayed_weights(0.1), optax.add_decayed_weights(0.1)),
    (
        "add_decayed_weights_mask",
        gradtx.add_decayed_weights(0.1, mask=MASK),
        optax.add_decayed_weights(0.1, mask=MASK),
    ),
    (
        "add_decayed_weights_mask_fn",
        gradtx.add_decayed_weights(0.1, mask=lambda p: {k: v.ndim >= 2 for k, v in p.items()}),
        optax.add_decayed_weights(0.1, mask=lambda p: {k: v.ndim >= 2 for k, v in p.items()}),
    ),
    ("scale_by_trust_ratio", gradtx.scale_by_trust_ratio(), optax.scale_by_trust_ratio()),
    (
        "scale_by_trust_ratio_args",
        gradtx.scale_by_trust_ratio(min_norm=2.5, trust_coefficient=0.01, eps=1e-3),
        optax.scale_by_trust_ratio(min_norm=2.5, trust_coefficient=0.01, eps=1e-3),
    ),
]


@pytest.mark.parametrize(("ours", "theirs"), [c[1:] for c in STAGES], ids=[c[0] for c in STAGES])
def test_stage_matches_optax(ours, theirs):
    # Stateless stages: the parameters stay put (move=False), only the gradients change.
    a = _compare(ours, theirs, move=False)
    # The stage acts on some steps (and, for the clips, not on all): not a vacuous comparison.
    params, grads = _data()
    changed = [any(not np.array_equal(u[k], g[k]) for k in SHAPES) for u, g in zip(a, grads)]
    assert any(changed)


def test_clips_are_active_on_some_steps_only():
    params, grads = _data()
    for tx in (gradtx.clip_by_global_norm(4.0), gradtx.clip_by_block_rms(0.8)):
        a = _run(tx, params, grads, move=False)
        same = [all(np.array_equal(u[k], g[k]) for k in SHAPES) for u, g in zip(a, grads)]
        assert any(same) and not all(same), tx.name


def test_scale_by_trust_ratio_zero_param():
    """Both use a ratio of 1 when a parameter (or its update) is all zero."""
    params, grads = _data()
    params = {**params, "b": jnp.zeros(3, jnp.float32)}
    grads[3] = {**grads[3], "k": jnp.zeros(SHAPES["k"], jnp.float32)}
    _compare(gradtx.scale_by_trust_ratio(), optax.scale_by_trust_ratio(), params, grads, move=False)


# adaptive_grad_clip: gradtx's default units are optax's rule by rank, for every rank optax
# handles: vectors, (1, n) arrays (one norm), matrices, 3-d (axis 0), 4-d (HWIO) and 5-d.
AGC_SHAPES = {
    "dense": (6, 4),
    "conv": (3, 3, 2, 4),
    "bias": (4,),
    "heads": (4, 3, 5),
    "row": (1, 6),
    "conv3d": (2, 2, 2, 3, 4),
}


@pytest.mark.parametrize("clipping", [0.05, 0.3, 1.0])
def test_adaptive_grad_clip_matches_optax(clipping):
    params, grads = _data(AGC_SHAPES)
    a = _compare(
        gradtx.adaptive_grad_clip(clipping),
        optax.adaptive_grad_clip(clipping),
        params,
        grads,
        move=False,
        shapes=AGC_SHAPES,
        jit=True,  # shapes of their own: one compilation beats one per eager operation
    )
    if clipping == 0.3:  # some units clipped, some not
        clipped = np.concatenate(
            [np.ravel(np.asarray(u[k]) != np.asarray(g[k])) for u, g in zip(a, grads) for k in u]
        )
        assert clipped.any() and not clipped.all()


@pytest.mark.parametrize("axis", [0, (0, 1), -1])
def test_adaptive_grad_clip_axis_matches_optax(axis):
    """An explicit ``axis`` means what optax's ``axis`` means (the axes a unit's norm covers)."""
    params, grads = _data({"k": (4, 3, 5)})
    _compare(
        gradtx.adaptive_grad_clip(0.3, axis=axis),
        optax.adaptive_grad_clip(0.3, axis=axis),
        params,
        grads,
        move=False,
        shapes={"k": (4, 3, 5)},
        jit=True,
    )


# --- each library inside the other's chain ---------------------------------------------------


def _pure_gradtx():
    return gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(1e-2))


CHAINS = [
    (
        "optax_chain_of_gradtx",
        lambda: optax.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(1e-2)),
    ),
    ("optax_chain_mixed", lambda: optax.chain(optax.clip_by_global_norm(1.0), gradtx.adam(1e-2))),
    ("gradtx_chain_mixed", lambda: gradtx.chain(optax.clip_by_global_norm(1.0), gradtx.adam(1e-2))),
    (
        "gradtx_chain_of_optax",
        lambda: gradtx.chain(gradtx.clip_by_global_norm(1.0), optax.adam(1e-2)),
    ),
]


@pytest.mark.parametrize("make", [c[1] for c in CHAINS], ids=[c[0] for c in CHAINS])
def test_mixed_chains_match_pure(make):
    """A gradtx stage in optax.chain and an optax one in gradtx.chain, jitted, give the same
    updates as the pure gradtx chain and as optax's own."""
    params, grads = _data()
    pure_optax = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    ref = _run(pure_optax, params, grads, promotion="standard", jit=True)
    pure = _run(_pure_gradtx(), params, grads, jit=True)
    mixed = _run(make(), params, grads, promotion="standard", jit=True)
    for step, (r, p, m) in enumerate(zip(ref, pure, mixed), 1):
        for k in SHAPES:
            np.testing.assert_allclose(p[k], r[k], **TOL, err_msg=f"pure gradtx, step {step}")
            np.testing.assert_allclose(m[k], r[k], **TOL, err_msg=f"mixed chain, step {step}")
    # The clip was active (grads have a global norm well above 1), so the chain order matters.
    assert float(gradtx.global_norm(grads[0])) > 2.0


def test_gradtx_chain_with_optax_stage_as_jit_argument():
    """A gradtx chain holding an optax stage is a pytree: it can be passed through jit."""
    params, grads = _data()
    tx = gradtx.chain(optax.clip_by_global_norm(1.0), gradtx.adam(1e-2))
    ref = _run(
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
        params,
        grads,
        promotion="standard",
    )

    @jax.jit
    def step(tx, g, state, params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(g, state, params)

    state = tx.init(params)
    for r, g in zip(ref, grads):
        u, state = step(tx, g, state, params)
        params = gradtx.apply_updates(params, u)
        for k in SHAPES:
            np.testing.assert_allclose(u[k], r[k], **TOL)


def test_optax_masked_and_multi_transform_accept_gradtx():
    """optax's wrappers take gradtx transformations like their own."""
    params, grads = _data()
    labels = {"w": "adam", "b": "sgd", "k": "adam"}
    ours = optax.multi_transform({"adam": gradtx.adam(0.01), "sgd": gradtx.sgd(0.1)}, labels)
    theirs = optax.multi_transform({"adam": optax.adam(0.01), "sgd": optax.sgd(0.1)}, labels)
    _compare(_standard_promotion(ours), theirs, params, grads)
