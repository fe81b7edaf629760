"""optax's names for transformations gradtx builds from its knobs mean what optax's do.

Every optax-named transformation runs a few steps on a small tree next to ``optax.<name>`` with
the same arguments; the updates agree to float32 rounding (rtol 1e-6 unless stated per case).
Also: ``mu_dtype`` / ``accumulator_dtype`` store the moment in that dtype, as optax does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

optax = pytest.importorskip("optax")

STEPS = 4


def _tree():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "b": jnp.array([0.5, -1.0, 0.0]),
        "w": jax.random.normal(k1, (3, 4)),
        "s": jax.random.normal(k2, ()),
    }


def _grads(step):
    keys = jax.random.split(jax.random.key(100 + step), 3)
    g = {
        "b": jax.random.normal(keys[0], (3,)),
        "w": jax.random.normal(keys[1], (3, 4)) * 3.0,
        "s": jax.random.normal(keys[2], ()),
    }
    if step == 0:  # a gradient entry that is exactly 0 at the first step (scale_by_rss's rule)
        g["b"] = g["b"].at[2].set(0.0)
    return g


def _run(tx, params, n=STEPS):
    if not isinstance(tx, gradtx.GradientTransformation):  # optax needs standard promotion
        with jax.numpy_dtype_promotion("standard"):
            return _run_steps(tx, params, n)
    return _run_steps(tx, params, n)


def _run_steps(tx, params, n):
    state = tx.init(params)
    update = jax.jit(tx.update)  # one compilation beats dispatching each op eagerly
    outs = []
    for i in range(n):
        u, state = update(_grads(i), state, params)
        outs.append(u)
        params = jax.tree.map(lambda p, d: p + d, params, u)
    return outs, state


# optax's bias correction 1 - b**t is off by up to ~7e-6 relative in float32 (b2 = 0.999, small
# t); gradtx's -expm1(t·log b) by ~1e-7, so the debiased transforms agree to this:
ADAM_RTOL = 2e-5
# the number of steps: RAdam's rectified branch starts at t = 5 for b2 = 0.9, threshold 4.5

# (name, positional args, keyword args, rtol)
CASES = [
    ("scale_by_adam", (), {}, ADAM_RTOL),
    ("scale_by_adam", (0.8, 0.99, 1e-3, 1e-4), {}, ADAM_RTOL),
    ("scale_by_adam", (), {"nesterov": True}, ADAM_RTOL),
    ("scale_by_adamax", (0.8, 0.99, 1e-3), {}, 1e-6),
    ("scale_by_amsgrad", (), {}, ADAM_RTOL),
    ("scale_by_amsgrad", (0.8, 0.9, 1e-3, 1e-4, None, False, False), {}, ADAM_RTOL),
    ("scale_by_belief", (), {}, ADAM_RTOL),
    ("scale_by_belief", (0.8, 0.9, 1e-3, 1e-4), {"nesterov": True}, ADAM_RTOL),
    ("scale_by_yogi", (), {}, ADAM_RTOL),
    ("scale_by_yogi", (0.8, 0.9, 1e-2, 1e-4, 1e-3), {}, ADAM_RTOL),
    ("scale_by_radam", (), {}, ADAM_RTOL),
    ("scale_by_radam", (0.9, 0.9, 1e-8, 0.0, 4.5), {"nesterov": True}, 2e-5),
    ("scale_by_rms", (), {}, 1e-6),
    ("scale_by_rms", (0.8, 1e-3, 0.1, False, True), {}, 1e-6),
    ("scale_by_stddev", (), {}, 1e-6),
    ("scale_by_stddev", (0.8, 1e-3, 0.5, False, True), {}, 1e-6),
    ("scale_by_rss", (), {}, 1e-6),
    ("scale_by_rss", (0.0, 1e-3), {}, 1e-6),
    ("scale_by_adadelta", (0.8, 1e-4), {}, 1e-6),
    ("scale_by_lion", (), {}, 1e-6),
    # tanh / the identity branch pass on rounding differences of the params (not the sign)
    ("scale_by_lion", (0.8, 0.9), {"mode": "smooth", "smooth_beta": 2.0}, 1e-5),
    ("scale_by_lion", (0.8, 0.9), {"mode": "refined"}, 1e-5),
    ("scale_by_sign", (), {}, 1e-6),
    ("scale_by_factored_rms", (), {}, 1e-6),
    # factors the 3x4 leaf (a step_offset > 0 makes optax NaN before the offset; gradtx clamps)
    ("scale_by_factored_rms", (True, 0.7, 0, 2, 1e-20), {}, 1e-6),
    ("trace", (0.9,), {}, 1e-6),
    ("trace", (0.5, True), {}, 1e-6),
    ("ema", (0.9,), {}, 1e-6),
    ("ema", (0.7, False), {}, 1e-6),
    ("identity", (), {}, 0.0),
    ("set_to_zero", (), {}, 0.0),
    ("scale_by_schedule", (lambda c: 0.5 + 0.25 * jnp.asarray(c, jnp.float32),), {}, 1e-6),
    ("scale", (-0.3,), {}, 1e-6),
    ("scale_by_learning_rate", (0.1,), {}, 1e-6),
    (
        "scale_by_learning_rate",
        (lambda c: 0.1 * 0.5 ** jnp.asarray(c, jnp.float32),),
        {"flip_sign": False},
        1e-6,
    ),
    ("scale_by_learning_rate", (None,), {}, 0.0),
]


@pytest.mark.parametrize(
    "name, args, kwargs, rtol", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_equals_optax(name, args, kwargs, rtol):
    n = 7 if name == "scale_by_radam" and args else STEPS
    ours, _ = _run(getattr(gradtx, name)(*args, **kwargs), _tree(), n)
    ref, _ = _run(getattr(optax, name)(*args, **kwargs), _tree(), n)
    for step, (u, r) in enumerate(zip(ours, ref)):
        for k in r:
            np.testing.assert_allclose(
                u[k], r[k], rtol=rtol, atol=1e-7, err_msg=f"{name} step {step} leaf {k}"
            )


def test_optax_names_in_a_chain_equal_the_named_optimizers():
    """optax's identity ``adam = chain(scale_by_adam, scale_by_learning_rate)`` holds."""
    ours, _ = _run(
        gradtx.chain(gradtx.scale_by_adam(0.8), gradtx.scale_by_learning_rate(0.1)), _tree()
    )
    ref, _ = _run(gradtx.adam(0.1, 0.8), _tree())
    for u, r in zip(ours, ref):
        for k in r:
            np.testing.assert_allclose(u[k], r[k], rtol=1e-6)


