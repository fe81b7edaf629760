"""Muon (gradtx.muon, scale_by_muon, orthogonalize): optax, a NumPy float64 oracle, one batched
Newton–Schulz iteration per matrix shape, the shape rule and its overrides, convergence.

Tolerances, all float32 unless said: against ``optax.contrib.muon`` ``rtol=2e-5`` with ``atol =
2e-6 × max |update|`` (bias corrections are ``-expm1(t·log β)`` here, ``1 - β**t`` in optax: a
few float32 ulps apart, which Newton–Schulz's slope of ~3.4 at 0 amplifies a little for the
smallest singular values); against the float64 oracle ``rtol=1e-5`` with ``atol = 1e-5 × the
largest |value| so far`` of the leaf (five Newton–Schulz iterations in float32 are good to
~1e-6 of the update's scale).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

optax = pytest.importorskip("optax")
contrib = optax.contrib
MDN = contrib.MuonDimensionNumbers

STEPS = 20
SHAPES = {"a": (6, 4), "b": (5,), "c": (4, 6), "d": (3, 3)}


def _data(shapes=SHAPES, seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    scales = np.exp(rng.normal(scale=0.7, size=steps))
    grads = [
        {k: jnp.asarray(c * rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
        for c in scales
    ]
    return params, grads


def _run(tx, params, grads, promotion=None, jit=False):
    """Updates and the final state of ``tx``; params follow the updates. gradtx's runs eagerly
    (its compiled primitives are shared by every case, where a jitted Muon step compiles for
    seconds); optax's jitted (eagerly, its Newton–Schulz loop is traced anew at every step)."""
    with jax.numpy_dtype_promotion(promotion or "strict"):
        state = tx.init(params)
        update = jax.jit(tx.update) if jit else tx.update
        out = []
        for g in grads:
            u, state = update(g, state, params)
            params = jax.tree_util.tree_map(lambda p, x: p + x, params, u)
            out.append(u)
    return out, state


def _close(ours, theirs, what):
    for k in theirs:
        scale = float(np.max(np.abs(theirs[k])))
        np.testing.assert_allclose(ours[k], theirs[k], rtol=2e-5, atol=2e-6 * scale, err_msg=what)


SHAPES_3D = {"a": (6, 4), "b": (5,), "k": (2, 3, 4)}
CASES = [
    # gradtx's default view of a 3-D leaf, (∏ shape[:-1], shape[-1]), is optax's dims
    # ((0, 1), 2); a, c and k are then one stack of (4, 6) matrices
    (
        "defaults_3d_weight_decay_mask",
        SHAPES_3D,
        {
            "weight_decay": 0.1,
            "adam_weight_decay": 0.05,
            "weight_decay_mask": {"a": False, "b": False, "k": True},
        },
        {"muon_weight_dimension_numbers": {"a": MDN(), "b": None, "k": MDN((0, 1), 2)}},
    ),
    (
        "plain_momentum_rms_adaptive_aol_dion_adam_lr",
        {"a": (6, 4), "b": (5,), "c": (4, 6)},
        {
            "nesterov": False,
            "consistent_rms": 0.2,
            "adaptive": True,
            "beta": 0.9,
            "preconditioning": "aol",
            "ns_coeffs": "dion",
            "adam_learning_rate": 3e-3,
        },
        {},
    ),
]


@pytest.mark.parametrize("case, shapes, kw, optax_only", CASES, ids=[c[0] for c in CASES])
def test_muon_matches_optax(case, shapes, kw, optax_only):
    params, grads = _data(shapes)
    ours, state = _run(gradtx.muon(0.02, **kw), params, grads)
    tx = contrib.muon(0.02, **{**kw, **optax_only})
    theirs, ostate = _run(tx, params, grads, "standard", jit=True)
    for step, (a, b) in enumerate(zip(ours, theirs), 1):
        assert all(a[k].dtype == jnp.float32 for k in shapes)
        _close(a, b, f"{case} step {step}")
    assert max(float(jnp.max(jnp.abs(u[k]))) for u in ours for k in shapes) > 1e-3
    # the state: Muon's momentum of the matrices, Adam's moments of the rest
    o_muon = ostate.inner_states["muon"].inner_state[0]
    o_adam = ostate.inner_states["adam"].inner_state[0]
    for k in shapes:
        if len(shapes[k]) >= 2:
            ref, got = o_muon.mu[k], state.muon.mu[k]
            assert state.adam.mu[k] is None
        else:
            ref, got = o_adam.mu[k], state.adam.mu[k]
            # (1 - β2) is formed from float32 β2 here: 1.3e-5 relative off 0.001 at β2 = 0.999
            np.testing.assert_allclose(state.adam.nu[k], o_adam.nu[k], rtol=3e-5, atol=0)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7, err_msg=f"{case} mu[{k}]")
    assert int(state.muon.count) == int(o_muon.count) == STEPS


