"""optax's remaining named optimizers against NumPy float64 oracles written from the papers, and
against optax where the two definitions agree.

Each case runs gradtx (float32, its update jitted once) for ``STEPS`` steps on a small tree (a
matrix and a vector; SM3 also on a 3-d array and a scalar) with seeded gradients whose scale
differs by leaf (10^U(-2, 1)) and wanders over the steps; the oracle gets the same gradients
in float64, and the updates and the parameters after each step must agree. Where optax's
definition agrees with the paper's under the case's settings, optax's transformation (jitted
once) runs on the same gradients with its own params, and gradtx's updates must equal its
updates too.

Tolerance: ``rtol=1e-5`` with, per leaf, ``atol = 1e-6 × the largest |value| the leaf has had``
(an entry that cancels to ~0 keeps an absolute error of a few float32 roundings of the values it
came from; see tests/test_oracle_numpy.py). Hyperparameters enter the oracles at their float32
values (gradtx computes in float32), so the comparison resolves the algorithm, not the rounding
of β = 0.98.

The oracles follow the papers' rules in the parametrisation of gradtx's docstrings; where gradtx
documents a departure from optax (Adan's difference weight, Rprop's current update, Polyak's
scaling, optax's float32 ``1 - β^t``), the case has no optax side and
tests/test_optax_remaining.py pins the difference.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest

import gradtx

optax = pytest.importorskip("optax")

STEPS = 25
RTOL = 1e-5
ATOL_SCALE = 1e-6
SHAPES = {"w": (4, 3), "b": (3,)}
MASK = {"w": True, "b": False}
MASKED = [MASK[k] for k in sorted(SHAPES)]  # per flattened leaf (dict keys sorted)


def _f32(x: float) -> float:
    return oracles.as_float32_value(x)


def _lr(lr: Any, t: int) -> float:
    return float(lr(t - 1)) if callable(lr) else float(lr)


@functools.cache
def _data(seed: int = 0, shapes: tuple = tuple(SHAPES.items())) -> tuple[dict, list[dict]]:
    """Params and ``STEPS`` gradient trees (float32) of ``shapes``, made once per seed."""
    SHAPES = dict(shapes)  # noqa: N806
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    scale = {k: 10.0 ** rng.uniform(-2, 1) for k in SHAPES}
    grads = []
    for _ in range(STEPS):
        c = rng.uniform(0.2, 2.0)
        grads.append(
            {
                k: (rng.standard_normal(s) * scale[k] * c).astype(np.float32)
                for k, s in SHAPES.items()
            }
        )
    return jax.tree_util.tree_map(jnp.asarray, (params, grads))


# --- oracles (one array; ``step`` returns the update added to the params) -----------------------


class AdamaxW:
    """Kingma & Ba 2015 sec. 7.1 with ε in the maximum, plus decoupled decay η·λθ."""

    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4):
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, b1, b2, eps, weight_decay

    def init(self, p):
        return {"m": np.zeros_like(p), "u": np.zeros_like(p)}

    def step(self, g, s, p, t):
        m = self.b1 * s["m"] + (1 - self.b1) * g
        u = np.maximum(self.b2 * s["u"], np.abs(g) + self.eps)
        upd = m / (1 - self.b1**t) / u + self.wd * p
        return -_lr(self.lr, t) * upd, {"m": m, "u": u}


class Adan:
    """Xie et al. 2022, Algorithm 1 in the decay convention (β_paper = 1 − b), with the
    authors' bias corrections, Δ₁ = 0 and decoupled decay (their ``no_prox``)."""

    def __init__(self, lr, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, weight_decay=0.0):
        self.lr, self.b1, self.b2, self.b3 = lr, b1, b2, b3
        self.eps, self.eps_root, self.wd = eps, eps_root, weight_decay

    def init(self, p):
        z = np.zeros_like(p)
        return {"m": z, "v": z, "n": z, "g": z}

    def step(self, g, s, p, t):
        b1, b2, b3 = self.b1, self.b2, self.b3
        diff = np.zeros_like(g) if t == 1 else g - s["g"]
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * diff
        n = b3 * s["n"] + (1 - b3) * (g + b2 * diff) ** 2
        m_hat, v_hat, n_hat = m / (1 - b1**t), v / (1 - b2**t), n / (1 - b3**t)
        upd = (m_hat + b2 * v_hat) / (np.sqrt(n_hat + self.eps_root) + self.eps) + self.wd * p
        return -_lr(self.lr, t) * upd, {"m": m, "v": v, "n": n, "g": g}


