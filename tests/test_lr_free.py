"""The learning-rate-free optimizers: DoG, DoWG, Prodigy and D-Adaptation (AdamW).

Each is checked three ways:

- against a NumPy float64 loop of its documented rule (the paper's recursions with the
  choices the docstring states), written here per parameter as the authors' PyTorch code is,
  for ``STEPS`` steps: updates and the step-size estimate at every step, ``rtol=1e-5`` plus an
  ``atol`` of ``1e-6 ×`` the largest magnitude the leaf has had (entries cancelled to near 0);
  the oracle uses the float32-rounded hyperparameters gradtx computes with;
- against ``optax.contrib`` on the same gradients, each side applying its own updates;
- on the ill-conditioned quadratic and Rosenbrock's valley of ``tests/test_convergence.py``.

The gradients are fixed random sequences with a constant bias, so the params drift in one
direction and the estimates of the distance travelled (DoG's r̄, Prodigy's and D-Adaptation's d)
grow over the run, as in training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

optax = pytest.importorskip("optax")
contrib = pytest.importorskip("optax.contrib")

STEPS = 25
RTOL, ATOL_SCALE = 1e-5, 1e-6
SHAPES = {"w": (4, 3), "b": (3,)}


def f32(x: float) -> float:
    """A hyperparameter as gradtx computes with it: rounded to float32."""
    return float(np.float32(x))


def _data(seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    bias = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grads = []
    for _ in range(STEPS):
        c = scale * rng.uniform(0.3, 2.0)
        grads.append(
            {
                k: (c * (bias[k] + 0.7 * rng.normal(size=s))).astype(np.float32)
                for k, s in SHAPES.items()
            }
        )
    return params, grads


def _run(tx, params, grads, *, entry=None, promotion=None):
    """Updates (and the state entry ``entry`` of the last stage, if given) at every step."""
    ctx = jax.numpy_dtype_promotion(promotion) if promotion else jax.numpy_dtype_promotion("strict")
    with ctx:
        update = jax.jit(tx.update)
        p = {k: jnp.asarray(v) for k, v in params.items()}
        state = tx.init(p)
        out, seen = [], []
        for g in grads:
            u, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
            p = jax.tree_util.tree_map(lambda a, b: a + b, p, u)
            out.append({k: np.asarray(v, np.float64) for k, v in u.items()})
            if entry is not None:
                seen.append(float(entry(state)))
    return out, seen


def _close(ours, ref, what: str, rtol: float = RTOL, atol_scale: float = ATOL_SCALE) -> None:
    """``|ours − ref| ≤ rtol·|ref| + atol`` at every step, ``atol`` per leaf as the docstring."""
    peak = {k: 0.0 for k in ref[0]}
    for step, (a, b) in enumerate(zip(ours, ref), 1):
        for k in b:
            peak[k] = max(peak[k], float(np.max(np.abs(b[k]))))
            np.testing.assert_allclose(
                a[k], b[k], rtol=rtol, atol=atol_scale * peak[k], err_msg=f"{what} {k} step {step}"
            )
    assert max(peak.values()) > 0  # not vacuous


# --- NumPy float64 oracles ----------------------------------------------------------------------
def _step(x, u):
    """``x + u`` rounded to float32: the params are float32 (for DoG, whose first steps are
    ~1e-7 on params ~1, the rounding is most of ``‖x − x_0‖``)."""
    return {k: (x[k] + u[k]).astype(np.float32).astype(np.float64) for k in x}


def _norm2(tree) -> float:
    return float(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in tree.values()))


def dog_oracle(params, grads, lr=1.0, init_step=("heuristic", 1e-6), eps=1e-8, wd=None):
    tag, value = init_step[0], f32(init_step[1])
    eps = f32(eps)
    x = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x0 = {k: v.copy() for k, v in x.items()}
    r = {"distance": value, "heuristic": value * (1 + np.sqrt(_norm2(x))), "learning_rate": 0.0}[
        tag
    ]
    big_g, out, steps = 0.0, [], []
    for t, g in enumerate(grads):
        g = {k: np.asarray(v, np.float64) + (f32(wd) * x[k] if wd else 0.0) for k, v in g.items()}
        r = max(r, np.sqrt(_norm2({k: x[k] - x0[k] for k in x})))
        big_g += _norm2(g)
        eta = r / np.sqrt(big_g + eps)
        if tag == "learning_rate" and t == 0:
            eta = value
        a = f32(lr(t)) if callable(lr) else f32(lr)
        u = {k: -a * eta * g[k] for k in x}
        x = _step(x, u)
        out.append(u)
        steps.append(r)
    return out, steps


def dowg_oracle(params, grads, lr=1.0, init_estim_sq_dist=None, eps=1e-4):
    eps = f32(eps)
    x = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x0 = {k: v.copy() for k, v in x.items()}
    r2 = eps if init_estim_sq_dist is None else f32(init_estim_sq_dist)
    v, out, steps = 0.0, [], []
    for g in grads:
        g = {k: np.asarray(a, np.float64) for k, a in g.items()}
        r2 = max(r2, _norm2({k: x[k] - x0[k] for k in x}))
        v += r2 * _norm2(g)
        u = {k: -f32(lr) * r2 / (np.sqrt(v) + eps) * g[k] for k in x}
        x = _step(x, u)
        out.append(u)
        steps.append(r2)
    return out, steps


def _adapted_adam(params, grads, lr, betas, d0, rule):
    """The loop both D-adaptation oracles share. Per step: ``γ = η_t·√(1−β2ᵗ)/(1−β1ᵗ)``, then
    ``rule(g, x, x0, m, v, s, r, d, γ) -> (u, r, d_next)`` updates the per-param moments
    m, v, s (dicts, in place) and returns the update. Returns the updates and the estimates."""
    b1, b2 = f32(betas[0]), f32(betas[1])
    x = {k: np.asarray(p, np.float64) for k, p in params.items()}
    x0 = {k: p.copy() for k, p in x.items()}
    m, v, s = ({k: np.zeros_like(p) for k, p in x.items()} for _ in range(3))
    r, d, out, ds = 0.0, f32(d0), [], []
    for t, g in enumerate(grads):
        g = {k: np.asarray(a, np.float64) for k, a in g.items()}
        eta = f32(lr(t)) if callable(lr) else f32(lr)
        gamma = eta * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        u, r, d = rule(g, x, x0, m, v, s, r, d, gamma)
        x = _step(x, u)
        out.append(u)
        ds.append(d)
    return out, ds


def prodigy_oracle(
    params, grads, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, d0=1e-6, coef=1.0,
    wd=0.0, safeguard=False,
):  # fmt: skip
    """Prodigy per parameter, as the authors' code loops (prodigyopt, bias correction on)."""
    b1, b2 = f32(betas[0]), f32(betas[1])
    b3 = np.sqrt(b2) if beta3 is None else f32(beta3)
    eps, d0, coef, wd = f32(eps), f32(d0), f32(coef), f32(wd)

    def rule(g, x, x0, m, v, s, r, d, gamma):
        r *= b3
        l1 = 0.0
        for k in x:
            r += (d / d0) * d * gamma * np.sum(g[k] * (x0[k] - x[k]))
            m[k] = b1 * m[k] + (1 - b1) * d * g[k]
            v[k] = b2 * v[k] + (1 - b2) * d * d * g[k] ** 2
            s[k] = b3 * s[k] + (d / d0) * (d if safeguard else d * gamma) * g[k]
            l1 += np.sum(np.abs(s[k]))
        d_next = max(d, coef * r / l1) if l1 > 0 else d
        u = {k: -d * gamma * (m[k] / (np.sqrt(v[k]) + d_next * eps) + wd * x[k]) for k in x}
        return u, r, d_next

    return _adapted_adam(params, grads, lr, betas, d0, rule)


