"""Schedule-free SGD/AdamW and the wrapper: against optax.contrib, float64 NumPy oracles of the
paper's rules, on a noisy quadratic, through a checkpoint, in the conformance kit, on bad input.

Tolerances. Against optax (float32, 25 jitted steps), every entry within ``2e-6 x`` the largest
entry of its params leaf (measured <= 1.1e-6: the rounding of ``1 - b1``, and for Adam gradtx's
``-expm1`` bias correction): for params, evaluation params and updates alike, since an update is
``y_{t+1} - y_t``, a difference of params-sized numbers, whose error is bounded relative to the
params, not to the update itself. Against the float64 oracles (gradtx in float64 under
``jax.enable_x64``): ``rtol=1e-9``, far inside the 1e-5 an algorithmic difference would break.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import gradtx
from gradtx._optimizers import schedule_free as sf
from gradtx._optimizers.schedule_free import (
    ScheduleFree,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
from gradtx._stages.weight_decay import AddDecayedWeights

STEPS = 25
PARAMS = {
    "dense": {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.1, 0.4, 4)},
    "head": jnp.linspace(0.5, -0.5, 8).reshape(4, 2),
}


def _grads(i: int) -> dict:
    leaves, treedef = jax.tree_util.tree_flatten(PARAMS)
    keys = jax.random.split(jax.random.PRNGKey(i), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _run(tx, eval_fn=schedule_free_eval_params, steps: int = STEPS):
    """``steps`` jitted steps; per step (updates, params after, eval params, state)."""

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
        return p, s, u, eval_fn(s, p)

    p, s, out = PARAMS, tx.init(PARAMS), []
    for i in range(steps):
        p, s, u, e = step(p, s, _grads(i))
        out.append((u, p, e, s))
    return out


def _close(ours, theirs, what: str, scale=None, rel: float = 2e-6) -> None:
    """Entries within ``rel x`` the largest entry of the leaf of ``scale`` (default theirs)."""
    for (path, a), b, ref in zip(
        jax.tree_util.tree_leaves_with_path(ours),
        jax.tree_util.tree_leaves(theirs),
        jax.tree_util.tree_leaves(theirs if scale is None else scale),
    ):
        atol = rel * float(np.max(np.abs(ref)))
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=f"{what} {path}")


# --- the same calls as optax.contrib -----------------------------------------------------------


@pytest.mark.parametrize("name", ["schedule_free", "schedule_free_sgd", "schedule_free_adamw"])
def test_signature_is_optax_contribs(name):
    def sig(f):
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]

    assert sig(getattr(sf, name)) == sig(getattr(optax.contrib, name))


_WARM = optax.warmup_constant_schedule(0.0, 1e-2, 4)
#: The same call with (sf, gradtx) and with (optax.contrib, optax): their names match.
CASES = {
    "sgd": lambda m, o: m.schedule_free_sgd(0.1),
    "sgd_warmup_decay": lambda m, o: m.schedule_free_sgd(0.1, 5, 0.95, 0.01, 1.5),  # positional
    "adamw_warmup_decay": lambda m, o: m.schedule_free_adamw(1e-2, 5, b2=0.99, weight_decay=0.01),
    "wrapper_adam": lambda m, o: m.schedule_free(o.adam(1e-2, b1=0.0), 1e-2),
    "wrapper_optax_base": lambda m, o: m.schedule_free(optax.adam(_WARM, b1=0.0), _WARM),
}


@pytest.mark.parametrize("case", list(CASES))
def test_equals_optax_contrib(case):
    with jax.numpy_dtype_promotion("standard"):  # optax is not written for strict promotion
        ours = _run(CASES[case](sf, gradtx))
        theirs = _run(CASES[case](optax.contrib, optax), optax.contrib.schedule_free_eval_params)
    for k, ((u, p, e, s), (tu, tp, te, ts)) in enumerate(zip(ours, theirs)):
        _close(u, tu, f"step {k + 1} updates", scale=tp)
        _close(p, tp, f"step {k + 1} params")
        _close(e, te, f"step {k + 1} eval params")
        for field in ("weight_sum", "max_lr", "b1"):
            np.testing.assert_allclose(s[field], getattr(ts, field), rtol=1e-6, err_msg=field)
        assert int(s.step_count) == int(ts.step_count) == k + 2
    _, tp, te, ts = theirs[-1]  # gradtx's eval params read optax's state too
    _close(schedule_free_eval_params(ts, tp), te, "eval params of optax's state", rel=2e-7)


def test_state_is_optaxs_and_z_a_copy():
    state = schedule_free_adamw(1e-3).init(PARAMS)
    assert list(state) == list(optax.contrib.ScheduleFreeState._fields)
    assert sorted(state.base_optimizer_state.knobs) == ["count", "nu"]
    assert state.step_count.dtype == jnp.int32 and int(state.step_count) == 1
    z, p = jax.tree_util.tree_leaves(state.z), jax.tree_util.tree_leaves(PARAMS)
    assert all(a is not b for a, b in zip(z, p))
    tx = schedule_free_sgd(0.1)  # so params and state can both be donated

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p = jax.tree_util.tree_map(jnp.copy, PARAMS)
    s = tx.init(p)
    for i in range(3):
        p, s = step(p, s, _grads(i))
    _close(p, _run(tx, steps=3)[-1][1], "a donated run", rel=0.0)


# --- float64 NumPy oracles of the paper ----------------------------------------------------------

Y0 = np.linspace(-1.5, 2.0, 6).reshape(2, 3)


def _np_grad(t: int, y: np.ndarray) -> np.ndarray:
    """A noisy gradient of ½ Σ h y² (seeded per step, float64)."""
    return np.linspace(0.5, 4.0, y.size).reshape(y.shape) * y + np.random.default_rng(t).normal(
        size=y.shape
    )


def _oracle(steps, lr_z, lr_w, b1s, base_step):
    """The paper's three sequences: ``base_step(g, y, lr_z(t))`` moves z, x is the mean of the
    z's weighted by max(lr_w)², ``b1s[t]`` makes y_{t+1} (``b1s[0]`` made y_1 = z_1 = x_1)."""
    z, x, y = Y0.copy(), Y0.copy(), Y0.copy()
    weight_sum, max_lr, ys, xs = 0.0, 0.0, [], []
    for t in range(1, steps + 1):
        z = z + base_step(_np_grad(t, y), y, lr_z(t))
        max_lr = max(max_lr, lr_w(t))
        weight_sum += max_lr**2
        c = max_lr**2 / weight_sum if weight_sum > 0 else 0.0
        x = (1 - c) * x + c * z
        y = (1 - b1s[t]) * z + b1s[t] * x
        ys.append(y)
        xs.append(x)
    return ys + xs