def test_every_preconditioning_matches_the_oracle():
    """``orthogonalize`` (float32) against the float64 iteration, for each normalisation; the
    (6, 4) and (2, 3, 4) leaves run as one stack of (4, 6) matrices, the oracle leaf by leaf."""
    rng = np.random.default_rng(6)
    g = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES_3D.items() if k != "b"}
    for pre in ("frobenius", "spectral", "aol", "schatten"):
        tx = gradtx.orthogonalize(preconditioning=pre)
        got, _ = tx.update(g, tx.init(g))
        for k, x in g.items():
            x = np.asarray(x, np.float64)
            ref = _ns(x.reshape(-1, x.shape[-1]), preconditioning=pre).reshape(x.shape)
            np.testing.assert_allclose(got[k], ref, rtol=1e-5, atol=1e-5, err_msg=f"{pre} {k}")


def test_scale_by_muon_is_the_orthogonalised_momentum():
    """No shape scaling, no η: NS(m̂) of the bias-corrected EMA (β = 0.9, no Nesterov)."""
    params, grads = _data({"a": (6, 4), "k": (2, 3, 4)}, seed=1, steps=4)
    ours, _ = _run(gradtx.scale_by_muon(beta=0.9, nesterov=False), params, grads)
    m = {k: np.zeros(np.shape(v)) for k, v in params.items()}
    for t, (u, g) in enumerate(zip(ours, grads), 1):
        for k, x in m.items():
            m[k] = 0.9 * x + 0.1 * np.asarray(g[k], np.float64)
            mh = m[k] / (1 - 0.9**t)
            ref = _ns(mh.reshape(-1, mh.shape[-1])).reshape(mh.shape)
            np.testing.assert_allclose(u[k], ref, rtol=1e-5, atol=1e-5, err_msg=f"{k} {t}")


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (gradtx.muon, contrib.muon),
        (gradtx.scale_by_muon, contrib.scale_by_muon),
    ],
    ids=["muon", "scale_by_muon"],
)
def test_signature_is_optax_contribs(ours, theirs):
    """Drop-in: optax's parameters, kinds, order and defaults; gradtx's own are keyword-only."""
    a, b = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
    assert list(a)[: len(b)] == list(b)
    for name, p in b.items():
        assert a[name].kind == p.kind, name
        assert a[name].default == p.default or (name == "ns_coeffs"), name
    assert ours.__defaults__ is None or all(
        q.kind == inspect.Parameter.KEYWORD_ONLY for q in list(a.values())[len(b) :]
    )
    assert tuple(a["ns_coeffs"].default) == tuple(b["ns_coeffs"].default)


# --- the NumPy float64 oracle ---------------------------------------------------------------