def dadapt_oracle(params, grads, lr=1.0, betas=(0.9, 0.999), eps=1e-8, d0=1e-6, wd=0.0):
    """D-Adapted Adam per parameter, as dadaptation.DAdaptAdam loops (bias correction on)."""
    b1, b2 = f32(betas[0]), f32(betas[1])
    sb2 = np.sqrt(b2)
    eps, wd = f32(eps), f32(wd)

    def rule(g, x, x0, m, v, s, r, d, gamma):
        lam = d * gamma
        acc, l1 = 0.0, 0.0
        for k in x:
            acc += lam * np.sum(g[k] * s[k] / (np.sqrt(v[k]) + eps))  # the old s and v
            m[k] = b1 * m[k] + (1 - b1) * lam * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            s[k] = sb2 * s[k] + (1 - sb2) * lam * g[k]
            l1 += np.sum(np.abs(s[k]))
        r = sb2 * r + (1 - sb2) * acc
        d_next = max(d, r / ((1 - sb2) * l1)) if l1 > 0 else d
        u = {k: -m[k] / (np.sqrt(v[k]) + eps) - wd * lam * x[k] for k in x}
        return u, r, d_next

    return _adapted_adam(params, grads, lr, betas, d0, rule)


SCHED = gradtx.schedules.linear(1.0, 0.2, STEPS)
OPTAX_SCHED = optax.linear_schedule(1.0, 0.2, STEPS)

