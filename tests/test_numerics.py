"""Numerics of the σ knobs and the norm-based stages (issue 9: F01, F04, F06, F07, F10, F15).

float16 second moments, huge finite gradients, meta-gradients through a zero gradient element,
the bfloat16 drift, Adafactor's buffers under donation and sharding, traced ``decay_offset``,
``RMSPropScale(bias_correction=)``, ``adaptive_grad_clip(axis=)`` and optax's signatures.
Oracles: NumPy float64 (``tests/oracles.py``), optax and finite differences; tolerances at each
call.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from oracles import ClipByGlobalNorm, build, run

import gradtx

optax = pytest.importorskip("optax")


def _std():
    """optax is not written for strict dtype promotion (see tests/test_vs_optax.py)."""
    return jax.numpy_dtype_promotion("standard")


def _steps(tx, params, grads, *, jit=True):
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    out = []
    for g in grads:
        u, state = update(g, state, params)
        params = jax.tree.map(lambda p, x: (p + x).astype(p.dtype), params, u)
        out.append(u)
    return out, state


def _slot_leaves(state, names):
    """(path, leaf) of every state leaf whose path names one of the slots ``names``."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        key = jax.tree_util.keystr(path)
        if any(f".{n}" in key or f"'{n}'" in key for n in names):
            out.append((key, leaf))
    return out


SECOND_MOMENTS = ("nu", "nu_max", "sum_of_squares", "delta_nu", "v_row", "v_col", "v")

# (name, factory): optimizers with a second-moment-like slot.
FLOAT16_CASES = [
    ("adam", lambda: gradtx.adam(1e-2)),
    ("amsgrad", lambda: gradtx.amsgrad(1e-2)),
    ("adabelief", lambda: gradtx.adabelief(1e-2)),
    ("yogi", lambda: gradtx.yogi(1e-2)),
    ("radam", lambda: gradtx.radam(1e-2)),
    ("rmsprop", lambda: gradtx.rmsprop(1e-2)),
    ("adagrad", lambda: gradtx.adagrad(1e-2)),
    ("adadelta", lambda: gradtx.adadelta(1.0)),
    ("adafactor", lambda: gradtx.adafactor(1e-2, min_dim_size_to_factor=2)),
    ("adafactor_full", lambda: gradtx.adafactor(1e-2)),
]


# --- F04: float16 params store second moments in float32 ------------------------------------
@pytest.mark.parametrize("name,factory", FLOAT16_CASES, ids=[c[0] for c in FLOAT16_CASES])
def test_float16_second_moments_in_float32(name, factory):
    """|g| = 300 squares to 9e4 > float16's max (65504): float16 params still train, their
    updates equal the float32 run's to float16 precision (rtol 2e-3 = 2 float16 ulps), and every
    second-moment slot is float32 (first moments keep float16)."""
    rng = np.random.default_rng(0)
    signs = [np.sign(rng.normal(size=(4, 3))) for _ in range(3)]
    init = jnp.asarray(rng.normal(size=(4, 3)), jnp.float16)  # exact in both dtypes
    out = {}
    for dt in (jnp.float16, jnp.float32):
        params = {"w": init.astype(dt)}
        grads = [{"w": jnp.asarray(300 * s, dt)} for s in signs]
        out[dt], state = _steps(factory(), params, grads, jit=False)
        if dt == jnp.float16:
            moments = _slot_leaves(state, SECOND_MOMENTS)
            assert moments, name
            for key, leaf in moments:
                assert leaf.dtype == jnp.float32, (name, key)
            for key, leaf in _slot_leaves(state, ("mu",)):
                assert leaf.dtype == jnp.float16, (name, key)
    for u16, u32 in zip(out[jnp.float16], out[jnp.float32]):
        assert u16["w"].dtype == jnp.float16
        assert np.all(np.isfinite(np.asarray(u16["w"], np.float32)))
        assert float(jnp.max(jnp.abs(u32["w"]))) > 1e-4  # not vacuous
        ref = np.asarray(u32["w"].astype(jnp.float16), np.float32)
        np.testing.assert_allclose(np.asarray(u16["w"], np.float32), ref, rtol=2e-3, atol=1e-6)


# --- F06: huge finite float32 gradients --------------------------------------------------------
HUGE_CASES = [
    ("adam", {"learning_rate": 0.1}),
    ("amsgrad", {"learning_rate": 0.1}),
    ("adabelief", {"learning_rate": 0.1}),
    ("yogi", {"learning_rate": 0.1}),
    ("radam", {"learning_rate": 0.1}),
    ("nadam", {"learning_rate": 0.1}),
]