class NovoGrad:
    """Ginsburg et al. 2019, Algorithm 1: per layer v₁ = ‖g₁‖², m = β1 m + g/(√v + ε) + λθ."""

    def __init__(self, lr, b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, weight_decay=0.0):
        self.lr, self.b1, self.b2, self.eps, self.eps_root = lr, b1, b2, eps, eps_root
        self.wd = weight_decay

    def init(self, p):
        return {"m": np.zeros_like(p), "v": 0.0}

    def step(self, g, s, p, t):
        norm_sq = float(np.sum(g * g))
        v = norm_sq if t == 1 else self.b2 * s["v"] + (1 - self.b2) * norm_sq
        m = self.b1 * s["m"] + g / (np.sqrt(v + self.eps_root) + self.eps) + self.wd * p
        return -_lr(self.lr, t) * m, {"m": m, "v": v}


class OGD:
    """Mokhtari et al. 2020 (generalised): θ -= η((α+β)g_t − βg_{t−1}), g_0 = g_1."""

    def __init__(self, lr, alpha=1.0, beta=1.0):
        self.lr, self.alpha, self.beta = lr, alpha, beta

    def init(self, p):
        return {"prev": None}

    def step(self, g, s, p, t):
        prev = g if s["prev"] is None else s["prev"]
        d = (self.alpha + self.beta) * g - self.beta * prev
        return -_lr(self.lr, t) * d, {"prev": g}


class OptimisticAdam:
    """Daskalakis et al. 2018, Algorithm 1 generalised: r_t Adam's step (Dozat's Nesterov form
    with ``nesterov``), θ -= η((α+β)r_t − βr_{t−1}), r_0 = r_1."""

    def __init__(self, lr, alpha, beta, b1=0.9, b2=0.999, eps=1e-8, nesterov=True):
        self.lr, self.alpha, self.beta = lr, alpha, beta
        self.b1, self.b2, self.eps, self.nesterov = b1, b2, eps, nesterov

    def init(self, p):
        return {"m": np.zeros_like(p), "v": np.zeros_like(p), "r": None}

    def step(self, g, s, p, t):
        b1, b2 = self.b1, self.b2
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * g * g
        if self.nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        r = m_hat / (np.sqrt(v / (1 - b2**t)) + self.eps)
        prev = r if s["r"] is None else s["r"]
        d = (self.alpha + self.beta) * r - self.beta * prev
        return -_lr(self.lr, t) * d, {"m": m, "v": v, "r": r}


class Signum:
    """Bernstein et al. 2018: θ -= η sign(m), m = βm + (1−β)g."""

    def __init__(self, lr, beta=0.9):
        self.lr, self.beta = lr, beta

    def init(self, p):
        return {"m": np.zeros_like(p)}

    def step(self, g, s, p, t):
        m = self.beta * s["m"] + (1 - self.beta) * g
        return -_lr(self.lr, t) * np.sign(m), {"m": m}


class Rprop:
    """iRprop⁻ (Igel & Hüsken 2003), as torch.optim.Rprop describes it: the previous gradient
    is stored zeroed where its sign flipped, the step is −Δ·sign(g̃)."""

    def __init__(self, lr, eta_minus=0.5, eta_plus=1.2, min_step_size=1e-6, max_step_size=50.0):
        self.lr, self.em, self.ep = lr, eta_minus, eta_plus
        self.lo, self.hi = min_step_size, max_step_size

    def init(self, p):
        return {"delta": np.full_like(p, self.lr), "prev": np.zeros_like(p)}

    def step(self, g, s, p, t):
        agree = g * s["prev"]
        factor = np.where(agree > 0, self.ep, self.em)
        delta = np.where(agree == 0, s["delta"], np.clip(s["delta"] * factor, self.lo, self.hi))
        g_mod = np.where(agree < 0, 0.0, g)
        return -delta * np.sign(g_mod), {"delta": delta, "prev": g_mod}


class SM3:
    """Anil et al. 2019, SM3-II over the cover by slices along each axis (each entry alone for
    k ≤ 1), then m = βm + (1−β)·g/√(ν + ε) (0 where ν = 0)."""

    def __init__(self, lr, momentum=0.9, eps=1e-8):
        self.lr, self.beta, self.eps = lr, momentum, eps

    def init(self, p):
        mu = [np.zeros(n) for n in p.shape] if p.ndim >= 2 else [np.zeros(p.shape)]
        return {"mu": mu, "m": np.zeros_like(p)}

    def step(self, g, s, p, t):
        k = g.ndim
        if k >= 2:
            prev = np.min(
                np.stack(
                    [
                        np.broadcast_to(v.reshape([-1 if j == i else 1 for j in range(k)]), g.shape)
                        for i, v in enumerate(s["mu"])
                    ]
                ),
                axis=0,
            )
        else:
            prev = s["mu"][0]
        nu = g * g + prev
        if k >= 2:
            mu = [np.max(nu, axis=tuple(j for j in range(k) if j != i)) for i in range(k)]
        else:
            mu = [nu]
        safe = np.where(nu > 0, nu, 1.0)
        x = np.where(nu > 0, g / np.sqrt(safe + self.eps), 0.0)
        m = self.beta * s["m"] + (1 - self.beta) * x
        return -_lr(self.lr, t) * m, {"mu": mu, "m": m}