def _compare64(tx, ref, steps=STEPS, b1_at=None) -> None:
    y = jnp.asarray(Y0, jnp.float64)
    state, ys, xs = tx.init(y), [], []
    step = jax.jit(lambda tx, g, s, y: tx.update(g, s, y))
    for t in range(1, steps + 1):
        tx = tx if b1_at is None else tx.replace(b1=b1_at(t))
        u, state = step(tx, jnp.asarray(_np_grad(t, np.asarray(y))), state, y)
        assert u.dtype == jnp.float64
        y = gradtx.apply_updates(y, u)
        ys.append(y)
        xs.append(schedule_free_eval_params(state, y))
    for k, (a, b) in enumerate(zip(ys + xs, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"entry {k}")


def test_sgd_is_the_papers_rule_float64():
    """Eqs. (1)-(3) with warmup: z moves by −η(t−1)(g + λy) (the base's 0-based count), the
    weights are max(η(t))² (the 1-based step), as optax; η(s) = 0.3·min(1, s/5), which gradtx's
    schedules compute in float32 (also under x64), so the oracle takes it rounded so."""
    lr = lambda s: float(np.float32(0.3) * (np.float32(min(s, 5)) / np.float32(5)))  # noqa: E731
    step = lambda g, y, eta: -eta * (g + 0.01 * y)  # noqa: E731
    ref = _oracle(STEPS, lambda t: lr(t - 1), lr, [0.9] * (STEPS + 1), step)
    with jax.enable_x64(True):
        _compare64(schedule_free_sgd(0.3, warmup_steps=5, weight_decay=0.01), ref)


def test_adamw_is_the_papers_algorithm_1_float64():
    """Algorithm 1: γ_t = γ·√(1 − β2ᵗ)·min(1, t/W) in the z-step and in the weights, ε added to
    √v_t (v not debiased): the generic wrapper, with the base's η one step ahead of γ."""
    g0, b2, eps, lam, w = 0.05, 0.99, 1e-8, 0.02, 4
    gamma = lambda t: g0 * np.sqrt(1 - b2**t) * min(1.0, t / w)  # noqa: E731
    v = [np.zeros_like(Y0)]

    def adam_step(g, y, eta):
        v[0] = b2 * v[0] + (1 - b2) * g * g
        return -eta * (g / (np.sqrt(v[0]) + eps) + lam * y)

    ref = _oracle(STEPS, gamma, gamma, [0.9] * (STEPS + 1), adam_step)
    with jax.enable_x64(True):

        def paper(t):  # at the 1-based step t, in float64
            t = jnp.asarray(t).astype(jnp.float64)
            return g0 * jnp.sqrt(1 - b2**t) * jnp.minimum(1.0, t / w)

        scale = gradtx.RMSPropScale(b2, eps)
        base = gradtx.optimizer(
            None, scale, lambda c: paper(c + 1), after=(AddDecayedWeights(lam),)
        )
        _compare64(schedule_free(base, paper), ref)


def test_changing_b1_mid_run_keeps_x_float64():
    """x_t is recovered with the b1 that made y_t (the state's); the new one makes y_{t+1}."""
    b1_at = lambda t: 0.9 if t < 10 else 0.5  # noqa: E731
    b1s = [0.9] + [b1_at(t) for t in range(1, 21)]
    ref = _oracle(20, lambda t: 0.2, lambda t: 0.2, b1s, lambda g, y, eta: -eta * g)
    with jax.enable_x64(True):
        _compare64(schedule_free_sgd(0.2), ref, 20, b1_at)


# --- behaviour -----------------------------------------------------------------------------------


def test_averaging_beats_constant_sgd_on_a_noisy_quadratic():
    h = jnp.array([1.0, 10.0, 100.0])
    loss = lambda p: 0.5 * jnp.sum(h * p["x"] ** 2)  # noqa: E731

    @jax.jit
    def run(tx):
        def body(c, key):
            p, s = c
            g = {"x": jax.grad(loss)(p)["x"] + jax.random.normal(key, (3,))}
            u, s = tx.update(g, s, p)
            return (gradtx.apply_updates(p, u), s), None

        p = {"x": jnp.ones(3)}
        return jax.lax.scan(body, (p, tx.init(p)), jax.random.split(jax.random.key(0), 5000))[0]

    sgd_loss = float(loss(run(gradtx.sgd(0.01))[0]))  # measured 2.1e-2
    for tx in (schedule_free_sgd(0.01), schedule_free_adamw(0.01)):  # measured 1.4e-4, 1.2e-4
        p, s = run(tx)
        assert float(loss(schedule_free_eval_params(s, p))) < 0.05 * sgd_loss, tx.name


def test_checkpoint_round_trip_mid_run():
    tx = gradtx.chain(gradtx.clip_by_global_norm(10.0), schedule_free_adamw(1e-2, 3))

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, u), s

    p, s = PARAMS, tx.init(PARAMS)
    for i in range(5):
        p, s = step(p, s, _grads(i))
    a, b = (p, s), (p, serialization.from_bytes(tx.init(PARAMS), serialization.to_bytes(s)))
    for i in range(5, 10):
        a, b = step(*a, _grads(i)), step(*b, _grads(i))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)  # a bit-identical continuation