def test_stage_named_after_the_optax_name():
    tx = gradtx.chain(gradtx.scale_by_adam(), gradtx.trace(0.9))
    assert set(tx.init(_tree())) == {"scale_by_adam", "trace"}
    with pytest.raises(ValueError, match=r"gradtx\.scale_by_adam .*b1"):
        gradtx.scale_by_adam(b1=1.5)
    with pytest.raises(ValueError, match=r"gradtx\.scale_by_lion .*mode"):
        gradtx.scale_by_lion(mode="soft")
    with pytest.raises(NotImplementedError, match="scale_by_factored_rms"):
        gradtx.scale_by_factored_rms(decay_rate_fn=lambda t, c: 0.5)


# --- mu_dtype / accumulator_dtype ------------------------------------------------------------

DTYPE_CASES = [
    ("adam", (0.1,), {"mu_dtype": jnp.bfloat16}),
    ("adamw", (0.1,), {"mu_dtype": jnp.bfloat16, "weight_decay": 0.1}),
    ("nadam", (0.1,), {"mu_dtype": jnp.bfloat16}),
    ("nadamw", (0.1,), {"mu_dtype": jnp.bfloat16}),
    ("amsgrad", (0.1,), {"mu_dtype": jnp.bfloat16, "bias_correction_nu": False}),
    ("lion", (0.1,), {"mu_dtype": jnp.bfloat16}),
    ("sgd", (0.1, 0.9), {"accumulator_dtype": jnp.bfloat16}),
    ("sgd", (0.1, 0.9, True), {"accumulator_dtype": "bfloat16"}),
    ("scale_by_adam", (), {"mu_dtype": jnp.bfloat16}),
    ("scale_by_lion", (), {"mu_dtype": jnp.bfloat16}),
    ("trace", (0.9,), {"accumulator_dtype": jnp.bfloat16}),
    ("ema", (0.9,), {"accumulator_dtype": jnp.bfloat16}),
]


def _mu_leaves(state):
    """The first-moment leaves of a state (optax: ``mu`` / ``trace`` / ``ema`` fields)."""
    found = []

    def visit(x):
        if isinstance(x, dict) or hasattr(x, "_fields") or isinstance(x, (tuple, list)):
            items = (
                x.items()
                if isinstance(x, dict)
                else (zip(x._fields, x) if hasattr(x, "_fields") else enumerate(x))
            )
            for k, v in items:
                if k in ("mu", "trace", "ema"):
                    found.extend(jax.tree.leaves(v))
                else:
                    visit(v)
        elif hasattr(x, "keys"):  # gradtx.State
            visit({k: x[k] for k in x})

    visit(state)
    return found


@pytest.mark.parametrize(
    "name, args, kwargs", DTYPE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(DTYPE_CASES)]
)
def test_moment_dtype_as_optax(name, args, kwargs):
    ours, s_ours = _run(getattr(gradtx, name)(*args, **kwargs), _tree(), 3)
    ref, s_ref = _run(getattr(optax, name)(*args, **kwargs), _tree(), 3)
    mu_ours, mu_ref = _mu_leaves(s_ours), _mu_leaves(s_ref)
    assert len(mu_ours) == len(mu_ref) == 3
    assert {x.dtype for x in mu_ours} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in mu_ref} == {jnp.dtype(jnp.bfloat16)}

    # optax multiplies the stored bfloat16 moment by β in bfloat16 (a weak-typed Python float),
    # gradtx in float32: the two agree to a few bfloat16 ulps (2**-8 ≈ 0.4 % of the leaf's
    # largest entry in the tree) over 3 steps.
    def close(a, b, scale):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-2 * scale)

    def biggest(leaves):
        return max(float(np.abs(np.asarray(x, np.float32)).max()) for x in leaves)

    for u, r in zip(ours, ref):
        for k in r:
            assert u[k].dtype == r[k].dtype == jnp.float32
            close(u[k], r[k], biggest(r.values()))
    for a, b in zip(sorted(mu_ours, key=jnp.size), sorted(mu_ref, key=jnp.size)):
        close(a, b, biggest(mu_ref))


def test_moment_dtype_none_is_the_params_dtype():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    assert gradtx.adam(0.1).init(params).knobs.mu["w"].dtype == jnp.bfloat16
    assert gradtx.sgd(0.1, 0.9).init(params).knobs.mu["w"].dtype == jnp.bfloat16
    state = gradtx.adafactor(momentum=0.9).init(params)  # dtype_momentum: optax's float32
    assert state.knobs.mu["w"].dtype == jnp.float32
    with pytest.raises(TypeError, match=r"gradtx\.adam .*dtype"):
        gradtx.adam(0.1, mu_dtype=jnp.int32)
