"""optax's remaining named optimizers and transforms: the optax-named stages against optax, the
documented differences from optax pinned, knobs, state, errors, packed buffers, convergence.

Comparisons run both sides jitted (one compilation per side) for ``STEPS`` steps on the same
seeded float32 gradients; each side applies its own updates to its own params. Tolerance
``rtol=1e-5`` and, per leaf, ``atol = 1e-6 × the largest |update| of that leaf over the run``
(updates that cancel to ~0, as the optimistic ones, keep an absolute error of a few float32
roundings of the magnitudes they came from). The NumPy oracles of the papers' rules are in
tests/test_optax_remaining_oracle.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

optax = pytest.importorskip("optax")

STEPS = 20
SHAPES = {"w": (5, 3), "b": (3,)}


@functools.cache
def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    scales = np.exp(rng.normal(scale=0.7, size=STEPS))
    grads = [
        {k: (c * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()} for c in scales
    ]
    values = rng.uniform(0.5, 20.0, STEPS).astype(np.float32)  # losses for Polyak's step
    return jax.tree_util.tree_map(jnp.asarray, (params, grads, list(values)))


def _run(tx, *, move=True, value=False, seed=0):
    """The updates of ``tx`` at every step (its update jitted once, under standard promotion
    for optax's code)."""
    params, grads, values = _data(seed)

    @jax.jit
    def step(g, state, p, v):
        with jax.numpy_dtype_promotion("standard"):
            u, state = tx.update(g, state, p, **({"value": v} if value else {}))
            return u, state, (optax.apply_updates(p, u) if move else p)

    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(params)
    out, p = [], params
    for g, v in zip(grads, values):
        u, state, p = step(g, state, p, v)
        out.append(u)
    return out, state


def _close(ours, theirs, what=""):
    for k in SHAPES:
        scale = max(float(jnp.max(jnp.abs(u[k]))) for u in theirs)
        assert scale > 1e-6, f"{what}: updates of {k!r} are all zero"
        for t, (a, b) in enumerate(zip(ours, theirs), 1):
            assert a[k].dtype == b[k].dtype == jnp.float32
            np.testing.assert_allclose(
                a[k], b[k], rtol=1e-5, atol=1e-6 * scale, err_msg=f"{what} {k!r} step {t}"
            )


# Named optimizers are compared with optax (and their oracles) in
# tests/test_optax_remaining_oracle.py; here, the optax-named stages not covered there.
AGREE = [
    (
        "scale_by_sm3_ema",  # b2 < 1: the EMA form of the accumulator
        lambda: gradtx.scale_by_sm3(0.8, 0.9, 1e-6),
        lambda: optax.scale_by_sm3(0.8, 0.9, 1e-6),
    ),
    (
        "scale_by_polyak_sps_plus",  # losses below f_min = 15 at some steps: there the step is 0
        lambda: gradtx.scale_by_polyak(15.0, 0.05, 1e-3, "sps+"),
        lambda: optax.scale_by_polyak(15.0, 0.05, 1e-3, "sps+"),
    ),
]


@pytest.mark.parametrize("case", AGREE, ids=[c[0] for c in AGREE])
def test_stage_equals_optax(case):
    name, ours, theirs = case
    polyak = "polyak" in name
    a, _ = _run(ours(), value=polyak, move=False)
    _close(a, _run(theirs(), value=polyak, move=False)[0], name)
    assert not polyak or any(float(jnp.max(jnp.abs(u["w"]))) == 0 for u in a)


# --- the documented differences -------------------------------------------------------------------


def test_adan_weighs_the_difference_by_b2_unlike_optax():
    """Equal at the first step (Δ₁ = 0), then apart: optax's 1 − b2 = 0.08 vs the paper's 0.92."""
    ours, _ = _run(gradtx.scale_by_adan(), move=False)
    theirs, _ = _run(optax.scale_by_adan(), move=False)
    np.testing.assert_allclose(ours[0]["w"], theirs[0]["w"], rtol=1e-6)
    gap = max(float(jnp.max(jnp.abs(a["w"] - b["w"]))) for a, b in zip(ours[1:], theirs[1:]))
    assert gap > 0.1, gap


def test_rprop_step_sizes_equal_optax_but_not_its_stale_updates():
    """optax's step sizes are the same; its update is the previous step's (0 at the first).
    gradtx's updates equal the iRprop⁻ oracle of torch.optim.Rprop's documented algorithm
    (tests/test_optax_remaining_oracle.py)."""
    args = (0.05, 0.4, 1.3, 1e-3, 0.2)
    ours, state = _run(gradtx.rprop(*args))
    theirs, optax_state = _run(optax.rprop(*args))
    for k in SHAPES:
        np.testing.assert_allclose(
            state.knobs.step_sizes[k], optax_state[0].step_sizes[k], rtol=1e-6
        )
        assert float(jnp.max(jnp.abs(theirs[0][k]))) == 0
        assert float(jnp.min(jnp.abs(ours[0][k]))) == pytest.approx(0.05)  # −Δ₀·sign(g₁)
        # optax's update at t is gradtx's at t − 1 wherever the sign did not flip at t
        prev, now = ours[0][k], theirs[1][k]
        kept = np.asarray(now) != 0
        np.testing.assert_allclose(np.asarray(now)[kept], np.asarray(prev)[kept], rtol=1e-6)


def test_polyak_scaling_multiplies_the_step_unlike_optax():
    """gradtx: s·γ(g)·g; optax computes γ on the scaled gradient s·g."""
    half, _ = _run(gradtx.polyak_sgd(10.0, 0.5), value=True, move=False)
    one, _ = _run(optax.polyak_sgd(10.0, 1.0), value=True, move=False)
    theirs, _ = _run(optax.polyak_sgd(10.0, 0.5), value=True, move=False)
    _close(half, [{k: 0.5 * u[k] for k in u} for u in one], "0.5 × scaling 1")
    assert not np.allclose(half[0]["w"], theirs[0]["w"], rtol=1e-2)


# --- knobs, state, errors -------------------------------------------------------------------------

KNOBS = {
    # name: (factory, text in g, text in σ, order)
    "adamaxw": (lambda: gradtx.adamaxw(1e-3), "EMA", "Adamax", "g and σ from g"),
    "adan": (lambda: gradtx.adan(1e-3), "EMA", "Adan", "g and σ from g"),
    "novograd": (lambda: gradtx.novograd(1e-3), "momentum", "NovoGrad", "σ then g"),
    "sm3": (lambda: gradtx.sm3(1e-3), "EMA", "SM3", "σ then g"),
    "rprop": (lambda: gradtx.rprop(1e-3), "sign", "Rprop", "g and σ from g"),
    "signum": (lambda: gradtx.signum(1e-3), "EMA", "none", "g and σ from g"),
    "optimistic_gradient_descent": (
        lambda: gradtx.optimistic_gradient_descent(1e-3),
        "optimistic",
        "none",
        "g and σ from g",
    ),
    "optimistic_adam_v2": (lambda: gradtx.optimistic_adam_v2(1e-3), "Nesterov", "Adam", None),
    "fromage": (lambda: gradtx.fromage(1e-3), "none", "none", None),
    "noisy_sgd": (lambda: gradtx.noisy_sgd(1e-3), "none", "none", None),
    "polyak_sgd": (lambda: gradtx.polyak_sgd(), "none", "none", None),
}


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_describe_names_the_knobs(name):
    make, g, sigma, order = KNOBS[name]
    d = make().describe()
    assert d["name"] == name and g in d["g"] and sigma in d["sigma"], d
    assert order is None or d["order"] == order
    assert d["eta"].startswith("constant")


def test_describe_shows_the_stages_around_the_knobs():
    assert "AddNoise" in gradtx.noisy_sgd(0.1).describe()["before"][0]
    assert "ScaleByPolyak" in gradtx.polyak_sgd().describe()["before"][0]
    before = gradtx.fromage(0.1).describe()["before"]
    assert "ScaleByTrustRatio" in before[0] and "AddDecayedWeights" in before[1]
    assert "scale_by_sign" in gradtx.signum(0.1).describe()["after"][0]
    assert "OptimisticGradient" in gradtx.optimistic_adam(0.1).describe()["after"][0]


def test_statistics_are_per_axis_and_per_layer():
    params = {"w": jnp.zeros((4, 6, 2)), "b": jnp.zeros(5), "s": jnp.zeros(())}
    nu = gradtx.sm3(0.1).init(params).knobs.nu
    assert {k: v.shape for k, v in nu.items()} == {"w": (12,), "b": (5,), "s": (1,)}
    nu = gradtx.novograd(0.1).init(params).knobs.nu
    assert all(v.shape == () for v in nu.values())
    half = {"w": jnp.zeros(3, jnp.float16)}  # second moments in float32 for float16 params
    assert gradtx.sm3(0.1).init(half).knobs.nu["w"].dtype == jnp.float32
    assert gradtx.adan(0.1).init(half).knobs.nu["w"].dtype == jnp.float32


def test_packed_buffers_equal_per_leaf():
    """SM3 and NovoGrad read whole arrays (their slots are not params-shaped): run per stack."""
    params, grads, _ = _data()
    for tx in (gradtx.sm3(0.1), gradtx.novograd(0.1, weight_decay=0.1)):
        step = jax.jit(tx.update)  # one compilation per layout
        ref, packed = dict(params), gradtx.pack(dict(params), threshold=None)
        s_ref, s_packed = tx.init(ref), tx.init(packed)
        for g in grads[:2]:
            u, s_ref = step(g, s_ref, ref)
            ref = gradtx.apply_updates(ref, u)
            u, s_packed = step(gradtx.pack(g, threshold=None), s_packed, packed)
            packed = gradtx.apply_updates(packed, u)
        out = gradtx.unpack(packed)
        for k in SHAPES:
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=tx.name)