def test_changed_hyperparameters_do_not_retrace():
    traces = []

    @jax.jit
    def step(tx, g, s, p):
        traces.append(1)
        return tx.update(g, s, p)

    s = schedule_free_sgd(0.1).init(PARAMS)
    for lr, b1 in ((0.1, 0.9), (0.05, 0.8), (0.2, 0.95)):
        _, s = step(schedule_free_sgd(lr, b1=b1), _grads(0), s, PARAMS)
    assert len(traces) == 1


def test_eval_params_see_through_wrappers():
    inner = schedule_free_sgd(0.1, weight_decay=1e-3)
    e_ref = _run(inner, steps=6)[-1][2]
    for tx in (
        gradtx.chain(gradtx.clip_by_global_norm(1e9), inner),
        gradtx.apply_if_finite(inner, 2),
        gradtx.MultiSteps(inner, 1),
        optax.chain(optax.identity(), inner),
    ):
        with jax.numpy_dtype_promotion("standard"):
            e = _run(tx, steps=6)[-1][2]
        _close(e, e_ref, f"eval params through {type(tx).__name__}", rel=1e-6)  # fusions differ
    # a partition with a schedule-free group per label: each gives the leaves its z holds
    labels = {"dense": {"w": "a", "b": "b"}, "head": "a"}
    tx = gradtx.partition({"a": schedule_free_sgd(0.1), "b": schedule_free_sgd(0.3)}, labels)
    _, p, e, s = _run(tx, steps=6)[-1]
    z_a, z_b = (s.inner_states[k].inner_state.z for k in "ab")
    np.testing.assert_allclose(e["head"], (p["head"] - 0.1 * z_a["head"]) / 0.9, rtol=1e-6)
    x_b = (p["dense"]["b"] - 0.1 * z_b["dense"]["b"]) / 0.9
    np.testing.assert_allclose(e["dense"]["b"], x_b, rtol=1e-6)
    # masked: the leaves outside the mask are returned as they are
    _, p, e, _ = _run(gradtx.masked(schedule_free_sgd(0.1), {"dense": True, "head": False}))[-1]
    np.testing.assert_array_equal(e["head"], p["head"])
    assert not np.allclose(e["dense"]["w"], p["dense"]["w"])


