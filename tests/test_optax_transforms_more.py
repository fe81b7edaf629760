"""optax's remaining transforms: centralize, normalize_by_update_norm, apply_every,
scale_by_distance_over_gradients (layer-wise DoG) and the per-example clipping functions.

Each against a NumPy float64 loop of its documented rule (``STEPS`` steps, ``rtol=1e-5`` plus an
``atol`` of ``1e-6 ×`` the leaf's largest magnitude so far, for entries cancelled to near 0) and
against optax 0.2.8 on the same gradients (each side applying its own updates). Parameters and
gradients are float32; the oracles round the params to float32 after each step, as the params
are (layer-wise DoG measures distances of ~1e-7 on params ~1, mostly rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_lr_free import _close, f32

import gradtx

optax = pytest.importorskip("optax")

STEPS = 20
SHAPES = {"w": (4, 3), "b": (3,), "k": (2, 3, 2)}


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    bias = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grads = [
        {
            k: (rng.uniform(0.3, 2.0) * (bias[k] + rng.normal(size=s))).astype(np.float32)
            for k, s in SHAPES.items()
        }  # fmt: skip
        for _ in range(STEPS)
    ]
    return params, grads


def _run(tx, params, grads, promotion="strict"):
    """Updates of ``tx`` at every step, ``update`` jitted. optax runs under standard dtype
    promotion and allowed rank promotion (its layer-wise DoG multiplies a ``(1,)`` step into
    each array)."""
    rank = "raise" if promotion == "strict" else "allow"
    with jax.numpy_dtype_promotion(promotion), jax.numpy_rank_promotion(rank):
        update = jax.jit(tx.update)
        p = {k: jnp.asarray(v) for k, v in params.items()}
        state = tx.init(p)
        out = []
        for g in grads:
            u, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
            p = jax.tree_util.tree_map(lambda a, b: a + b, p, u)
            out.append({k: np.asarray(v, np.float64) for k, v in u.items()})
    return out


# --- NumPy float64 oracles: each maps (params, grads) to the updates ----------------------------
def _loop(params, grads, rule):
    """Runs ``rule(x, g, t) -> u`` over the steps; the params are float32, as the runs' are."""
    x = {k: np.asarray(v, np.float64) for k, v in params.items()}
    out = []
    for t, g in enumerate(grads):
        u = rule(x, {k: np.asarray(v, np.float64) for k, v in g.items()}, t)
        x = {k: (x[k] + u[k]).astype(np.float32).astype(np.float64) for k in x}
        out.append(u)
    return out


def centralize_oracle(params, grads):
    def rule(x, g, t):
        return {k: v - v.mean(axis=tuple(range(1, v.ndim)), keepdims=True) if v.ndim > 1 else v
                for k, v in g.items()}  # fmt: skip

    return _loop(params, grads, rule)


def normalize_oracle(params, grads, scale_factor, eps):
    def rule(x, g, t):
        norm = np.sqrt(sum(np.sum(v**2) for v in g.values()))
        return {k: f32(scale_factor) * v / (norm + f32(eps)) for k, v in g.items()}

    return _loop(params, grads, rule)


def apply_every_oracle(params, grads, k, lr):
    acc = {}

    def rule(x, g, t):
        for n, v in g.items():
            acc[n] = v if t % k == 0 else acc[n] + v
        return {n: -f32(lr) * acc[n] if t % k == k - 1 else 0 * acc[n] for n in g}

    return _loop(params, grads, rule)


def ldog_oracle(params, grads, reps_rel, eps, global_scale):
    x0 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    r = {k: f32(reps_rel) * (1 + np.sqrt(np.sum(v**2))) for k, v in x0.items()}
    big_g = {k: 0.0 for k in x0}

    def rule(x, g, t):
        u = {}
        for k in x:
            r[k] = max(r[k], np.sqrt(np.sum((x[k] - x0[k]) ** 2)))
            big_g[k] += np.sum(g[k] ** 2)
            u[k] = f32(global_scale) * r[k] / np.sqrt(big_g[k] + f32(eps)) * g[k]
        return u

    return _loop(params, grads, rule)


