"""ADOPT, AdEMAMix and the cautious wrapper: optax.contrib, NumPy float64 oracles of the papers'
rules, convergence, signatures.

gradtx runs in float32 (eagerly: the compiled primitives are shared by every case) on seeded
gradients whose scale wanders over the steps. Tolerances: against optax ``rtol=2e-5`` with
``atol = 2e-6 × max |update|`` (bias corrections are ``-expm1(t·log β)`` here, ``1 - β**t`` in
optax; ``1 - β2`` is formed from float32 β2 here); against the float64 oracles ``rtol=1e-5``
with ``atol = 1e-6 ×`` the largest ``|value|`` the leaf has had, for entries that cancel to ~0
(tests/test_oracle_numpy.py's rule). Hyperparameters enter the oracles at their float32 values,
as gradtx holds them (``oracles.as_float32_value``).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import as_float32_value as as32

import gradtx

optax = pytest.importorskip("optax")
contrib = optax.contrib

STEPS = 25
SHAPES = {"w": (4, 3), "b": (3,), "s": ()}


def _data(seed=0, steps=STEPS, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    scales = np.exp(rng.normal(scale=0.7, size=steps))
    grads = [
        {k: jnp.asarray(c * rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
        for c in scales
    ]
    return params, grads


def _run(tx, params, grads, promotion="strict"):
    """Updates of ``tx`` at every step (params follow them) and its last state."""
    with jax.numpy_dtype_promotion(promotion):
        state = tx.init(params)
        out = []
        for g in grads:
            u, state = tx.update(g, state, params)
            params = jax.tree_util.tree_map(lambda p, x: p + x, params, u)
            out.append(u)
    return out, state


def _vs_optax(ours, theirs, seed=0):
    params, grads = _data(seed, steps=20)
    a, state = _run(ours, params, grads)
    b, ostate = _run(theirs, params, grads, "standard")
    top = {k: max(float(np.max(np.abs(u[k]))) for u in b) for k in SHAPES}
    for step, (ua, ub) in enumerate(zip(a, b), 1):
        for k in SHAPES:
            assert ua[k].dtype == ub[k].dtype == jnp.float32
            scale = top[k]
            np.testing.assert_allclose(
                ua[k], ub[k], rtol=2e-5, atol=2e-6 * scale, err_msg=f"{k} step {step}"
            )
    assert max(float(jnp.max(jnp.abs(u[k]))) for u in a for k in SHAPES) > 1e-4
    return state, ostate


def _vs_oracle(tx, oracle, seed=1):
    """``tx`` (float32) against ``oracle(params, grads) -> updates`` (float64), STEPS steps."""
    params, grads = _data(seed)
    ours, _ = _run(tx, params, grads)
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    g64 = [{k: np.asarray(v, np.float64) for k, v in g.items()} for g in grads]
    ref = oracle(p64, g64)
    seen = dict.fromkeys(SHAPES, 0.0)
    for step, (a, d) in enumerate(zip(ours, ref), 1):
        for k in SHAPES:
            seen[k] = max(seen[k], float(np.max(np.abs(d[k]))))
            np.testing.assert_allclose(
                np.asarray(a[k], np.float64), d[k], rtol=1e-5, atol=1e-6 * seen[k],
                err_msg=f"{k} step {step}",
            )  # fmt: skip


def _per_leaf(params, grads, step):
    """Runs ``step(k, g, p, t, state) -> (u, state)`` per leaf; params follow the updates."""
    state: dict = {k: {} for k in params}
    out = []
    for t, g in enumerate(grads, 1):
        u = {}
        for k in params:
            u[k], state[k] = step(g[k], params[k], t, state[k])
        params = {k: params[k] + u[k] for k in params}
        out.append(u)
    return out


# --- ADOPT -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [{}, {"b1": 0.8, "b2": 0.999, "eps": 1e-3, "nesterov": True, "use_clipping": False}],
    ids=["defaults", "nesterov_no_clipping"],
)
def test_adopt_matches_optax(kw):
    state, ostate = _vs_optax(gradtx.adopt(0.01, **kw), contrib.adopt(0.01, **kw))
    o = ostate[0]
    for k in SHAPES:
        np.testing.assert_allclose(state.knobs.mu[k], o.mu[k], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.knobs.nu[k], o.nu[k], rtol=3e-5, atol=1e-9)
    assert int(state.knobs.count) == int(o.count) == 20


def _adopt_oracle(lr, b1, b2, eps, clip):
    """Taniguchi et al. 2024, Algorithm 2 (with clipping): v_0 = g_0², no step at t = 0; then
    m = β1 m + (1-β1) clip(g / max(√v, ε), c_t), θ -= η m, v = β2 v + (1-β2) g²; c_t = t^¼
    with t the number of steps already taken."""
    b1, b2, eps = as32(b1), as32(b2), as32(eps)

    def step(g, p, t, s):
        if t == 1:
            return np.zeros_like(g), {"m": np.zeros_like(g), "v": g * g}
        u = g / np.maximum(np.sqrt(s["v"]), eps)
        if clip:
            u = np.clip(u, -((t - 1) ** 0.25), (t - 1) ** 0.25)
        m = b1 * s["m"] + (1 - b1) * u
        return -lr * m, {"m": m, "v": b2 * s["v"] + (1 - b2) * g * g}

    return lambda params, grads: _per_leaf(params, grads, step)


@pytest.mark.parametrize("clip", [True, False], ids=["clipped", "unclipped"])
def test_adopt_matches_the_papers_rule(clip):
    tx = gradtx.adopt(0.01, b2=0.99, use_clipping=clip)
    _vs_oracle(tx, _adopt_oracle(0.01, 0.9, 0.99, 1e-6, clip))


# --- AdEMAMix ----------------------------------------------------------------------------------


def test_ademamix_matches_optax():
    mask = {"w": True, "b": False, "s": False}
    kw = {"b3": 0.99, "alpha": 3.0, "eps_root": 1e-8, "weight_decay": 0.1, "mask": mask}
    state, ostate = _vs_optax(gradtx.ademamix(0.01, **kw), contrib.ademamix(0.01, **kw))
    o = ostate[0]
    for k in SHAPES:
        for ours, theirs in (("m1", o.m1), ("m2", o.m2)):
            np.testing.assert_allclose(state.knobs[ours][k], theirs[k], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.knobs.nu[k], o.nu[k], rtol=3e-5, atol=1e-9)


def test_ademamix_schedules_match_optax_given_the_same_functions():
    """The paper's warmups against optax given them as plain functions of the count."""
    tx = gradtx.ademamix(0.01, b3=0.999, alpha=4.0, alpha_warmup_steps=10, b3_warmup_steps=15)
    lo, hi = np.log(0.9), np.log(0.999)

    def b3(count):
        f = jnp.minimum(count / 15.0, 1.0)
        return jnp.where(f < 1, jnp.exp(lo * hi / ((1 - f) * hi + f * lo)), 0.999)

    theirs = contrib.ademamix(0.01, b3=b3, alpha=lambda c: jnp.minimum(4.0 * c / 10, 4.0))
    _vs_optax(tx, theirs, seed=2)