class Fromage:
    """Bernstein et al. 2020, Algorithm 1 with LARS's norm floor n₀:
    θ ← (θ − η·max(‖θ‖, n₀)/max(‖g‖, n₀)·g) / √(1 + η²)."""

    def __init__(self, lr, min_norm=1e-6):
        self.lr, self.min_norm = lr, min_norm

    def init(self, p):
        return {}

    def step(self, g, s, p, t):
        eta = _lr(self.lr, t)
        pn = max(float(np.linalg.norm(p)), self.min_norm)
        gn = max(float(np.linalg.norm(g)), self.min_norm)
        ratio = pn / gn if pn > 0 and gn > 0 else 1.0
        new = (p - eta * ratio * g) / np.sqrt(1 + eta * eta)
        return new - p, s


class NoisySGD:
    """Neelakantan et al. 2015: θ -= η(g + N(0, σ²)), σ² = η₀/t^γ; the normal draws ξ are the
    documented key schedule's (``_noise``), given to the oracle."""

    def __init__(self, lr, eta, gamma, noise):
        self.lr, self.eta, self.gamma, self.noise = lr, eta, gamma, noise

    def init(self, ps):
        return None

    def step(self, gs, s, ps, t):
        std = np.sqrt(self.eta / t**self.gamma)
        xi = self.noise[t - 1]
        return [-_lr(self.lr, t) * (g + std * x) for g, x in zip(gs, xi)], s


class PolyakSGD:
    """Loizou et al. 2021 (SPS_max) with a scaling s: θ -= s·min(gap/(‖g‖² + ε), γ_max)·g over
    the whole tree; ``sps+`` uses max(gap, 0)."""

    def __init__(self, values, max_learning_rate=1.0, scaling=1.0, f_min=0.0, eps=0.0, plus=False):
        self.values, self.gmax, self.s = values, max_learning_rate, scaling
        self.f_min, self.eps, self.plus = f_min, eps, plus

    def init(self, ps):
        return None

    def step(self, gs, s, ps, t):
        sq = sum(float(np.sum(g * g)) for g in gs) + self.eps
        gap = self.values[t - 1] - self.f_min
        gap = max(gap, 0.0) if self.plus else gap
        gamma = min(gap / sq, self.gmax)
        return [-_lr(self.s, t) * gamma * g for g in gs], s


# --- running both sides ---------------------------------------------------------------------------


def _noise(key: Any, params: Any) -> list[list[np.ndarray]]:
    """optax's draws: ``optax.add_noise(1, 0, key)`` applied to zero gradients returns ξ_t."""
    noise = optax.add_noise(1.0, 0.0, key)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)

    def body(state, _):
        with jax.numpy_dtype_promotion("standard"):
            xi, state = noise.update(zeros, state)
        return state, jax.tree_util.tree_leaves(xi)

    _, draws = jax.jit(lambda s: jax.lax.scan(body, s, None, length=STEPS))(noise.init(params))
    return [[np.asarray(d[t], np.float64) for d in draws] for t in range(STEPS)]


