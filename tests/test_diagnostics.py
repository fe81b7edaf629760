"""``diagnostics``: norms, clipping, skipping and the effective step size η/σ against their
definitions (NumPy float64 from the state the step left), per group, under jit and flax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradtx

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.1, 0.4, 4)}


def _grads(i):
    k1, k2 = jax.random.split(jax.random.PRNGKey(i))
    return {"w": 3.0 * jax.random.normal(k1, (3, 4)), "b": jax.random.normal(k2, (4,))}


def _norm(tree):
    return float(
        np.sqrt(
            sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree_util.tree_leaves(tree))
        )
    )


def _run(tx, steps=5):
    state = tx.init(PARAMS)
    step = jax.jit(lambda g, s: (*tx.update(g, s, PARAMS), s))
    diag = jax.jit(lambda g, s, u, ns: gradtx.diagnostics(tx, g, s, PARAMS, u, ns))
    out = []
    for i in range(steps):
        g = _grads(i)
        u, new, old = step(g, state)
        out.append((g, old, u, new, diag(g, old, u, new)))
        state = new
    return out


def test_adam_step_size_is_eta_over_sigma():
    """η/(√v̂_t + ε) from the state the step left, elementwise; rtol 1e-5 (float32)."""
    lr, b2, eps = 0.01, 0.999, 1e-8
    for g, _old, u, new, d in _run(gradtx.adamw(lr, b2=b2, eps=eps, weight_decay=0.1)):
        t = int(new.knobs.count)
        vals = []
        for k in ("w", "b"):
            v = np.asarray(new.knobs.nu[k], np.float64) / (1 - b2**t)
            vals.append(lr / (np.sqrt(v) + eps))
        flat = np.concatenate([x.ravel() for x in vals])
        s = d["step_size"]["all"]
        np.testing.assert_allclose(float(s["min"]), flat.min(), rtol=1e-5)
        np.testing.assert_allclose(float(s["max"]), flat.max(), rtol=1e-5)
        np.testing.assert_allclose(float(s["median"]), np.median(flat), rtol=1e-5)
        np.testing.assert_allclose(float(d["grad_norm"]), _norm(g), rtol=1e-6)
        np.testing.assert_allclose(float(d["update_norm"]), _norm(u), rtol=1e-6)
        np.testing.assert_allclose(float(d["param_norm"]), _norm(PARAMS), rtol=1e-6)


def test_sgd_step_size_is_the_schedule_and_groups_scale_it():
    sched = gradtx.schedules.linear(0.1, 0.01, 4)
    tx = gradtx.groups(gradtx.sgd(sched, momentum=0.9), [gradtx.group("b", r"^b$", lr_mult=0.5)])
    for i, (*_, d) in enumerate(_run(tx, 4)):
        for stat in ("min", "median", "max"):
            np.testing.assert_allclose(
                float(d["step_size"]["default"][stat]), float(sched(i)), rtol=1e-6
            )
            np.testing.assert_allclose(
                float(d["step_size"]["b"][stat]), 0.5 * float(sched(i)), rtol=1e-6
            )


def test_clipping_by_global_norm_and_elementwise():
    for g, *_, d in _run(gradtx.chain(gradtx.clip_by_global_norm(2.0), gradtx.sgd(0.1)), 3):
        n = _norm(g)
        np.testing.assert_allclose(float(d["clipped_grad_norm"]), min(n, 2.0), rtol=1e-6)
        np.testing.assert_allclose(float(d["clip_fraction"]), max(0.0, 1 - 2.0 / n), rtol=1e-5)
    for g, *_, d in _run(gradtx.chain(gradtx.clip(1.5), gradtx.sgd(0.1)), 3):
        flat = np.concatenate([np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(g)])
        np.testing.assert_allclose(
            float(d["clip_fraction"]), np.mean(np.abs(flat) > 1.5), rtol=1e-6
        )
        np.testing.assert_allclose(
            float(d["clipped_grad_norm"]), np.linalg.norm(np.clip(flat, -1.5, 1.5)), rtol=1e-5
        )
    (*_, d), *_ = _run(gradtx.sgd(0.1), 1)
    assert float(d["clip_fraction"]) == 0.0 and float(d["clipped_grad_norm"]) == float(
        d["grad_norm"]
    )


def test_skipped_steps_are_reported():
    tx = gradtx.apply_if_finite(gradtx.adam(1e-3), 3)
    state = tx.init(PARAMS)
    seen = []
    for i in range(4):
        g = _grads(i)
        if i == 2:
            g = {**g, "b": g["b"].at[0].set(jnp.nan)}
        u, new = tx.update(g, state, PARAMS)
        seen.append(bool(gradtx.diagnostics(tx, g, state, PARAMS, u, new)["skipped"]))
        state = new
    assert seen == [False, False, True, False]


def test_outside_the_state_and_under_nnx():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    # momentum: an update recomputed from the state after the step would be ~1.9x too big
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.sgd(0.1, momentum=0.9))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train(model, opt, x):
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        before = jax.tree_util.tree_map(lambda v: v, opt.opt_state)  # values before the step
        params = nnx.state(model, nnx.Param)
        opt.update(model, grads)
        return gradtx.diagnostics(tx, grads, before, params, step_size=True)

    x = jnp.ones((4, 3))
    for _ in range(2):  # the second step starts from a state with moments
        p0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        d = train(model, opt, x)
        p1 = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        # recomputed from the state *before* the step, the update is the one nnx applied (rtol
        # 1e-3: p1 − p0 in float32 loses ~eps·|p|/|u| to cancellation)
        applied = jax.tree_util.tree_map(lambda a, b: b - a, p0, p1)
        np.testing.assert_allclose(float(d["update_norm"]), _norm(applied), rtol=1e-3)
    assert float(d["grad_norm"]) > 0 and float(d["step_size"]["all"]["median"]) > 0


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    tx = gradtx.groups(
        gradtx.chain(gradtx.clip_by_global_norm(2.0), gradtx.adam(1e-2)),
        [gradtx.group("b", r"^b$")],
    )
    history = [d for *_, d in _run(tx, 6)]
    fig = gradtx.plot_diagnostics(history, tmp_path / "d.png", title="run")
    assert (tmp_path / "d.png").stat().st_size > 1000
    assert len(fig.axes) == 3
    # a stacked dict (what a lax.scan returns) draws the same panels
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *history)
    assert len(gradtx.plot_diagnostics(stacked).axes) == 3