# (id, gradtx optimizer, oracle, its arguments, the estimate in gradtx's state, the same
# optimizer in optax.contrib)
CASES = [
    ("dog", gradtx.dog(), dog_oracle, {}, lambda s: s.scale_by_dog.max_dist, contrib.dog()),
    (
        "dog_first_learning_rate_scheduled_decay",
        gradtx.dog(SCHED, ("learning_rate", 1e-2), weight_decay=0.1),
        dog_oracle,
        {"lr": SCHED, "init_step": ("learning_rate", 1e-2), "wd": 0.1},
        lambda s: s.scale_by_dog.max_dist,
        contrib.dog(OPTAX_SCHED, ("learning_rate", 1e-2), weight_decay=0.1),
    ),
    (
        "dowg_given_distance",
        gradtx.dowg(0.5, 1e-2, 1e-3),
        dowg_oracle,
        {"lr": 0.5, "init_estim_sq_dist": 1e-2, "eps": 1e-3},
        lambda s: s.scale_by_dowg.estim_sq_dist,
        contrib.dowg(0.5, 1e-2, 1e-3),
    ),
    (
        "prodigy",
        gradtx.prodigy(),
        prodigy_oracle,
        {},
        lambda s: s.prodigy.estim_lr,
        contrib.prodigy(),
    ),
    (
        "prodigy_all_options",
        gradtx.prodigy(SCHED, (0.8, 0.99), 0.9, 1e-3, 1e-5, 2.0, 0.1, True),
        prodigy_oracle,
        {
            "lr": SCHED,
            "betas": (0.8, 0.99),
            "beta3": 0.9,
            "eps": 1e-3,
            "d0": 1e-5,
            "coef": 2.0,
            "wd": 0.1,
            "safeguard": True,
        },  # fmt: skip
        lambda s: s.prodigy.estim_lr,
        contrib.prodigy(OPTAX_SCHED, (0.8, 0.99), 0.9, 1e-3, 1e-5, 2.0, 0.1, True),
    ),
    (
        "dadapt_adamw",
        gradtx.dadapt_adamw(),
        dadapt_oracle,
        {},
        lambda s: s.dadapt_adamw.estim_lr,
        contrib.dadapt_adamw(),
    ),
    (
        "dadapt_adamw_all_options",
        gradtx.dadapt_adamw(SCHED, (0.8, 0.99), 1e-3, 1e-5, 0.1),
        dadapt_oracle,
        {"lr": SCHED, "betas": (0.8, 0.99), "eps": 1e-3, "d0": 1e-5, "wd": 0.1},
        lambda s: s.dadapt_adamw.estim_lr,
        contrib.dadapt_adamw(OPTAX_SCHED, (0.8, 0.99), 1e-3, 1e-5, 0.1),
    ),
]