@pytest.mark.parametrize("name,kwargs", HUGE_CASES, ids=[c[0] for c in HUGE_CASES])
def test_huge_gradients_match_float64(name, kwargs):
    """|g| ~ 1e20 in float32 (g² = 1e40 overflows float32): the updates equal the NumPy float64
    oracle's (rtol 1e-5) at every one of 4 steps; Adam's first step is -η·sign(g)."""
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(6,)), jnp.float32)}
    grads = [
        {"w": jnp.asarray(1e20 * rng.uniform(0.5, 2, 6) * np.sign(rng.normal(size=6)), jnp.float32)}
        for _ in range(4)
    ]
    ours, _ = _steps(getattr(gradtx, name)(**kwargs), params, grads)
    ref, _ = run(build(name, kwargs, params), params, grads)
    for step, (a, b) in enumerate(zip(ours, ref), 1):
        assert np.all(np.isfinite(a["w"])), (name, step)
        scale = np.max(np.abs(b["w"]))
        np.testing.assert_allclose(a["w"], b["w"], rtol=1e-5, atol=1e-6 * scale, err_msg=f"{step}")
    if name == "adam":
        np.testing.assert_allclose(ours[0]["w"], -0.1 * np.sign(grads[0]["w"]), rtol=1e-6)


@pytest.mark.parametrize("scale", [1e20, 1e-25, 1.0])
def test_global_norm_and_clip_scaled(scale):
    """global_norm and clip_by_global_norm agree with float64 for gradients whose squares
    overflow (1e20) or underflow (1e-25) float32, and on the fast path (1): rtol 1e-6."""
    rng = np.random.default_rng(2)
    grads = {"a": rng.normal(size=(5, 3)) * scale, "b": rng.normal(size=(4,)) * scale}
    g32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads)
    g64 = jax.tree.map(lambda x: np.asarray(x, np.float32).astype(np.float64), g32)
    ref_norm = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g64)))
    np.testing.assert_allclose(float(gradtx.global_norm(g32)), ref_norm, rtol=1e-6)
    np.testing.assert_allclose(float(jax.jit(gradtx.global_norm)(g32)), ref_norm, rtol=1e-6)
    tx = gradtx.clip_by_global_norm(1.0)
    u, _ = jax.jit(tx.update)(g32, tx.init(g32))
    ref, _ = ClipByGlobalNorm(1.0).step(jax.tree.leaves(g64), None, None, 1)
    for x, r in zip(jax.tree.leaves(u), ref):
        np.testing.assert_allclose(x, r, rtol=1e-5, atol=1e-7 * np.max(np.abs(r)))
    np.testing.assert_allclose(float(gradtx.global_norm(u)), min(1.0, ref_norm), rtol=1e-5)


def test_global_norm_special_values():
    """Non-finite entries still give inf / nan, all-zero gives 0, and no entry is lost."""
    f = jnp.float32
    assert float(gradtx.global_norm({"a": jnp.array([jnp.inf, 1.0], f)})) == np.inf
    assert np.isnan(float(gradtx.global_norm({"a": jnp.array([jnp.nan, 1e20], f)})))
    assert float(gradtx.global_norm({"a": jnp.zeros(3, f)})) == 0.0
    assert float(gradtx.global_norm({})) == 0.0


def test_clip_by_global_norm_grad_at_zero_is_finite():
    """d/dg of a loss through clip_by_global_norm at g = 0 is finite (safe root, double where)."""
    tx = gradtx.clip_by_global_norm(1.0)

    def f(g):
        u, _ = tx.update({"a": g}, tx.init(None))
        return jnp.sum(u["a"])

    d = jax.grad(f)(jnp.zeros(3, jnp.float32))
    np.testing.assert_array_equal(d, np.ones(3))


# --- F15: meta-gradients through a zero gradient element -------------------------------------
META_CASES = [
    ("adam", lambda lr: gradtx.adam(lr)),
    ("amsgrad", lambda lr: gradtx.amsgrad(lr)),
    ("nadam", lambda lr: gradtx.nadam(lr)),
    ("radam", lambda lr: gradtx.radam(lr)),
    ("rmsprop", lambda lr: gradtx.rmsprop(lr)),
    ("rmsprop_centered", lambda lr: gradtx.rmsprop(lr, centered=True)),
    ("adagrad", lambda lr: gradtx.adagrad(lr, initial_accumulator_value=0.0)),
    ("adabelief", lambda lr: gradtx.adabelief(lr, eps_root=0.0)),
    ("yogi", lambda lr: gradtx.yogi(lr, initial_accumulator_value=0.0)),
    ("lamb", lambda lr: gradtx.lamb(lr)),
    ("adafactor", lambda lr: gradtx.adafactor(lr, min_dim_size_to_factor=2)),
]


