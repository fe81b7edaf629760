"""gradtx (float32) against independent NumPy float64 oracles written from the papers.

Every optimizer in ``helpers.OPTIMIZERS`` and every standalone stage runs for ``STEPS`` steps on
``helpers.random_tree`` with fresh seeded float32 gradients each step (of RMS 0.01 .. 10 across
leaves, varying over time); the same gradients go to the oracle (``tests/oracles.py``), and the
updates and the parameters after each step must agree.

Tolerances: ``rtol=1e-5`` throughout (float32 arithmetic over ~25 steps is good to a few 1e-7
relative; an algorithmic difference, such as a misplaced ε chosen to matter, is >= 1e-4).
``atol`` is only for entries near zero, whose *relative* error is unbounded although their
absolute error is a float32 rounding of the surrounding magnitudes; each call says which.
"""

from __future__ import annotations

import zlib
from typing import Any

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest

import gradtx

STEPS = 25
RTOL = 1e-5  # see the module docstring
#: atol per leaf = ATOL_SCALE x the largest |value| the leaf has had so far (see _compare): 16
#: float32 roundings (6e-8 each) of the magnitudes a near-zero entry was cancelled from.
ATOL_SCALE = 1e-6


# --- running both sides -------------------------------------------------------------------------


def _gradients(params: Any, steps: int, seed: int) -> list[Any]:
    """Float32 gradient pytrees: per leaf a fixed scale 10^U(-2, 1), per step a factor U(0.2, 2)
    (so second moments also shrink, which AMSGrad's maximum and Yogi's sign must handle)."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    leaf_scale = 10.0 ** rng.uniform(-2, 1, len(leaves))
    out = []
    for _ in range(steps):
        step_scale = rng.uniform(0.2, 2.0)
        gs = [
            np.asarray(rng.standard_normal(np.shape(p)) * s * step_scale, np.float32)
            for p, s in zip(leaves, leaf_scale)
        ]
        out.append(treedef.unflatten(gs))
    return out


def _run_gradtx(tx: Any, params: Any, grads: list[Any]) -> tuple[list[Any], list[Any]]:
    """Runs ``tx`` (its update jitted once) with float32 params; returns updates and params."""

    @jax.jit
    def step(g, state, p):
        u, state = tx.update(g, state, p)
        return u, state, gradtx.apply_updates(p, u)

    state = tx.init(params)
    updates, all_params = [], []
    for g in grads:
        u, state, params = step(jax.tree_util.tree_map(jnp.asarray, g), state, params)
        updates.append(u)
        all_params.append(params)
    return updates, all_params


def _compare(tx: Any, oracle: Any, params: Any, grads: list[Any], *, atol_scale: float) -> None:
    """Asserts gradtx's updates and params equal the oracle's after every step.

    Each entry must satisfy ``|ours - ref| <= RTOL·|ref| + atol`` with, per leaf,
    ``atol = atol_scale · (largest |ref| this leaf has had so far)`` (for updates and params
    separately): an entry that cancels to near zero (an EMA of sign-changing gradients, a
    parameter crossing zero) keeps an absolute error of a few float32 roundings of the
    magnitudes it came from, so only a bound relative to those is meaningful.
    """
    ours_u, ours_p = _run_gradtx(tx, params, grads)
    ref_u, ref_p = oracles.run(oracle, params, grads)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    scale = {"update": np.zeros(len(paths)), "params": np.zeros(len(paths))}
    for k in range(len(grads)):
        for what, ours, ref in (("update", ours_u[k], ref_u[k]), ("params", ours_p[k], ref_p[k])):
            a_leaves = jax.tree_util.tree_leaves(ours)
            d_leaves = jax.tree_util.tree_leaves(ref)
            assert len(a_leaves) == len(d_leaves) == len(paths), f"{what} {k + 1}: structure"
            for i, (a, d) in enumerate(zip(a_leaves, d_leaves)):
                assert a.dtype == jnp.float32, f"{what} {k + 1}{paths[i]}: dtype {a.dtype}"
                scale[what][i] = max(scale[what][i], float(np.max(np.abs(d), initial=0.0)))
                np.testing.assert_allclose(
                    np.asarray(a, np.float64),
                    d,
                    rtol=RTOL,
                    atol=atol_scale * scale[what][i],
                    err_msg=f"{what} {k + 1}{paths[i]}",
                )


def as32(x: float) -> float:
    """A float hyperparameter at its float32 value, as gradtx holds it."""
    return oracles.as_float32_value(x)


# --- the registry -------------------------------------------------------------------------------


_NAMED = (
    "sgd sign_sgd adagrad rmsprop adadelta adam adamw nadam nadamw adamax amsgrad "
    "adabelief yogi radam lion lamb lars adafactor"
).split()


def test_every_named_optimizer_is_covered():
    covered = {name for name, _ in helpers.SPECS.values()}
    for name in _NAMED:
        assert isinstance(getattr(gradtx, name)(0.1), gradtx.Optimizer), name
        assert name in covered and name in oracles.ORACLES, name


def test_random_tree_shapes():
    tree = helpers.random_tree(jax.random.key(3))
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(tree)]
    assert () in shapes and (7,) in shapes and (6, 5) in shapes and (3, 4, 5) in shapes
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(tree))
    assert isinstance(tree["blocks"], list)


# --- every optimizer ------------------------------------------------------------------------------


@pytest.mark.parametrize("opt_id, factory", helpers.OPTIMIZERS, ids=helpers.OPTIMIZER_IDS)
def test_optimizer_matches_oracle(opt_id, factory):
    name, kwargs = helpers.SPECS[opt_id]
    params = helpers.random_tree(0)
    grads = _gradients(params, STEPS, seed=zlib.crc32(opt_id.encode()))
    oracle = oracles.build(name, kwargs, params)
    # atol: ATOL_SCALE times the leaf's largest value so far (see _compare and ATOL_SCALE).
    _compare(factory(), oracle, params, grads, atol_scale=ATOL_SCALE)


# --- learning-rate schedules ----------------------------------------------------------------------

_SCHEDULED = ["sgd_momentum", "adam", "adamw", "lars", "adafactor"]


@pytest.mark.parametrize("opt_id", _SCHEDULED)
def test_schedule_sees_count_of_applied_updates(opt_id):
    name, kwargs = helpers.SPECS[opt_id]
    peak = float(kwargs["learning_rate"])
    # η from peak to peak/10 over 20 updates; the schedule is called with the count of updates
    # already applied: 0 at the first update, so update t uses η(t - 1).
    sched = gradtx.schedules.linear(peak, peak / 10, 20)

    def ref_sched(count: int) -> float:
        return peak + (peak / 10 - peak) * min(count / 20, 1.0)

    params = helpers.random_tree(0)
    grads = _gradients(params, STEPS, seed=5)
    tx = getattr(gradtx, name)(**{**kwargs, "learning_rate": sched})
    oracle = oracles.build(name, {**kwargs, "learning_rate": ref_sched}, params)
    # atol: ATOL_SCALE times the leaf's largest value so far (see _compare and ATOL_SCALE).
    _compare(tx, oracle, params, grads, atol_scale=ATOL_SCALE)


def test_schedule_count_starts_at_zero():
    # The first update uses η(0) exactly: a schedule 1 at count 0 and 0 afterwards.
    sched = gradtx.schedules.linear(1.0, 0.0, 1)
    tx = gradtx.sgd(sched)
    params = {"w": jnp.ones(3, jnp.float32)}
    state = tx.init(params)
    g = {"w": jnp.full(3, 2.0, jnp.float32)}
    u1, state = tx.update(g, state, params)
    u2, _ = tx.update(g, state, params)
    np.testing.assert_array_equal(np.asarray(u1["w"]), -2.0)  # exact: η(0) = 1
    np.testing.assert_array_equal(np.asarray(u2["w"]), 0.0)  # exact: η(1) = 0


# --- standalone stages ----------------------------------------------------------------------------


def _stage_oracle(name: str, params: Any, **kwargs: Any) -> oracles.PerLeaf:
    return oracles.build(name, kwargs, params)


# Stages are stateless: 8 steps suffice, with gradient scales chosen so that each stage acts on
# some leaves and steps and not on others. Tolerance as for the optimizers.
_STAGE_TOL = dict(atol_scale=ATOL_SCALE)


def test_clip():
    params = helpers.random_tree(0)
    grads = _gradients(params, 8, seed=1)
    tx = gradtx.clip(0.5)
    _compare(tx, _stage_oracle("clip", params, max_delta=0.5), params, grads, **_STAGE_TOL)


@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["active", "inactive"])
def test_clip_by_global_norm(max_norm):
    params = helpers.random_tree(0)
    grads = _gradients(params, 8, seed=2)
    tx = gradtx.clip_by_global_norm(max_norm)
    oracle = oracles.ClipByGlobalNorm(as32(max_norm))
    _compare(tx, oracle, params, grads, **_STAGE_TOL)


def test_clip_by_block_rms():
    params = helpers.random_tree(0)
    grads = _gradients(params, 8, seed=3)
    tx = gradtx.clip_by_block_rms(0.3)
    oracle = _stage_oracle("clip_by_block_rms", params, threshold=0.3)
    _compare(tx, oracle, params, grads, **_STAGE_TOL)


def test_adaptive_grad_clip():
    params = helpers.random_tree(0)
    grads = _gradients(params, 8, seed=4)
    tx = gradtx.adaptive_grad_clip(0.05, eps=1e-2)
    oracle = _stage_oracle("adaptive_grad_clip", params, clipping=0.05, eps=1e-2)
    _compare(tx, oracle, params, grads, **_STAGE_TOL)


def test_adaptive_grad_clip_eps_floor():
    # A zero parameter leaf: the weight norm is floored at eps, so its gradient is clipped to
    # λ·ε per unit rather than to zero.
    params = {**helpers.random_tree(0), "scalar": jnp.zeros([], jnp.float32)}
    params["dense"] = {**params["dense"], "bias": jnp.zeros(5, jnp.float32)}
    grads = _gradients(params, 4, seed=5)
    tx = gradtx.adaptive_grad_clip(0.1, eps=1e-2)
    oracle = _stage_oracle("adaptive_grad_clip", params, clipping=0.1, eps=1e-2)
    _compare(tx, oracle, params, grads, **_STAGE_TOL)


@pytest.mark.parametrize("mask_kind", ["callable", "tree"])
def test_add_decayed_weights(mask_kind):
    params = helpers.random_tree(0)
    grads = _gradients(params, 8, seed=6)
    mask = helpers.decay_mask if mask_kind == "callable" else helpers.decay_mask(params)
    tx = gradtx.add_decayed_weights(0.3, mask=mask)
    oracle = _stage_oracle("add_decayed_weights", params, weight_decay=0.3, mask=mask)
    _compare(tx, oracle, params, grads, **_STAGE_TOL)


def test_add_decayed_weights_unmasked():
    params = helpers.random_tree(0)
    grads = _gradients(params, 8, seed=7)
    tx = gradtx.add_decayed_weights(0.3)
    oracle = _stage_oracle("add_decayed_weights", params, weight_decay=0.3)
    _compare(tx, oracle, params, grads, **_STAGE_TOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(trust_coefficient=0.1),
        dict(min_norm=0.5, trust_coefficient=0.1, eps=1e-3),
        dict(trust_coefficient=0.1, mask=helpers.decay_mask),
    ],
    ids=["plain", "min_norm_eps", "masked"],
)
def test_scale_by_trust_ratio(kwargs):
    # One zero parameter leaf and one zero gradient leaf exercise "ratio 1 if a norm is 0".
    # (trust_coefficient < 1: with 1, |u| = |θ| and a 0-d θ can step exactly to 0 in float64
    # but not in float32, a degenerate comparison.)
    params = {**helpers.random_tree(0), "scalar": jnp.zeros([], jnp.float32)}
    grads = _gradients(params, 8, seed=8)
    for g in grads:
        g["vector"] = np.zeros(7, np.float32)
    tx = gradtx.scale_by_trust_ratio(**kwargs)
    oracle = _stage_oracle("scale_by_trust_ratio", params, **kwargs)
    _compare(tx, oracle, params, grads, **_STAGE_TOL)


def test_chain_clip_by_global_norm_adamw():
    name, kwargs = helpers.SPECS["adamw"]
    params = helpers.random_tree(0)
    grads = _gradients(params, STEPS, seed=9)
    tx = gradtx.chain(gradtx.clip_by_global_norm(2.0), gradtx.adamw(**kwargs))
    oracle = oracles.Chain(oracles.ClipByGlobalNorm(as32(2.0)), oracles.build(name, kwargs, params))
    # atol: ATOL_SCALE times the leaf's largest value so far (see _compare and ATOL_SCALE).
    _compare(tx, oracle, params, grads, atol_scale=ATOL_SCALE)