#: Tolerance (rtol = atol scale) against optax. optax forms the bias correction as
#: ``1 - β**t`` in float32, which cancels: at β2 = 0.999 its √(1-β2ᵗ) is off by up to ~1e-5
#: relative in the first steps (gradtx's ``-expm1(t·log β)`` is within 3e-7 of the float64
#: oracle there), and that error enters every later step through d and the momentum; 3e-5
#: bounds it. DoG and DoWG have no such term: the default tolerance.
OPTAX_TOL = {"prodigy": 3e-5, "dadapt": 3e-5}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_equals_the_numpy_float64_rule_and_optax(case):
    name, tx, oracle, kwargs, entry, theirs = case
    params, grads = _data()
    ours, estimates = _run(tx, params, grads, entry=entry)
    ref, ref_estimates = oracle(params, grads, **kwargs)
    _close(ours, ref, name)
    np.testing.assert_allclose(estimates, ref_estimates, rtol=RTOL, err_msg=name)
    assert ref_estimates[-1] > 4 * ref_estimates[0]  # the estimate grew: the rule was exercised
    # optax on the same gradients, applying its own updates (the gradients do not depend on
    # the params, so gradtx's updates above are those of the same run)
    optax_updates, _ = _run(theirs, params, grads, promotion="standard")
    tol = next((v for k, v in OPTAX_TOL.items() if name.startswith(k)), None)
    args = {"rtol": tol, "atol_scale": tol} if tol else {}
    _close(ours, optax_updates, f"{name} vs optax", **args)


# --- convergence ------------------------------------------------------------------------------
CONVERGENCE_STEPS = 3000


def test_converges_on_least_squares_without_a_learning_rate():
    """Every one, at its defaults (η = 1: nothing tuned), solves a least-squares regression with
    an intercept: 40 samples, 6 features scaled 1..10 (Hessian condition number ~100, plus the
    intercept), optimum from ``numpy.linalg.lstsq``, starting at 0 (f₀ ≈ 729, f* ≈ 5e-3).
    Measured after 3,000 steps: relative gap (f − f*)/(f₀ − f*) ≤ 1.1e-7 and parameter error
    ≤ 2e-3 (DoG, the slowest; the others ≤ 2e-4). One compiled program for all four.
    (Rosenbrock and the quadratic of tests/test_convergence.py: see CONVERGENCE there.)"""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 6)) @ np.diag(np.geomspace(1.0, 10.0, 6))
    b = a @ (3 * rng.normal(size=6)) + 0.1 * rng.normal(size=40) + 2.0
    a1 = np.c_[a, np.ones(40)]
    best = np.linalg.lstsq(a1, b, rcond=None)[0]
    f_star, f_0 = 0.5 * np.mean((a1 @ best - b) ** 2), 0.5 * np.mean(b**2)
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

    def loss(p):
        return 0.5 * jnp.mean((a32 @ p["w"] + p["c"] - b32) ** 2)

    txs = {n: getattr(gradtx, n)() for n in ("dog", "dowg", "prodigy", "dadapt_adamw")}

    @jax.jit
    def solve():
        out = {}
        for name, tx in txs.items():

            def body(carry, _, tx=tx):
                p, state = carry
                u, state = tx.update(jax.grad(loss)(p), state, p)
                return (gradtx.apply_updates(p, u), state), None

            p = {"w": jnp.zeros(6), "c": jnp.zeros(())}
            (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=CONVERGENCE_STEPS)
            out[name] = (loss(p), jnp.concatenate([p["w"], p["c"][None]]))
        return out

    for name, (f, theta) in solve().items():
        gap = (float(f) - f_star) / (f_0 - f_star)
        error = np.linalg.norm(np.asarray(theta, np.float64) - best) / np.linalg.norm(best)
        assert gap < 1e-5 and error < 1e-2, f"{name}: gap {gap:.2g}, parameter error {error:.2g}"