def test_add_noise_keys_and_seeds():
    params = {"w": jnp.zeros(3)}
    draw = lambda tx: tx.update(params, tx.init(params), params)[0]["w"]  # noqa: E731
    assert np.array_equal(
        draw(gradtx.add_noise(1.0, 0.0, 3)), draw(gradtx.add_noise(1.0, 0.0, jax.random.key(3)))
    )
    assert not np.array_equal(
        draw(gradtx.add_noise(1.0, 0.0, 3)), draw(gradtx.add_noise(1.0, 0.0, 4))
    )
    with pytest.warns(DeprecationWarning, match="seed"):
        tx = gradtx.add_noise(1.0, 0.0, seed=3)
    assert tx == gradtx.add_noise(1.0, 0.0, 3)  # a value: equal configurations compare equal
    with pytest.raises(ValueError, match="gradtx.add_noise: give key or seed"):
        gradtx.add_noise(1.0, 0.0, 3, seed=3)
    with pytest.raises(TypeError, match="gradtx.add_noise: key must be"):
        gradtx.add_noise(1.0, 0.0, "3")


def test_bad_input_names_the_optimizer_and_argument():
    params = {"w": jnp.ones(2)}
    tx = gradtx.polyak_sgd()
    with pytest.raises(ValueError, match="gradtx.polyak_sgd .*value"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match="value= must be the loss, a real scalar"):
        tx.update(params, tx.init(params), params, value=jnp.ones(2))
    with pytest.raises(ValueError, match="variant must be one of"):
        gradtx.polyak_sgd(variant="sps++")
    with pytest.raises(ValueError, match=r"gradtx.adan \(.*\): b1 must be in \[0, 1\)"):
        gradtx.adan(1e-3, b1=1.5)
    with pytest.raises(ValueError, match=r"gradtx.sm3 \(.*\): momentum must be in \[0, 1\)"):
        gradtx.sm3(1e-3, momentum=1.0)
    with pytest.raises(ValueError, match=r"gradtx.rprop \(.*\): learning_rate must be > 0"):
        gradtx.rprop(0.0)
    with pytest.raises(ValueError, match="gradtx.signum .*beta"):
        gradtx.signum(1e-3, beta=-0.1)