def test_dtypes_of_updates_eval_params_and_state():
    params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2, jnp.float32), "n": None}
    tx = schedule_free_adamw(1e-2)
    grads = {"a": jnp.ones(3, jnp.bfloat16), "b": -jnp.ones(2, jnp.float32), "n": None}
    u, state = tx.update(grads, tx.init(params), params)
    assert u["a"].dtype == jnp.bfloat16 and u["n"] is None
    assert state.weight_sum.dtype == jnp.float32  # optax: the lowest param dtype (bfloat16)
    e = jax.jit(schedule_free_eval_params)(state, gradtx.apply_updates(params, u))
    assert e["a"].dtype == jnp.bfloat16 and e["b"].dtype == jnp.float32 and e["n"] is None
    # state_dtype: z in bfloat16. optax rounds (1 - b1)·z to bfloat16 (a Python float times a
    # bfloat16 array), gradtx computes it in float32: params differ by <= (1 - b1)·2^-8·|z|
    bf16 = jnp.dtype("bfloat16")
    tx, theirs_tx = (m.schedule_free_sgd(0.1, state_dtype=bf16) for m in (sf, optax.contrib))
    assert {x.dtype for x in jax.tree_util.tree_leaves(tx.init(PARAMS).z)} == {bf16}
    with jax.numpy_dtype_promotion("standard"):
        ours = _run(tx, steps=5)
        theirs = _run(theirs_tx, optax.contrib.schedule_free_eval_params, 5)
    for (_, p, _, _), (_, tp, _, _) in zip(ours, theirs):
        _close(p, tp, "params with a bfloat16 z", rel=2e-3)