def _compare(tx, oracle, params, grads, values=None, theirs=None) -> None:
    """gradtx against the oracle (updates and params) and, if given, optax's ``theirs``."""
    extra = (lambda t: {"value": jnp.float32(values[t])}) if values is not None else (lambda t: {})

    def make_step(tx, promotion):
        @jax.jit
        def step(g, state, p, kw):
            with jax.numpy_dtype_promotion(promotion):
                u, state = tx.update(g, state, p, **kw)
            return u, state, gradtx.apply_updates(p, u)

        return step

    leaves, treedef = jax.tree_util.tree_flatten(params)
    ps = [np.asarray(p, np.float64) for p in leaves]
    ref_state = oracle.init(ps)
    sides = {"gradtx": (tx, make_step(tx, "strict"))}
    if theirs is not None:
        with jax.numpy_dtype_promotion("standard"):
            sides["optax"] = (theirs, make_step(theirs, "standard"))
    run = {n: [t.init(params), params] for n, (t, _) in sides.items()}
    scale = {w: np.zeros(len(ps)) for w in ("update", "params", "optax")}
    for t, g in enumerate(grads, start=1):
        out = {}
        for n, (_, step) in sides.items():
            u, run[n][0], run[n][1] = step(g, run[n][0], run[n][1], extra(t - 1))
            out[n] = jax.tree_util.tree_leaves(u)
        gs = [np.asarray(x, np.float64) for x in treedef.flatten_up_to(g)]
        us, ref_state = oracle.step(gs, ref_state, ps, t)
        ps = [a + b for a, b in zip(ps, us)]
        checks = [
            ("update", out["gradtx"], us),
            ("params", jax.tree_util.tree_leaves(run["gradtx"][1]), ps),
        ]
        if theirs is not None:
            checks.append(
                ("optax", out["gradtx"], [np.asarray(x, np.float64) for x in out["optax"]])
            )
        for what, ours, ref in checks:
            for i, (a, d) in enumerate(zip(ours, ref)):
                assert a.dtype == jnp.float32
                scale[what][i] = max(scale[what][i], float(np.max(np.abs(d), initial=0.0)))
                np.testing.assert_allclose(
                    np.asarray(a, np.float64),
                    d,
                    rtol=RTOL,
                    atol=ATOL_SCALE * scale[what][i],
                    err_msg=f"{what} at step {t}, leaf {i}",
                )


SCHEDULE = gradtx.schedules.linear(3e-2, 3e-3, STEPS)


def _schedule_np(count: int) -> float:
    return float(SCHEDULE(count))