# --- knobs, state and errors ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dog", "dowg", "prodigy", "dadapt_adamw"])
def test_describe_names_the_estimated_step(name):
    tx = getattr(gradtx, name)(1e-3)  # as the knob table of the lecture lab builds it
    assert isinstance(tx, gradtx.Optimizer)
    d = tx.describe()
    assert {"g", "sigma", "eta", "order", "before", "after", "state_dtypes"} <= set(d)
    assert "1e-3" in d["eta"] or "0.001" in d["eta"], d["eta"]
    estimate = {"dog": "DoG", "dowg": "DoWG", "prodigy": "Prodigy", "dadapt_adamw": "D-Adapt"}
    assert estimate[name] in d["eta"], d["eta"]
    if name in ("dog", "dowg"):
        assert d["g"].startswith("none") and d["sigma"].startswith("none")
    else:
        assert "EMA" in d["g"] and "√v" in d["sigma"]
        # float16 params keep the moments in float32 (they start near d₀ = 1e-6)
        assert d["state_dtypes"]["exp_avg_sq"] == "param dtype (float32 for float16)"
    assert getattr(gradtx, name)(weight_decay=0.1) != tx  # a value: compared by configuration


def test_zero_gradients_keep_the_estimate():
    """Before any non-zero gradient ‖s‖₁ = 0: gradtx keeps d (optax's estimate is 0/0 = NaN,
    and so are its updates from then on; the authors' code skips those steps)."""
    params = {"w": jnp.ones(3)}
    zero, g = {"w": jnp.zeros(3)}, {"w": jnp.array([1.0, -2.0, 0.5])}
    for ours, theirs in [
        (gradtx.prodigy(), contrib.prodigy()),
        (gradtx.dadapt_adamw(), contrib.dadapt_adamw()),
    ]:
        s, update = ours.init(params), jax.jit(ours.update)
        for grad in (zero, g):
            u, s = update(grad, s, params)
        core = s[0]
        assert float(core.estim_lr) >= f32(1e-6) and bool(jnp.all(jnp.isfinite(u["w"])))
        assert float(jnp.max(jnp.abs(u["w"]))) > 0
        with jax.numpy_dtype_promotion("standard"):
            _, t = jax.jit(theirs.update)(zero, theirs.init(params), params)
        assert np.isnan(float(t.estim_lr))


def test_errors_name_the_optimizer():
    params = {"w": jnp.ones(2)}
    for tx in (gradtx.dog(), gradtx.dowg(), gradtx.prodigy(), gradtx.dadapt_adamw()):
        with pytest.raises(gradtx.TransformError, match=rf"gradtx\.{tx.name}.*needs params"):
            tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match=r"gradtx\.dog \(scale_by_dog\): init_step .*'bogus'"):
        gradtx.dog(init_step=("bogus", 1.0))
    with pytest.raises(TypeError, match=r"gradtx\.dowg \(scale_by_dowg\): .*cannot be sched"):
        gradtx.dowg(eps=gradtx.schedules.linear(1e-4, 1e-5, 10))
    with pytest.raises(ValueError, match=r"gradtx\.prodigy: betas\[1\] must be in"):
        gradtx.prodigy(betas=(0.9, 1.5))
    with pytest.raises(ValueError, match=r"gradtx\.dadapt_adamw: estim_lr0 must be > 0"):
        gradtx.dadapt_adamw(estim_lr0=0.0)
    tx = gradtx.prodigy()
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.prodigy: state was built by"):
        tx.update(params, gradtx.dadapt_adamw().init(params), params)
    with pytest.raises(gradtx.TransformError, match=r"gradtx\.prodigy.*\['v'\]"):
        tx.update({"v": jnp.ones(2)}, tx.init(params), {"v": jnp.ones(2)})