def test_the_b3_warmup_is_the_papers_formula():
    """Half-life warmup: β(0) = β1, β(T) = β3, and the half-life 1/log(1/β) is linear in s."""
    sched = gradtx.ademamix(0.01, b3=0.9999, b3_warmup_steps=100).knobs.direction.b3
    steps = np.arange(0, 120)
    got = np.asarray([float(sched(jnp.int32(s))) for s in steps[::7]], np.float64)
    f = np.minimum(steps[::7] / 100.0, 1.0)
    ref = np.exp(np.log(0.9) * np.log(0.9999) / ((1 - f) * np.log(0.9999) + f * np.log(0.9)))
    np.testing.assert_allclose(got, ref, rtol=5e-7)  # evaluated in float32: a few ulps
    half_life = 1 / np.log(1 / got[f < 1])
    np.testing.assert_allclose(np.diff(half_life, 2), 0, atol=1e-3 * half_life.max())


def _ademamix_oracle(lr, b1, b2, b3_schedule, alpha, eps, wd, t_alpha):
    """Pagliardini et al. 2024, Algorithm 1: m1 = EMA(β1) debiased, m2 = EMA(β3) not, v =
    EMA(β2) debiased; θ -= η((m̂1 + α m2)/(√v̂ + ε) + λθ); α warmed up linearly over T steps.
    β3 is gradtx's schedule's float32 value at each step: that schedule is checked against the
    paper's formula in test_the_b3_warmup_is_the_papers_formula (to a few float32 ulps, which
    1 - β3 ~ 1e-3 would magnify 1,000 times here)."""
    b1, b2, eps = as32(b1), as32(b2), as32(eps)

    def sched(t):
        s = t - 1  # updates already applied
        a = float(np.float32(alpha * min(s / t_alpha, 1.0)))
        return a, float(b3_schedule(jnp.int32(s)))

    def step(g, p, t, s):
        a, b = sched(t)
        m1 = b1 * s.get("m1", 0.0) + (1 - b1) * g
        m2 = b * s.get("m2", 0.0) + (1 - b) * g
        v = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        num = m1 / (1 - b1**t) + a * m2
        u = -lr * (num / (np.sqrt(v / (1 - b2**t)) + eps) + wd * p)
        return u, {"m1": m1, "m2": m2, "v": v}

    return lambda params, grads: _per_leaf(params, grads, step)