@pytest.mark.parametrize("name,factory", META_CASES, ids=[c[0] for c in META_CASES])
def test_meta_gradient_with_zero_gradient_element(name, factory):
    """d(loss after 3 steps)/d(learning rate) with one gradient element always exactly 0 is
    finite and equals a central finite difference (float32, h = 1e-3: rtol 2e-2)."""
    target = jnp.array([[1.0, 0.0, 2.0], [-1.0, 0.0, 0.5]], jnp.float32)
    weight = jnp.array([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]], jnp.float32)  # column 1: grad 0

    def loss(w):
        return 0.5 * jnp.sum(weight * (w - target) ** 2)

    def final_loss(lr):
        tx = factory(lr)
        w = {"w": jnp.zeros((2, 3), jnp.float32) + 0.3}
        state = tx.init(w)
        for _ in range(3):
            g = jax.grad(lambda p: loss(p["w"]))(w)
            u, state = tx.update(g, state, w)
            w = gradtx.apply_updates(w, u)
        return loss(w["w"])

    lr, h = 0.05, 1e-3
    d = jax.jit(jax.grad(final_loss))(jnp.float32(lr))
    assert np.isfinite(float(d)), name
    fd = (final_loss(jnp.float32(lr + h)) - final_loss(jnp.float32(lr - h))) / (2 * h)
    assert abs(float(fd)) > 1e-2  # not vacuous
    np.testing.assert_allclose(float(d), float(fd), rtol=2e-2)


def test_safe_sqrt():
    """Value of sqrt; derivative 1/(2√x) for x > 0 and 0 at x = 0 (forward and reverse)."""
    from gradtx._core.numerics import safe_sqrt

    x = jnp.array([0.0, 4.0], jnp.float32)
    np.testing.assert_array_equal(safe_sqrt(x), [0.0, 2.0])
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(safe_sqrt(v)))(x), [0.0, 0.25])
    _, t = jax.jvp(safe_sqrt, (x,), (jnp.ones(2, jnp.float32),))
    np.testing.assert_array_equal(t, [0.0, 0.25])


# --- F07: bfloat16 second moments drift upwards (documented) ---------------------------------
def test_bfloat16_second_moment_drifts_up_as_documented():
    """The documented claim (AdamScale's warning, docs/nan_inf.md): with bfloat16 params and
    standard normal gradients (E[g²] = 1), Adam's bfloat16 ``nu`` averages ~1.58 after 5,000
    steps where the exact EMA is 1 - 0.999**5000 = 0.993; float32's stays within 3 %."""
    tx = gradtx.adam(1e-3)
    key = jax.random.PRNGKey(0)

    def mean_nu(dtype):
        p = {"w": jnp.zeros((64,), dtype)}

        def body(i, s):
            g = jax.random.normal(jax.random.fold_in(key, i), (64,), jnp.float32)
            return tx.update({"w": g.astype(dtype)}, s, p)[1]

        s = jax.jit(lambda s: jax.lax.fori_loop(0, 5000, body, s))(tx.init(p))
        ((_, nu),) = _slot_leaves(s, ("nu",))
        return float(jnp.mean(nu.astype(jnp.float32)))

    exact = 1 - 0.999**5000
    assert 1.4 < mean_nu(jnp.bfloat16) < 1.75  # upwards, by ~60 %
    np.testing.assert_allclose(mean_nu(jnp.float32), exact, rtol=3e-2)


# --- F01, F10: Adafactor's buffers ---------------------------------------------------------
def _adafactor_params():
    return {"w": jnp.ones((4, 3), jnp.float32), "b": jnp.ones((3,), jnp.float32)}