def _deprecated_optimistic_adam(*args, **kwargs):
    """``optax.optimistic_adam`` without its DeprecationWarning (warnings are errors here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return optax.optimistic_adam(*args, **kwargs)


# (id, gradtx optimizer, per-leaf oracle of leaf i, optax's optimizer or None where optax's
# definition differs) -- the oracles get float32 hyperparameter values
PER_LEAF = [
    (
        "adamaxw",
        lambda: gradtx.adamaxw(1e-2, 0.8, 0.99, 0.05, 0.1, MASK),
        lambda i: AdamaxW(1e-2, _f32(0.8), _f32(0.99), _f32(0.05), _f32(0.1) * MASKED[i]),
        lambda: optax.adamaxw(1e-2, 0.8, 0.99, 0.05, 0.1, MASK),
    ),
    (  # the paper's weight b2 on the difference; optax's 1 − b2 differs
        "adan",
        lambda: gradtx.adan(1e-2, weight_decay=0.05),
        lambda i: Adan(1e-2, _f32(0.98), _f32(0.92), _f32(0.99), 1e-8, 1e-8, _f32(0.05)),
        None,
    ),
    (  # b2 = 1 − b2: here optax's weight equals the paper's
        "adan_b2_half",
        lambda: gradtx.adan(1e-2, 0.9, 0.5, 0.95, 0.01, 1e-8, 0.05, MASK),
        lambda i: Adan(1e-2, _f32(0.9), 0.5, _f32(0.95), _f32(0.01), 1e-8, _f32(0.05) * MASKED[i]),
        lambda: optax.adan(1e-2, 0.9, 0.5, 0.95, 0.01, 1e-8, 0.05, MASK),
    ),
    (
        "novograd",
        lambda: gradtx.novograd(1e-2, 0.8, 0.5, 0.01, 1e-4, 0.1),
        lambda i: NovoGrad(1e-2, _f32(0.8), 0.5, _f32(0.01), _f32(1e-4), _f32(0.1)),
        lambda: optax.novograd(1e-2, 0.8, 0.5, 0.01, 1e-4, 0.1),
    ),
    (
        "optimistic_gradient_descent",
        lambda: gradtx.optimistic_gradient_descent(1e-2, 0.7, 0.4),
        lambda i: OGD(1e-2, _f32(0.7), _f32(0.4)),
        lambda: optax.optimistic_gradient_descent(1e-2, 0.7, 0.4),
    ),
    # b2 = 0.99 where optax runs: its 1 − b2^t in float32 is off by ~3e-5 relative at t = 2 for
    # b2 = 0.999 (gradtx's is formed without cancellation), beyond the tolerance by itself
    (
        "optimistic_adam_v2",
        lambda: gradtx.optimistic_adam_v2(SCHEDULE, alpha=0.6, beta=0.5, b2=0.99, eps=0.01),
        lambda i: OptimisticAdam(_schedule_np, _f32(0.6), 0.5, b2=_f32(0.99), eps=_f32(0.01)),
        lambda: optax.optimistic_adam_v2(SCHEDULE, alpha=0.6, beta=0.5, b2=0.99, eps=0.01),
    ),
    (  # η goes into α and the step is 1 (optax's composition)
        "optimistic_adam",
        lambda: gradtx.optimistic_adam(1e-2, 5e-3, b2=0.99, eps=0.01, nesterov=False),
        lambda i: OptimisticAdam(
            1.0, _f32(1e-2), _f32(5e-3), b2=_f32(0.99), eps=_f32(0.01), nesterov=False
        ),
        lambda: _deprecated_optimistic_adam(1e-2, 5e-3, b2=0.99, eps=0.01, nesterov=False),
    ),
    (
        "signum",
        lambda: gradtx.signum(SCHEDULE, 0.8),
        lambda i: Signum(_schedule_np, _f32(0.8)),
        lambda: optax.signum(SCHEDULE, 0.8),
    ),
    (  # optax returns the previous step's update
        "rprop",
        lambda: gradtx.rprop(0.05, 0.4, 1.3, 1e-3, 0.2),
        lambda i: Rprop(_f32(0.05), _f32(0.4), _f32(1.3), _f32(1e-3), _f32(0.2)),
        None,
    ),
    (
        "sm3",
        lambda: gradtx.sm3(0.1, 0.8),
        lambda i: SM3(_f32(0.1), _f32(0.8), _f32(1e-8)),
        lambda: optax.sm3(0.1, 0.8),
    ),
    (
        "fromage",
        lambda: gradtx.fromage(0.05, 0.1),
        lambda i: Fromage(0.05, _f32(0.1)),
        lambda: optax.fromage(0.05, 0.1),
    ),
    (  # optax forms 1/√(1+η_t²) − 1 in float32: cancellation of ~1e-7/η_t² relative
        "fromage_scheduled",
        lambda: gradtx.fromage(SCHEDULE),
        lambda i: Fromage(_schedule_np, _f32(1e-6)),
        None,
    ),
]


@pytest.mark.parametrize("case", PER_LEAF, ids=[c[0] for c in PER_LEAF])
def test_named_optimizer_equals_its_paper_oracle_and_optax(case):
    _, make, make_oracle, make_optax = case
    params, grads = _data()
    theirs = make_optax() if make_optax is not None else None
    _compare(make(), oracles.PerLeaf(make_oracle), params, grads, theirs=theirs)


def test_sm3_on_scalars_and_3d_arrays():
    """A 0-d leaf is its own cover (optax's SM3 rejects it); a 3-d array has three covers."""
    params, grads = _data(4, (("s", ()), ("k", (2, 3, 2))))
    _compare(
        gradtx.sm3(0.1, 0.8), oracles.PerLeaf(lambda i: SM3(_f32(0.1), _f32(0.8))), params, grads
    )


def test_noisy_sgd_equals_its_oracle_with_optax_draws():
    """The rule on optax's draws of ξ_t (so this is also equality with ``optax.noisy_sgd``, whose
    key schedule gradtx documents); two leaves of one shape share one vmapped draw in gradtx."""
    params, grads = _data(1, (("w", (4, 3)), ("v", (4, 3))))
    key = jax.random.key(7)
    oracle = NoisySGD(_schedule_np, _f32(0.05), _f32(0.55), _noise(key, params))
    _compare(gradtx.noisy_sgd(SCHEDULE, 0.05, 0.55, key=key), oracle, params, grads)
    assert np.std(oracle.noise[0][0]) > 0.5  # the noise is there (standard normal draws)


@pytest.mark.parametrize(("variant", "scaling"), [("sps", 1.0), ("sps+", 0.5)])
def test_polyak_sgd_equals_its_oracle(variant, scaling):
    """Losses around f_min = 0.5 (sps+ zeroes negative gaps) and a γ_max that binds; at scaling
    1 also optax's (whose scaling differs otherwise)."""
    params, grads = _data(2)
    values = list(np.random.default_rng(3).uniform(-1.0, 20.0, STEPS).astype(np.float32))
    tx = gradtx.polyak_sgd(0.05, scaling, 0.5, 1e-3, variant)
    oracle = PolyakSGD(
        [float(v) for v in values], _f32(0.05), scaling, 0.5, _f32(1e-3), variant == "sps+"
    )
    theirs = optax.polyak_sgd(0.05, scaling, 0.5, 1e-3, variant) if scaling == 1.0 else None
    _compare(tx, oracle, params, grads, values, theirs)