def test_describe_views_and_learning_rate():
    tx = schedule_free_adamw(1e-2, weight_decay=1e-3)
    d = tx.describe()
    assert d["name"] == "schedule_free_adamw" and d["g"].startswith("schedule-free")
    assert "RMSPropScale" in d["sigma"] and "AddDecayedWeights" in d["after"][0]
    state = tx.init(PARAMS)
    assert tx.views(state)[0][1] is tx.base_optimizer
    assert float(gradtx.current_learning_rate(tx, state)) == pytest.approx(1e-2)
    assert "Momentum" in schedule_free(gradtx.sgd(0.1, momentum=0.9), 0.1).describe()["g"]
    assert isinstance(tx, ScheduleFree) and tx == schedule_free_adamw(1e-2, weight_decay=1e-3)
    assert hash(tx) == hash(schedule_free_adamw(1e-2, weight_decay=1e-3))


# --- the conformance kit ------------------------------------------------------------------------
# schedule_free_sgd, schedule_free_adamw and schedule_free(adam) pass the kit with strict=True in
# tests/test_conformance.py (their entries in tests/kit_cases.py).


# --- bad input -----------------------------------------------------------------------------------

_SF = "^gradtx.schedule_free"
_SGD, _ADAMW = _SF + "_sgd", _SF + "_adamw"
_CONST = gradtx.schedules.constant(0.1)
BAD = [
    (lambda: schedule_free_sgd(b1=0.0), ValueError, _SGD + ": b1 must be > 0"),
    (lambda: schedule_free_sgd(b1=1.5), ValueError, _SGD + ": b1 must be in"),
    (lambda: schedule_free_adamw(b1=float("nan")), ValueError, _ADAMW + ": b1 must be a finite"),
    (lambda: schedule_free_sgd(-1.0), ValueError, _SGD + " .*learning_rate must be"),
    (lambda: schedule_free_sgd(weight_lr_power=-1.0), ValueError, _SGD + ": weight_lr_power"),
    (lambda: schedule_free_sgd(warmup_steps=0), ValueError, _SGD + ": warmup_steps must be"),
    (lambda: schedule_free_adamw(warmup_steps=2.5), ValueError, _ADAMW + ": warmup_steps"),
    (lambda: schedule_free_sgd(warmup_steps=True), ValueError, _SGD + ": warmup_steps"),
    (lambda: schedule_free_sgd(_CONST, 3), TypeError, _SGD + ": learning_rate must be a number"),
    (lambda: schedule_free_adamw(b2=1.0), ValueError, _ADAMW + " .*: b2 must be in"),
    (lambda: schedule_free_sgd(weight_decay=-1.0), ValueError, _SGD + " .*weight_decay"),
    (lambda: schedule_free(3, 0.1), TypeError, _SF + ": base_optimizer must be"),
    (lambda: schedule_free(gradtx.sgd(0.1), None), TypeError, _SF + ": learning_rate must be"),
    (lambda: schedule_free(gradtx.sgd(0.1), 0.1, 0.9, 2.0, "int32"), TypeError, _SF + ": state_"),
]


@pytest.mark.parametrize("build, error, match", BAD)
def test_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_bad_update_and_eval_input():
    tx = schedule_free_sgd(0.1)
    state = tx.init(PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"schedule_free_sgd: update needs params"):
        tx.update(_grads(0), state)
    with pytest.raises(gradtx.TransformError, match=r"schedule_free_sgd: state is not"):
        tx.update(_grads(0), gradtx.sgd(0.1).init(PARAMS), PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"schedule_free_sgd: .*head"):
        tx.update({"dense": _grads(0)["dense"]}, state, PARAMS)
    with pytest.raises(ValueError, match=r"^gradtx.schedule_free_eval_params: state holds no"):
        schedule_free_eval_params(gradtx.adam(1e-3).init(PARAMS), PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"schedule_free_eval_params: .*head"):
        schedule_free_eval_params(state, {"dense": PARAMS["dense"]})
    two = gradtx.chain(schedule_free_sgd(0.1), schedule_free_sgd(0.2))
    with pytest.raises(gradtx.TransformError, match=r"eval_params: at .*, two schedule-free"):
        schedule_free_eval_params(two.init(PARAMS), PARAMS)