@pytest.mark.parametrize("min_dim", [2, 128], ids=["factored", "full"])
def test_adafactor_state_leaves_are_distinct_buffers_and_donatable(min_dim):
    """Every state leaf is its own buffer, so donating the state to a jitted step works."""
    params = _adafactor_params()
    tx = gradtx.adafactor(1e-2, min_dim_size_to_factor=min_dim)
    state = tx.init(params)
    leaves = jax.tree.leaves(state)
    ptrs = [x.unsafe_buffer_pointer() for x in leaves]
    assert len(set(ptrs)) == len(ptrs)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p), donate_argnums=(1,))
    ref_u, _ = tx.update(params, tx.init(params), params)
    for _ in range(2):
        u, state = step(params, state, params)
    assert np.all(np.isfinite(u["w"]))
    assert float(jnp.max(jnp.abs(ref_u["w"]))) > 0


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit_mesh", "auto_mesh"])
def test_adafactor_sharded_state_compiles_once(explicit):
    """Params sharded over the 8-device mesh: Adafactor's statistics (factored and not, and the
    placeholders) are created with the sharding the jitted step returns, so feeding the state
    back neither retraces nor recompiles."""
    devices = np.array(jax.devices()[:8])
    if explicit:
        mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
    else:
        mesh = jax.sharding.Mesh(devices, ("x",))
    params = {
        "w": jax.device_put(jnp.ones((8, 16), jnp.float32), NamedSharding(mesh, P("x", None))),
        "b": jax.device_put(jnp.ones((16,), jnp.float32), NamedSharding(mesh, P())),
    }
    tx = gradtx.adafactor(1e-2, min_dim_size_to_factor=2)
    state = tx.init(params)
    # The step counter's placement is H3's (tests/test_hardening.py); place it as the step
    # returns it here, so this test sees only the statistics.
    count = jax.tree.leaves(state)[0]
    assert count.ndim == 0
    state = jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, P())) if x.ndim == 0 else x, state
    )
    traces = []

    def f(g, s, p):
        traces.append(1)
        return tx.update(g, s, p)

    step = jax.jit(f)
    new = state
    for _ in range(3):
        _, new = step(params, new, params)
    assert len(traces) == 1
    assert step._cache_size() == 1
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new)):
        assert a.sharding == b.sharding, (a.sharding, b.sharding)
    assert any(leaf.sharding.spec == P("x") for _, leaf in _slot_leaves(state, ("v_row",)))


# --- decay_offset is a traced hyperparameter -------------------------------------------------
def _factored(decay_offset):
    scale = gradtx.FactoredScale(
        decay_offset=decay_offset, min_dim_size_to_factor=2, clipping_threshold=None
    )
    return gradtx.Knobs(scale=scale)


def _random_grads(params, n=3):
    rng = np.random.default_rng(5)
    return [
        jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
        for _ in range(n)
    ]


def _two_steps(tx, params, grads):
    state = tx.init(params)
    for g in grads:
        u, state = tx.update(g, state, params)
    return u


def test_decay_offset_traced_under_vmap():
    """jax.vmap over decay_offset equals one run per concrete offset (rtol 1e-6)."""
    params = _adafactor_params()
    grads = _random_grads(params)
    offsets = jnp.array([0, 2], jnp.int32)
    batched = jax.vmap(lambda off: _two_steps(_factored(off), params, grads))(offsets)
    for i, off in enumerate([0, 2]):
        ref = _two_steps(_factored(off), params, grads)
        for k in params:
            np.testing.assert_allclose(batched[k][i], ref[k], rtol=1e-6)
    a, b = (_two_steps(_factored(o), params, grads)["w"] for o in (0, 2))
    assert not np.allclose(a, b)  # the offset matters


def test_decay_offset_inject_hyperparams():
    """optax.inject_hyperparams over decay_offset (traced inside the jitted update) equals the
    plain transformation (rtol 1e-6)."""
    params = _adafactor_params()
    grads = _random_grads(params)
    injected = optax.inject_hyperparams(_factored)(decay_offset=2)
    with _std():
        state = injected.init(params)
        update = jax.jit(injected.update)
        for g in grads:
            u, state = update(g, state, params)
    ref = _two_steps(_factored(2), params, grads)
    np.testing.assert_allclose(u["w"], ref["w"], rtol=1e-6)


@pytest.mark.parametrize("bad", [1.5, -1, float("inf")])
def test_decay_offset_validated_when_concrete(bad):
    with pytest.raises(ValueError, match=r"gradtx\.factored_scale: decay_offset"):
        gradtx.FactoredScale(decay_offset=bad)


def test_decay_offset_concrete_stays_int():
    assert gradtx.FactoredScale(decay_offset=3).decay_offset == 3
    assert isinstance(gradtx.FactoredScale(decay_offset=3.0).decay_offset, int)