def _ns(m, steps=5, coeffs=(3.4445, -4.7750, 2.0315), eps=1e-8, preconditioning="frobenius"):
    """The quintic Newton–Schulz iteration on one matrix (transposed when tall), float64."""
    tall = m.shape[0] > m.shape[1]
    x = m.T if tall else m
    if preconditioning == "frobenius":
        x = x / (np.linalg.norm(x) + eps)
    elif preconditioning == "spectral":
        x = x / (np.linalg.norm(x, 2) + eps)
    a, b, c = coeffs
    for i in range(steps):
        gram = x @ x.T
        if i == 0 and preconditioning == "aol":  # rows scaled by their absolute sums in A
            s = 1 / np.sqrt(np.maximum(np.abs(gram).sum(axis=1), eps))
            x, gram = x * s[:, None], gram * s[:, None] * s[None, :]
        elif i == 0 and preconditioning == "schatten":  # by the Frobenius norm of A
            s = 1 / np.sqrt(max(np.linalg.norm(gram), eps))
            x, gram = x * s, gram * s**2
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def _muon_oracle(params, grads, lr, beta, wd, b1, b2, eps, adam_wd):
    """Muon (Nesterov, bias-corrected momentum, width scaling, decoupled decay) on >= 2-D leaves
    (a 3-D leaf as (∏ shape[:-1], shape[-1]); "t" as a stack of its two (3, 4) matrices),
    AdamW with Nesterov on the rest; float64."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    out = []
    for t, g in enumerate(grads, 1):
        u = {}
        for k, x in p.items():
            gk = np.asarray(g[k], np.float64)
            if x.ndim >= 2:
                m[k] = beta * m[k] + (1 - beta) * gk
                mh = beta * m[k] / (1 - beta ** (t + 1)) + (1 - beta) * gk / (1 - beta**t)
                mats = mh if k == "t" else mh.reshape(1, -1, x.shape[-1])
                scale = np.sqrt(max(1.0, mats.shape[2] / mats.shape[1]))
                orth = np.stack([_ns(m) for m in mats]).reshape(x.shape)
                u[k] = -lr * (scale * orth + wd * x)
            else:
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk**2
                mh = b1 * m[k] / (1 - b1 ** (t + 1)) + (1 - b1) * gk / (1 - b1**t)
                u[k] = -lr * (mh / (np.sqrt(v[k] / (1 - b2**t)) + eps) + adam_wd * x)
        p = {k: p[k] + u[k] for k in p}
        out.append(u)
    return out


def test_muon_matches_numpy_float64_oracle():
    shapes = {"a": (6, 4), "b": (5,), "k": (2, 3, 4), "t": (2, 3, 4), "s": ()}
    params, grads = _data(shapes, seed=2, steps=25)
    kw = {"weight_decay": 0.1, "adam_weight_decay": 0.05, "beta": 0.9, "adam_b1": 0.8}
    # "t" (and only "t") is a stack of two matrices: dimension numbers with a batch axis
    kw["muon_mask"] = None
    dims = {"a": MDN(), "b": None, "k": MDN((0, 1), 2), "t": MDN(1, 2), "s": None}
    kw["muon_weight_dimension_numbers"] = dims
    ours, _ = _run(gradtx.muon(0.02, **kw), params, grads)
    ref = _muon_oracle(params, grads, 0.02, 0.9, 0.1, 0.8, 0.999, 1e-8, 0.05)
    seen = dict.fromkeys(shapes, 0.0)
    for step, (a, d) in enumerate(zip(ours, ref), 1):
        for k in shapes:
            seen[k] = max(seen[k], float(np.max(np.abs(d[k]))))
            np.testing.assert_allclose(
                np.asarray(a[k], np.float64), d[k], rtol=1e-5, atol=1e-5 * seen[k],
                err_msg=f"step {step} {k}",
            )  # fmt: skip


# --- one batched iteration per matrix shape --------------------------------------------------


def _dots(fn, *args) -> int:
    return jax.make_jaxpr(fn)(*args).pretty_print().count("dot_general")


def test_one_newton_schulz_per_stack_of_equal_shapes():
    """24 equal layers (and their transposes) cost the dot_generals of one iteration (3 per
    Newton–Schulz step: X Xᵀ, A², B X), not 24 times that; the compiled HLO agrees."""
    one = {"w0": jnp.ones((8, 16))}
    layers = {f"w{i}": jnp.ones((8, 16) if i % 2 else (16, 8)) for i in range(24)}
    layers["bias"] = jnp.ones(16)  # an AdamW leaf: no dot at all
    tx = gradtx.muon(0.02)

    def step(p):
        return tx.update(p, tx.init(p), p)[0]

    assert _dots(step, one) == 15
    assert _dots(step, layers) == 15
    hlo = jax.jit(step).lower(layers).as_text()
    assert hlo.count("stablehlo.dot_general") == 15
    # two shapes: two stacks
    two = {**layers, "other": jnp.ones((4, 16))}
    assert _dots(step, two) == 30
    # the same holds for the stage alone with a 3-D leaf in the stack: (2, 4, 16) is (8, 16)
    orth = gradtx.orthogonalize()
    mixed = {"w": jnp.ones((8, 16)), "k": jnp.ones((2, 4, 16)), "t": jnp.ones((16, 8))}
    assert _dots(lambda p: orth.update(p, orth.init(p))[0], mixed) == 15


def test_packed_tree_runs_per_stack_and_agrees():
    params, grads = _data({"a": (6, 4), "b": (5,), "c": (6, 4), "d": (6, 4)}, seed=4, steps=2)
    tx = gradtx.muon(0.02, weight_decay=0.1)
    packed = gradtx.pack(params, threshold=None, tx=tx)
    ref, _ = _run(tx, params, grads)
    state = tx.init(packed)
    step = tx.update
    for k, g in enumerate(grads):
        gp = gradtx.pack(g, threshold=None, tx=tx)
        assert gp.layout == packed.layout
        u, state = step(gp, state, packed)
        packed = gradtx.apply_updates(packed, u)
        got = gradtx.unpack(u)
        for name in params:
            np.testing.assert_allclose(got[name], ref[k][name], rtol=1e-5, atol=1e-7)
    assert _dots(lambda g: tx.update(g, tx.init(packed), packed)[0], gp) == 15


# --- which leaves are Muon's -------------------------------------------------------------------


def _roles(tx, params):
    state = tx.init(params)
    return {k for k, v in state.muon.mu.items() if v is not None}


def test_shape_rule_and_overrides():
    params = {"emb": jnp.ones((10, 4)), "w": jnp.ones((4, 4)), "conv": jnp.ones((3, 3, 2, 4)),
              "b": jnp.ones(4), "s": jnp.ones(())}  # fmt: skip
    assert _roles(gradtx.muon(0.1), params) == {"emb", "w", "conv"}
    labels = {"emb": "adam", "w": "muon", "conv": "adam", "b": "adam", "s": "adam"}
    assert _roles(gradtx.muon(0.1, muon_mask=labels), params) == {"w"}
    as_bools = {"emb": False, "w": True, "conv": True, "b": False, "s": False}
    assert _roles(gradtx.muon(0.1, muon_mask=as_bools), params) == {"w", "conv"}

    def not_embeddings(p):
        return {k: k != "emb" and jnp.ndim(v) >= 2 for k, v in p.items()}

    tx = gradtx.muon(0.1, muon_mask=not_embeddings)
    assert _roles(tx, params) == {"w", "conv"}
    state = tx.init(params)
    assert state.adam.nu["emb"] is not None and state.adam.nu["w"] is None
    # a prefix of labels: one label for a whole subtree
    nested = {"enc": {"w": jnp.ones((4, 4)), "v": jnp.ones((4, 4))}, "b": jnp.ones(4)}
    tx = gradtx.muon(0.1, muon_mask={"enc": "adam", "b": "adam"})
    assert {k for k, v in tx.init(nested).adam.mu["enc"].items() if v is not None} == {"w", "v"}


def test_bad_overrides_name_the_leaf():
    params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
    with pytest.raises(ValueError, match=r"gradtx\.muon.*\['b'\].*not a matrix"):
        tx = gradtx.muon(0.1, muon_mask={"w": True, "b": True})
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match=r"gradtx\.muon: muon_mask at \['b'\] is 'sgd'"):
        gradtx.muon(0.1, muon_mask={"w": "muon", "b": "sgd"}).init(params)
    with pytest.raises(TypeError, match="not both"):
        gradtx.muon(0.1, muon_mask={"w": True}, muon_weight_dimension_numbers={"w": MDN()})
    with pytest.raises(ValueError, match=r"gradtx\.muon.*ns_coeffs"):
        gradtx.muon(0.1, ns_coeffs=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"gradtx\.muon.*preconditioning"):
        gradtx.muon(0.1, preconditioning="svd")
    with pytest.raises(ValueError, match=r"gradtx\.muon \(nesterov_ema\): beta"):
        gradtx.muon(0.1, beta=1.5)


def test_describe_names_the_knobs_and_the_stage():
    d = gradtx.muon(0.02).describe()
    assert d["g"].startswith("matrices: NesterovEma(decay=0.95)")
    assert "other leaves: NesterovEma(decay=0.9)" in d["g"]
    assert d["sigma"].startswith("matrices: none") and "AdamScale" in d["sigma"]
    assert "Newton–Schulz" in d["after"][0] and d["eta"] == "constant 0.02"
    d = gradtx.muon(0.02, adam_learning_rate=1e-3).describe()
    assert d["eta"] == "matrices: constant 0.02; other leaves: 0.001"


def test_muon_converges_on_a_matrix_regression():
    """Least squares ``|XW + b - Y|²`` with a (6, 4) W and a bias, 60 steps: the loss falls
    below 1% of its start."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
    w_true = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    y = x @ w_true + 0.5
    params = {"w": jnp.zeros((6, 4)), "b": jnp.zeros(4)}

    def loss(p):
        return jnp.mean((x @ p["w"] + p["b"][None, :] - y) ** 2)

    tx = gradtx.muon(gradtx.schedules.linear(0.3, 0.0, 60), adam_learning_rate=0.1)
    state, p = tx.init(params), params
    grad = jax.jit(jax.grad(loss))
    for _ in range(60):
        u, state = tx.update(grad(p), state, p)
        p = gradtx.apply_updates(p, u)
    first, last = float(loss(params)), float(loss(p))
    assert last < 1e-2 * first, (first, last)