def test_ademamix_matches_the_papers_rule_with_its_schedulers():
    tx = gradtx.ademamix(
        0.01, b3=0.999, alpha=4.0, weight_decay=0.1, alpha_warmup_steps=10, b3_warmup_steps=15
    )
    b3 = tx.knobs.direction.b3
    _vs_oracle(tx, _ademamix_oracle(0.01, 0.9, 0.999, b3, 4.0, 1e-8, 0.1, 10))


# --- cautious ---------------------------------------------------------------------------------


def _cautious_adamw_oracle(lr, b1, b2, eps, wd, floor=1e-3):
    """Liang et al. 2024, C-AdamW: u = -η(m̂/(√v̂ + ε) + λθ); φ = 1[u·g < 0]; u ← φu / max(mean
    φ, 10⁻³) per array."""
    b1, b2, eps = as32(b1), as32(b2), as32(eps)

    def step(g, p, t, s):
        m = b1 * s.get("m", 0.0) + (1 - b1) * g
        v = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        u = -lr * ((m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * p)
        phi = (u * g < 0).astype(np.float64)
        return phi * u / max(phi.mean(), floor), {"m": m, "v": v}

    return lambda params, grads: _per_leaf(params, grads, step)


def test_cautious_adamw_matches_the_papers_rule():
    tx = gradtx.cautious(gradtx.adamw(0.01, weight_decay=0.1))
    _vs_oracle(tx, _cautious_adamw_oracle(0.01, 0.9, 0.999, 1e-8, 0.1), seed=3)


def test_cautious_descends_and_wraps_optax_too():
    params, grads = _data(4, steps=6)
    ours, _ = _run(gradtx.cautious(gradtx.adam(0.01)), params, grads)
    theirs, state = _run(gradtx.cautious(optax.adam(0.01)), params, grads, "standard")
    assert list(state) == ["inner_state"]
    kept = 0
    for u, v, g in zip(ours, theirs, grads):
        for k in SHAPES:
            np.testing.assert_allclose(u[k], v[k], rtol=2e-5, atol=1e-8)
            assert float(jnp.sum(u[k] * g[k])) <= 0  # never up the gradient, to first order
            kept += int(jnp.sum(u[k] != 0))
    assert 0 < kept < 6 * 16  # some coordinates masked, some kept


def test_cautious_masks_to_zero_without_nan_and_runs_packed():
    tx = gradtx.cautious(gradtx.sgd(0.1, momentum=0.9))
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    state = tx.init(params)
    up = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    _, state = tx.update(up, state, params)
    # the momentum still points up every coordinate of b: all of b masked -> zeros, not NaN
    mixed = {"w": jnp.asarray(np.where(np.arange(12) % 2, 1.0, -0.01).reshape(4, 3), jnp.float32),
             "b": -0.01 * jnp.ones(3)}  # fmt: skip
    u, _ = tx.update(mixed, state, params)
    assert np.all(np.asarray(u["b"]) == 0)
    # on a packed tree the mean is per leaf: the same updates as unpacked
    packed = gradtx.pack(params, threshold=None)
    pstate = tx.init(packed)
    _, pstate = tx.update(gradtx.pack(up, threshold=None), pstate, packed)
    pu, _ = tx.update(gradtx.pack(mixed, threshold=None), pstate, packed)
    got = gradtx.unpack(pu)
    for k in params:
        np.testing.assert_allclose(got[k], u[k], rtol=1e-6, atol=0)
    # 6 of w's 12 coordinates are kept, each scaled by 12/6
    np.testing.assert_allclose(np.sum(u["w"] != 0), 6)


# --- convergence, signatures, knobs --------------------------------------------------------------


def _quadratic(p):
    x, y = p["xy"][0], p["xy"][1]
    return 0.5 * (x * x + 100.0 * y * y)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.adopt(gradtx.schedules.linear(0.05, 0.0, 1500)),
        lambda: gradtx.ademamix(0.02, b3=0.999, alpha_warmup_steps=500, b3_warmup_steps=500),
        lambda: gradtx.cautious(gradtx.adamw(0.03)),
    ],
    ids=["adopt", "ademamix", "cautious_adamw"],
)
def test_converges_on_an_ill_conditioned_quadratic(make):
    """``½(x² + 100y²)`` from (1, 1), 1,500 steps (tests/test_convergence.py's problem): below
    1e-3, i.e. real progress along the direction of curvature 1."""
    tx = make()

    @jax.jit
    def run(xy):
        def body(c, _):
            p, s = c
            u, s = tx.update(jax.grad(_quadratic)(p), s, p)
            return (gradtx.apply_updates(p, u), s), None

        p = {"xy": xy}
        return _quadratic(jax.lax.scan(body, (p, tx.init(p)), None, length=1500)[0][0])

    assert float(run(jnp.array([1.0, 1.0]))) < 1e-3


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (gradtx.adopt, contrib.adopt),
        (gradtx.scale_by_adopt, contrib.scale_by_adopt),
        (gradtx.ademamix, contrib.ademamix),
        (gradtx.scale_by_ademamix, contrib.scale_by_ademamix),
    ],
    ids=["adopt", "scale_by_adopt", "ademamix", "scale_by_ademamix"],
)
def test_signature_is_optax_contribs(ours, theirs):
    """optax's parameters, kinds, order and defaults; gradtx's own are keyword-only. The
    default ``clip_value_fn`` is a value here (a schedule), a lambda there: equal outputs."""
    a, b = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
    assert list(a)[: len(b)] == list(b)
    for name, p in b.items():
        assert a[name].kind == p.kind, name
        if name == "clip_value_fn":
            with jax.numpy_dtype_promotion("standard"):
                assert float(a[name].default(16)) == float(p.default(16)) == 2.0
        else:
            assert a[name].default == p.default, name
    assert all(q.kind == inspect.Parameter.KEYWORD_ONLY for q in list(a.values())[len(b) :])


def test_describe_says_which_knobs():
    d = gradtx.adopt(1e-3).describe()
    assert d["order"] == "σ then g" and d["sigma"].startswith("AdoptScale(")
    assert d["g"].startswith("AdoptMomentum(") and "no bias correction" in d["g"]
    d = gradtx.ademamix(1e-3).describe()
    assert d["g"].startswith("AdEMAMixMomentum(") and d["sigma"].startswith("AdamScale(")
    with pytest.raises(ValueError, match=r"gradtx\.ademamix: alpha_warmup_steps"):
        gradtx.ademamix(1e-3, alpha=lambda c: 1.0, alpha_warmup_steps=10)
    with pytest.raises(ValueError, match=r"gradtx\.adopt \(adopt_scale\): b2"):
        gradtx.adopt(1e-3, b2=1.0)