# --- RMSPropScale(bias_correction=) ----------------------------------------------------------
@pytest.mark.parametrize("eps_in_sqrt", [True, False])
@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_bias_correction_vs_optax(eps_in_sqrt, centered):
    """RMSPropScale(bias_correction=True) against optax.scale_by_rms / scale_by_stddev with
    bias_correction=True over 6 steps (rtol 1e-5, atol 1e-7). Centred, the debiased variance
    at step 1 is exactly 0 and both sides hold only rounding residues (~1e-7·g²), whose root
    is compared to eps outside the root: that step is compared to rtol 2e-2."""
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)} for _ in range(6)]
    kw = {"decay": 0.9, "eps": 0.05, "eps_in_sqrt": eps_in_sqrt, "bias_correction": True}
    ours = gradtx.Knobs(scale=gradtx.RMSPropScale(centered=centered, **kw))
    theirs = (optax.scale_by_stddev if centered else optax.scale_by_rms)(**kw)
    a, _ = _steps(ours, params, grads, jit=False)
    with _std():
        b, _ = _steps(theirs, params, grads, jit=False)
    for step, (ua, ub) in enumerate(zip(a, b), 1):
        loose = centered and not eps_in_sqrt and step == 1
        tol = {"rtol": 2e-2} if loose else {"rtol": 1e-5, "atol": 1e-7}
        np.testing.assert_allclose(ua["w"], ub["w"], **tol, err_msg=f"step {step}")
    plain, _ = _steps(
        gradtx.Knobs(scale=gradtx.RMSPropScale(**{**kw, "bias_correction": False})),
        params,
        grads,
        jit=False,
    )
    assert not np.allclose(plain[0]["w"], a[0]["w"])  # the option matters


def test_rmsprop_bias_correction_keeps_a_count():
    tx = gradtx.Knobs(scale=gradtx.RMSPropScale(bias_correction=True))
    assert "count" in tx.init({"w": jnp.ones(2)})
    assert "count" not in gradtx.Knobs(scale=gradtx.RMSPropScale()).init({"w": jnp.ones(2)})


# --- adaptive_grad_clip(axis=) ---------------------------------------------------------------
AGC_SHAPES = [(5,), (1, 6), (4, 3), (2, 3, 4), (2, 2, 3, 4), (2, 2, 2, 3, 2)]


AGC_CASES = [
    (shape, axis)
    for shape in AGC_SHAPES
    for axis in (None, 0, -1, (0, 1))
    if not (isinstance(axis, tuple) and len(shape) < 2)  # axis (0, 1) needs two axes
]


@pytest.mark.parametrize(("shape", "axis"), AGC_CASES, ids=[f"{s}-{a}" for s, a in AGC_CASES])
def test_adaptive_grad_clip_vs_optax(shape, axis):
    """adaptive_grad_clip's units (axis=None: optax's rule by rank) equal optax's: rtol 1e-6."""
    rng = np.random.default_rng(4)
    params = {"p": jnp.asarray(rng.normal(size=shape), jnp.float32)}
    g = {"p": jnp.asarray(3 * rng.normal(size=shape), jnp.float32)}
    ours = gradtx.adaptive_grad_clip(0.05, 1e-3, axis)
    theirs = optax.adaptive_grad_clip(0.05, 1e-3, axis)
    a, _ = ours.update(g, ours.init(params), params)
    with _std():
        b, _ = theirs.update(g, theirs.init(params), params)
    np.testing.assert_allclose(a["p"], b["p"], rtol=1e-6, atol=1e-8)
    assert not np.allclose(a["p"], g["p"])  # something was clipped


def test_adaptive_grad_clip_rank6_needs_axis():
    p = {"p": jnp.ones((1, 2, 1, 2, 1, 2), jnp.float32)}
    tx = gradtx.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match=r"adaptive_grad_clip.*axis="):
        tx.update(p, tx.init(p), p)
    u, _ = gradtx.adaptive_grad_clip(0.1, axis=(0, 1)).update(p, tx.init(p), p)
    assert u["p"].shape == p["p"].shape


# --- signatures as optax's -------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "clip",
        "clip_by_global_norm",
        "clip_by_block_rms",
        "adaptive_grad_clip",
        "add_decayed_weights",
        "scale_by_trust_ratio",
        "global_norm",
    ],
)
def test_signature_matches_optax(name):
    """optax's parameters, in its order, with its defaults; gradtx-only ones keyword-only."""
    ours = inspect.signature(getattr(gradtx, name)).parameters
    theirs = inspect.signature(getattr(optax, name)).parameters
    shared = [p for p in ours.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in shared] == list(theirs)
    for p in shared:
        assert p.kind == theirs[p.name].kind, p.name
        assert p.default == theirs[p.name].default, p.name