# --- convergence ----------------------------------------------------------------------------------


def _valley(p):
    """½(x² + 10 y²) + ½ z² over a matrix-free 3-vector, f₀ = 6 from (1, 1, 1)."""
    x = p["v"]
    return 0.5 * (x[0] ** 2 + 10.0 * x[1] ** 2 + x[2] ** 2)


CONVERGES = {
    "adamaxw": lambda: gradtx.adamaxw(0.05, weight_decay=0.0),
    "adan": lambda: gradtx.adan(0.05),
    "novograd": lambda: gradtx.novograd(0.05),
    "optimistic_gradient_descent": lambda: gradtx.optimistic_gradient_descent(0.05),
    "optimistic_adam": lambda: gradtx.optimistic_adam(0.05, nesterov=False),
    "optimistic_adam_v2": lambda: gradtx.optimistic_adam_v2(0.05),
    "signum": lambda: gradtx.signum(gradtx.schedules.linear(0.05, 0.0, 400)),
    "rprop": lambda: gradtx.rprop(0.05),
    "sm3": lambda: gradtx.sm3(0.3),
    "fromage": lambda: gradtx.fromage(gradtx.schedules.linear(0.1, 0.0, 400)),
    "noisy_sgd": lambda: gradtx.noisy_sgd(0.05, eta=1e-4),
    "polyak_sgd": lambda: gradtx.polyak_sgd(1.0),
}


FAMILIES = (
    "adamaxw",
    "adan",
    "fromage",
    "novograd",
    "optimistic",
    "sgd_variants",
    "sign_family",
    "sm3",
)


def test_every_new_optimizer_has_a_convergence_case():
    import importlib

    new = set()
    for family in FAMILIES:
        new |= set(importlib.import_module(f"gradtx._optimizers.{family}").__all__)
    assert new == set(CONVERGES) == set(KNOBS) | {"optimistic_adam"}


@pytest.mark.parametrize("name", sorted(CONVERGES))
def test_converges_on_a_valley(name):
    tx = CONVERGES[name]()
    params = {"v": jnp.ones(3)}

    def body(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(_valley)(p)
        u, s = tx.update(g, s, p, value=value)
        return (gradtx.apply_updates(p, u), s), None

    run = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, length=400)[0][0])
    final = float(_valley(run(params)))
    assert final < 1e-3 * float(_valley(params)), f"{name}: 6 -> {final:.3g}"