def chain_oracle(params, grads):
    """centralize → normalize_by_update_norm(-0.5, 1e-2) → apply_every(3) → sgd(0.1)."""
    cen = centralize_oracle(params, grads)
    nor = normalize_oracle(params, cen, -0.5, 1e-2)
    return apply_every_oracle(params, nor, 3, 0.1)


# (id, gradtx, optax, oracle of (params, grads)). The three stateless or params-free stages
# run as one chain (one compiled program per side); each is exercised: centralize changes
# every leaf of rank >= 2, the norm rescales all, apply_every emits every third step.
CASES = [
    (
        "centralize_normalize_apply_every",
        gradtx.chain(
            gradtx.centralize(),
            gradtx.normalize_by_update_norm(-0.5, 1e-2),
            gradtx.apply_every(3),
            gradtx.sgd(0.1),
        ),
        optax.chain(
            optax.centralize(),
            optax.normalize_by_update_norm(-0.5, 1e-2),
            optax.apply_every(3),
            optax.sgd(0.1),
        ),
        chain_oracle,
    ),
    (
        "scale_by_distance_over_gradients",
        gradtx.scale_by_distance_over_gradients(1e-3, 1e-8, jnp.float32, -1.0),
        optax.scale_by_distance_over_gradients(1e-3, 1e-8, jnp.float32, -1.0),
        lambda p, g: ldog_oracle(p, g, 1e-3, 1e-8, -1.0),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_equals_the_numpy_float64_rule_and_optax(case):
    name, ours, theirs, oracle = case
    params, grads = _data()
    got = _run(ours, params, grads)
    _close(got, oracle(params, grads), name)
    _close(got, _run(theirs, params, grads, "standard"), f"{name} vs optax")


def test_apply_every_emits_the_sum_every_k_steps():
    tx = gradtx.apply_every(3)
    state = tx.init({"w": jnp.zeros(2)})
    emitted = []
    for t in range(7):
        u, state = tx.update({"w": jnp.full(2, float(t + 1))}, state)
        emitted.append(float(u["w"][0]))
    assert emitted == [0.0, 0.0, 6.0, 0.0, 0.0, 15.0, 0.0]
    assert state.grad_acc["w"].tolist() == [7.0, 7.0] and int(state.count) == 7
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"gradtx\.apply_every: k must be an int >= 1"):
            gradtx.apply_every(bad)


def test_centralize_leaves_vectors_and_scalars_alone():
    tx = gradtx.centralize()
    g = {"v": jnp.array([1.0, 5.0]), "s": jnp.array(3.0), "m": jnp.arange(6.0).reshape(2, 3)}
    u, _ = tx.update(g, tx.init(g))
    assert u["v"].tolist() == [1.0, 5.0] and float(u["s"]) == 3.0
    assert u["m"].tolist() == [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]


def test_layerwise_dog_keeps_scalar_shapes_and_params_dtype():
    """A 0-d param's update stays 0-d (optax's comes back with shape (1,), the shape of its
    ``grad_sum_of_squares``); ``param_dtype`` is the storage dtype of the initial params."""
    params = {"s": jnp.array(2.0), "w": jnp.ones((2, 2), jnp.bfloat16)}
    tx = gradtx.scale_by_distance_over_gradients(0.1, 0.0, None)
    state = tx.init(params)
    assert state.init_params["w"].dtype == jnp.bfloat16 and state.max_dist["s"].shape == ()
    u, _ = tx.update({"s": jnp.array(4.0), "w": jnp.ones((2, 2), jnp.bfloat16)}, state, params)
    assert u["s"].shape == () and u["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(float(u["s"]), 0.1 * 3.0, rtol=1e-6)  # r_ε(1+|x₀|)/|g|·g
    with pytest.raises(
        gradtx.TransformError, match="scale_by_distance_over_gradients: update needs"
    ):
        tx.update({"s": jnp.array(4.0), "w": jnp.ones((2, 2), jnp.bfloat16)}, state)


# --- per-example clipping ---------------------------------------------------------------------
def _per_example():
    rng = np.random.default_rng(1)
    scales = np.array([0.1, 0.5, 1.0, 2.0, 4.0, 0.0])[:, None]  # some clipped, one all-zero
    return {
        "a": jnp.asarray(rng.normal(size=(6, 3, 2)) * scales[..., None], jnp.float32),
        "b": jnp.asarray(rng.normal(size=(6, 4)) * scales, jnp.float32),
    }


def _clip_oracle(leaves, c):
    """(Σ_b min(1, c/‖g_b‖) g_b per leaf, #clipped) over the leaves together, in float64."""
    xs = [np.asarray(x, np.float64) for x in leaves]
    norms = np.sqrt(sum(np.sum(x.reshape(len(x), -1) ** 2, axis=1) for x in xs))
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.nan_to_num(np.minimum(c / norms, 1.0), nan=1.0)
    return [np.tensordot(f, x, axes=1) for x in xs], int(np.sum(f < 1))


@pytest.mark.parametrize("clip", [0.0, 1.5, np.inf])
def test_per_example_global_norm_clip(clip):
    g = _per_example()
    total, clipped = gradtx.per_example_global_norm_clip(g, clip)
    ref, n = _clip_oracle([g["a"], g["b"]], f32(clip))
    for k, r in zip("ab", ref):
        np.testing.assert_allclose(total[k], r, rtol=1e-5, atol=1e-6)
    assert int(clipped) == n and clipped.dtype == jnp.int32
    if clip == 1.5:  # optax's, once (its function runs op by op)
        theirs, n_theirs = optax.per_example_global_norm_clip(g, clip)
        for k in "ab":
            np.testing.assert_allclose(total[k], theirs[k], rtol=1e-6, atol=1e-7)
        assert int(n_theirs) == n
    assert {0.0: 5, 1.5: 2, np.inf: 0}[clip] == n  # the cases differ


@pytest.mark.parametrize("uniform", [True, False])
def test_per_example_layer_norm_clip(uniform):
    g = _per_example()
    total, clipped = gradtx.per_example_layer_norm_clip(g, 2.0, uniform)
    sizes = {"a": 6, "b": 4}
    if not uniform:  # optax's, once
        with jax.numpy_dtype_promotion("standard"):
            theirs, n_theirs = optax.per_example_layer_norm_clip(g, 2.0, uniform)
    for k in "ab":
        share = 0.5 if uniform else sizes[k] / 10
        (ref,), n = _clip_oracle([g[k]], f32(2.0 * share**0.5))
        np.testing.assert_allclose(total[k], ref, rtol=1e-5, atol=1e-6)
        assert int(clipped[k]) == n
        if not uniform:
            np.testing.assert_allclose(total[k], theirs[k], rtol=1e-6, atol=1e-7)
            assert int(n_theirs[k]) == n


def test_per_example_clipping_input():
    ints = [jnp.array([[0, 0, 0], [0, 3, 4], [4, 0, 3], [3, 4, 0]])]  # optax's docstring example
    total, clipped = gradtx.per_example_global_norm_clip(ints, 1.25)
    assert total[0].dtype == jnp.float32 and total[0].tolist() == [1.75, 1.75, 1.75]
    assert int(clipped) == 3
    half = {"h": jnp.ones((2, 3), jnp.bfloat16)}
    assert gradtx.per_example_global_norm_clip(half, 1.0)[0]["h"].dtype == jnp.bfloat16
    with pytest.raises(gradtx.TransformError, match=r"per_example_global_norm_clip: .*\['b'\]"):
        gradtx.per_example_global_norm_clip({"a": jnp.ones((3, 2)), "b": jnp.ones((2,))}, 1.0)
    with pytest.raises(gradtx.TransformError, match="per_example_layer_norm_clip: .*batch"):
        gradtx.per_example_layer_norm_clip({"a": jnp.ones(())}, 1.0)
