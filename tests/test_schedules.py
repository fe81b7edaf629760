"""Tests of gradtx.schedules: hand-computed values, torch and optax parity, jit/vmap, hashing.

Hand-computed expectations use Python ``math`` in float64; the schedules compute in float32,
so comparisons use ``rtol=1e-5`` (plus a small ``atol`` where the value may be 0).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from gradtx import schedules as gs

N = 50  # steps compared against torch and optax


def values(sched, steps) -> np.ndarray:
    """The schedule at ``steps`` through ``jax.vmap`` over an int32 step, checked float32."""
    out = jax.vmap(sched)(jnp.asarray(steps, jnp.int32))
    assert out.dtype == jnp.float32 and out.shape == (len(steps),)
    return np.asarray(out, np.float64)


def torch_lrs(lr: float, make, n: int = N) -> np.ndarray:
    """``param_groups[0]['lr']`` before each of ``n`` updates of SGD driven by a torch scheduler."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    scheduler = make(opt)
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return np.asarray(lrs, np.float64)


def cos_factor(p: float) -> float:
    """The cosine factor (1 + cos(pi p)) / 2 in float64."""
    return 0.5 * (1.0 + math.cos(math.pi * p))


# -- (1) hand-computed points ---------------------------------------------------------------------


def _hand_cases():
    cases = []
    add = lambda name, sched, points: cases.append(pytest.param(sched, points, id=name))

    add("constant", gs.constant(0.1), {0: 0.1, 1000: 0.1})
    add("linear", gs.linear(1.0, 0.2, 10, 5), {0: 1.0, 5: 1.0, 10: 0.6, 15: 0.2, 100: 0.2})
    add(
        "polynomial",
        gs.polynomial(1.0, 0.1, 2.0, 10, transition_begin=5),
        {0: 1.0, 5: 1.0, 6: 0.9 * 0.9**2 + 0.1, 10: 0.9 * 0.5**2 + 0.1, 15: 0.1, 99: 0.1},
    )
    add(
        "exponential",
        gs.exponential_decay(2.0, 10, 0.5, transition_begin=5),
        {0: 2.0, 5: 2.0, 10: 2.0 * 0.5**0.5, 25: 0.5, 45: 2.0 * 0.5**4},
    )
    add(
        "exponential_staircase",
        gs.exponential_decay(2.0, 10, 0.5, transition_begin=5, staircase=True),
        {0: 2.0, 14: 2.0, 15: 1.0, 24: 1.0, 25: 0.5},
    )
    add(
        "exponential_end_lower",
        gs.exponential_decay(1.0, 1, 0.5, end_value=0.1),
        {0: 1.0, 3: 0.125, 4: 0.1, 100: 0.1},
    )
    add(
        "exponential_end_upper",
        gs.exponential_decay(1.0, 1, 2.0, end_value=5.0),
        {0: 1.0, 2: 4.0, 3: 5.0, 10: 5.0},
    )
    add(
        "piecewise_constant",
        gs.piecewise_constant(1.0, {20: 0.1, 10: 0.5}),
        {0: 1.0, 9: 1.0, 10: 0.5, 19: 0.5, 20: 0.05, 1000: 0.05},
    )
    cd = lambda s: 2.0 * (0.9 * cos_factor(min(s, 100) / 100) ** 2 + 0.1)
    add(
        "cosine_decay",
        gs.cosine_decay(2.0, 100, alpha=0.1, exponent=2.0),
        {s: cd(s) for s in (0, 25, 50, 99, 100, 150)},
    )
    wcd = lambda s: (
        0.1 + 0.9 * s / 10 if s < 10 else 0.05 + 0.95 * cos_factor(min(s - 10, 100) / 100)
    )
    add(
        "warmup_cosine_decay",
        gs.warmup_cosine_decay(0.1, 1.0, 10, 110, end_value=0.05),
        {s: wcd(s) for s in (0, 5, 10, 60, 109, 110, 500)},
    )
    add(
        "warmup_cosine_decay_no_warmup",
        gs.warmup_cosine_decay(0.1, 1.0, 0, 10),
        {0: 1.0, 5: 0.5, 10: 0.0},
    )
    add("warmup_constant", gs.warmup_constant(0.0, 2.0, 8), {0: 0.0, 2: 0.5, 8: 2.0, 1000: 2.0})
    shapes = {
        "linear": lambda p: 1.0 - p,
        "cosine": cos_factor,
        "sqrt": lambda p: 1.0 - math.sqrt(p),
    }
    for kind, f in shapes.items():
        w = lambda s, f=f: (
            0.1 + 0.9 * s / 10 if s < 10 else 0.01 + 0.99 * f(min(max(s - 30, 0), 40) / 40)
        )
        add(
            f"wsd_{kind}",
            gs.wsd(0.1, 1.0, 10, 20, 40, end_value=0.01, decay_type=kind),
            {s: w(s) for s in (0, 5, 10, 29, 30, 40, 50, 69, 70, 100)},
        )
    add(
        "inverse_sqrt",
        gs.inverse_sqrt(1.0, 100, init_value=0.1),
        {0: 0.1, 50: 0.55, 100: 1.0, 400: 0.5, 10_000: 0.1},
    )
    # one-cycle: v0 = 2/25, v1 = v0/1e4, phase ends e1 = 0.25 * 100 - 1 = 24, e2 = 99.
    v0, v1 = 0.08, 0.08e-4
    add(
        "one_cycle",
        gs.one_cycle(100, 2.0, pct_start=0.25),
        {
            0: v0,
            12: 2.0 + (v0 - 2.0) * cos_factor(12 / 24),
            24: 2.0,
            60: v1 + (2.0 - v1) * cos_factor(36 / 75),
            98: v1 + (2.0 - v1) * cos_factor(74 / 75),
            99: v1,
            200: v1,
        },
    )
    # cyclic: up 4, down 6, cycle length 10.
    add(
        "cyclic_triangular",
        gs.cyclic_triangular(0.1, 1.0, 4, 6),
        {0: 0.1, 2: 0.55, 4: 1.0, 7: 0.55, 10: 0.1, 14: 1.0},
    )
    add(
        "cyclic_triangular2",
        gs.cyclic_triangular(0.1, 1.0, 4, 6, mode="triangular2"),
        {4: 1.0, 14: 0.1 + 0.9 / 2, 24: 0.1 + 0.9 / 4, 27: 0.1 + 0.9 * 0.5 / 4},
    )
    add(
        "cyclic_exp_range",
        gs.cyclic_triangular(0.1, 1.0, 4, mode="exp_range", gamma=0.9),
        {0: 0.1, 4: 0.1 + 0.9 * 0.9**4, 6: 0.1 + 0.9 * 0.5 * 0.9**6},
    )
    # restarts: periods 10, 20, 40 starting at 0, 10, 30, 70.
    add(
        "cosine_restarts",
        gs.cosine_restarts(1.0, 10, period_mult=2, end_value=0.1),
        {
            0: 1.0,
            5: 0.55,
            10: 1.0,
            20: 0.55,
            29: 0.1 + 0.9 * cos_factor(19 / 20),
            30: 1.0,
            69: 0.1 + 0.9 * cos_factor(39 / 40),
            70: 1.0,
        },
    )
    add("sgdr_mult1", gs.sgdr(1.0, 10), {0: 1.0, 5: 0.5, 10: 1.0, 15: 0.5, 1009: cos_factor(0.9)})
    add(
        "join_schedules",
        gs.join_schedules(
            (gs.constant(1.0), gs.linear(1.0, 0.0, 10), gs.constant(0.5)), boundaries=(5, 20)
        ),
        {0: 1.0, 4: 1.0, 5: 1.0, 10: 0.5, 15: 0.0, 19: 0.0, 20: 0.5, 100: 0.5},
    )
    return cases


HAND = _hand_cases()


@pytest.mark.parametrize("sched, points", HAND)
def test_hand_computed(sched, points):
    for step, expected in points.items():
        got = sched(step)  # eager, Python int step
        assert got.dtype == jnp.float32 and got.shape == ()
        np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-7, err_msg=str(step))


# -- (2) against torch.optim.lr_scheduler ---------------------------------------------------------

LR = torch.optim.lr_scheduler


def _torch_cases():
    cases = []
    add = lambda name, sched, lr, make: cases.append(pytest.param(sched, lr, make, id=name))
    add("LinearLR", gs.linear(0.1, 0.3, 20), 0.4, lambda o: LR.LinearLR(o, 0.25, 0.75, 20))
    add(
        "PolynomialLR", gs.polynomial(0.5, 0.0, 2.0, 30), 0.5, lambda o: LR.PolynomialLR(o, 30, 2.0)
    )
    add("ExponentialLR", gs.exponential_decay(0.5, 1, 0.9), 0.5, lambda o: LR.ExponentialLR(o, 0.9))
    add(
        "StepLR",
        gs.exponential_decay(0.5, 7, 0.5, staircase=True),
        0.5,
        lambda o: LR.StepLR(o, step_size=7, gamma=0.5),
    )
    add(
        "MultiStepLR",
        gs.piecewise_constant(0.5, {10: 0.3, 25: 0.3}),
        0.5,
        lambda o: LR.MultiStepLR(o, milestones=[10, 25], gamma=0.3),
    )
    add(
        "CosineAnnealingLR",  # torch rises again after T_max: compare on [0, T_max]
        gs.cosine_decay(0.5, N - 1, alpha=0.1),
        0.5,
        lambda o: LR.CosineAnnealingLR(o, T_max=N - 1, eta_min=0.05),
    )
    for pct, div, final in [(0.3, 25.0, 1e4), (0.25, 10.0, 100.0), (0.45, 5.0, 1e3)]:
        add(
            f"OneCycleLR-{pct}",
            gs.one_cycle(N, 2.0, pct_start=pct, div_factor=div, final_div_factor=final),
            1.0,
            lambda o, pct=pct, div=div, final=final: LR.OneCycleLR(
                o,
                max_lr=2.0,
                total_steps=N,
                pct_start=pct,
                anneal_strategy="cos",
                div_factor=div,
                final_div_factor=final,
                three_phase=False,
                cycle_momentum=False,
            ),
        )
    for mode in ("triangular", "triangular2", "exp_range"):
        add(
            f"CyclicLR-{mode}",
            gs.cyclic_triangular(0.1, 1.0, 4, 6, mode=mode, gamma=0.97),
            1.0,
            lambda o, mode=mode: LR.CyclicLR(
                o, 0.1, 1.0, 4, 6, mode=mode, gamma=0.97, cycle_momentum=False
            ),
        )
    for t0, mult in [(7, 1), (5, 2), (3, 3)]:
        add(
            f"CosineAnnealingWarmRestarts-{t0}-{mult}",
            gs.cosine_restarts(1.0, t0, period_mult=mult, end_value=0.01),
            1.0,
            lambda o, t0=t0, mult=mult: LR.CosineAnnealingWarmRestarts(
                o, T_0=t0, T_mult=mult, eta_min=0.01
            ),
        )

    # LambdaLR with the documented formula (float64) as the multiplier of lr = 1.
    def lam(name, sched, f):
        add(f"LambdaLR-{name}", sched, 1.0, lambda o: LR.LambdaLR(o, f))

    lam(
        "warmup_cosine_decay",
        gs.warmup_cosine_decay(0.0, 0.8, 10, 45, end_value=0.1),
        lambda s: 0.08 * s if s < 10 else 0.1 + 0.7 * cos_factor(min(s - 10, 35) / 35),
    )
    lam("warmup_constant", gs.warmup_constant(0.2, 0.8, 12), lambda s: 0.2 + 0.6 * min(s / 12, 1))
    shapes = {"linear": lambda p: 1 - p, "cosine": cos_factor, "sqrt": lambda p: 1 - math.sqrt(p)}
    for kind, f in shapes.items():
        lam(
            f"wsd-{kind}",
            gs.wsd(0.0, 1.0, 5, 15, 20, end_value=0.05, decay_type=kind),
            lambda s, f=f: s / 5 if s < 5 else 0.05 + 0.95 * f(min(max(s - 20, 0), 20) / 20),
        )
    lam(
        "inverse_sqrt",
        gs.inverse_sqrt(0.9, 8, init_value=0.1),
        lambda s: 0.1 + 0.8 * s / 8 if s < 8 else 0.9 * math.sqrt(8 / s),
    )
    return cases


@pytest.mark.parametrize("sched, lr, make", _torch_cases())
def test_matches_torch(sched, lr, make):
    expected = torch_lrs(lr, make)
    np.testing.assert_allclose(values(sched, np.arange(N)), expected, rtol=1e-5, atol=0)


def test_linear_matches_torch_with_begin_zero_only():
    # torch's LinearLR has no transition_begin; a delayed linear is a torch LambdaLR.
    sched = gs.linear(1.0, 0.0, 10, transition_begin=5)
    expected = torch_lrs(1.0, lambda o: LR.LambdaLR(o, lambda s: min(max(1 - (s - 5) / 10, 0), 1)))
    np.testing.assert_allclose(values(sched, np.arange(N)), expected, rtol=1e-5, atol=0)


# -- (3) against optax ----------------------------------------------------------------------------


def _optax_cases():
    cases = []
    add = lambda name, ours, theirs: cases.append(pytest.param(ours, theirs, id=name))
    add(
        "warmup_cosine_decay",
        gs.warmup_cosine_decay(0.1, 1.0, 10, 45, end_value=0.05, exponent=1.5),
        optax.warmup_cosine_decay_schedule(0.1, 1.0, 10, 45, end_value=0.05, exponent=1.5),
    )
    add(
        "cosine_decay",
        gs.cosine_decay(1.0, 40, alpha=0.1, exponent=2.0),
        optax.cosine_decay_schedule(1.0, 40, alpha=0.1, exponent=2.0),
    )
    for staircase in (False, True):
        add(
            f"exponential_decay-staircase={staircase}",
            gs.exponential_decay(1.0, 5, 0.7, 3, staircase=staircase, end_value=0.2),
            optax.exponential_decay(1.0, 5, 0.7, 3, staircase=staircase, end_value=0.2),
        )
    add(
        "piecewise_constant",
        gs.piecewise_constant(1.0, {5: 0.5, 10: 2.0, 30: 0.1}),
        optax.piecewise_constant_schedule(1.0, {5: 0.5, 10: 2.0, 30: 0.1}),
    )
    add(
        "polynomial",
        gs.polynomial(1.0, 0.1, 3.0, 30, transition_begin=5),
        optax.polynomial_schedule(1.0, 0.1, 3.0, 30, transition_begin=5),
    )
    add("linear", gs.linear(0.0, 1.0, 20, 5), optax.linear_schedule(0.0, 1.0, 20, 5))
    add("constant", gs.constant(0.3), optax.constant_schedule(0.3))
    add(
        "warmup_constant",
        gs.warmup_constant(0.0, 1.0, 10),
        optax.warmup_constant_schedule(0.0, 1.0, 10),
    )
    add(
        "join_schedules",
        gs.join_schedules(
            (gs.linear(0.0, 1.0, 10), gs.cosine_decay(1.0, 20), gs.exponential_decay(0.5, 4, 0.8)),
            (10, 30),
        ),
        optax.join_schedules(
            [
                optax.linear_schedule(0.0, 1.0, 10),
                optax.cosine_decay_schedule(1.0, 20),
                optax.exponential_decay(0.5, 4, 0.8),
            ],
            [10, 30],
        ),
    )
    return cases


@pytest.mark.parametrize("ours, theirs", _optax_cases())
def test_matches_optax(ours, theirs):
    steps = np.arange(60)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts with float constants
        expected = np.asarray(theirs(jnp.asarray(steps, jnp.int32)), np.float64)
    # atol: optax's float32 (1 + cos) cancels near the end of a cosine decay.
    np.testing.assert_allclose(values(ours, steps), expected, rtol=1e-5, atol=1e-6)


def test_join_schedules_accepts_optax_callables():
    sched = gs.join_schedules((optax.constant_schedule(1.0), gs.linear(1.0, 0.0, 4)), (2,))
    np.testing.assert_allclose(values(sched, [0, 1, 2, 4, 6]), [1, 1, 1, 0.5, 0], rtol=1e-5)


# -- (4) jit, vmap, dtype -------------------------------------------------------------------------

ALL = [p.values[0] for p in HAND]
IDS = [p.id for p in HAND]


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_jit_vmap_eager_agree(sched):
    steps = [0, 7, 25, 99, 2000]
    eager = np.asarray([float(sched(s)) for s in steps])
    jitted_fn = jax.jit(lambda s: sched(s))
    jitted = []
    for s in steps:
        out = jitted_fn(jnp.int32(s))
        assert out.dtype == jnp.float32 and out.shape == ()
        jitted.append(float(out))
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(values(sched, steps), eager, rtol=1e-6, atol=1e-9)
    # Float counts are accepted too.
    assert sched(jnp.float32(7)).dtype == jnp.float32


def test_vmap_over_a_hyperparameter():
    peaks = jnp.asarray([1.0, 2.0, 4.0])
    f = lambda p: gs.warmup_cosine_decay(0.0, p, 10, 110)(jnp.int32(60))
    np.testing.assert_allclose(jax.vmap(f)(peaks), [0.5, 1.0, 2.0], rtol=1e-5)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), gs.one_cycle(100, 1.0), gs.one_cycle(100, 3.0))
    np.testing.assert_allclose(jax.vmap(lambda s: s(29))(stacked), [1.0, 3.0], rtol=1e-5)


# -- (5) hashing and no retrace -------------------------------------------------------------------


def test_equal_configs_hash_equal():
    factories = [
        lambda: gs.piecewise_constant(1.0, {10: 0.5, 20: 0.1}),
        lambda: gs.join_schedules((gs.constant(1.0), gs.wsd(0.0, 1.0, 1, 2, 3)), (4,)),
        lambda: gs.cyclic_triangular(0.1, 1.0, 4),
        lambda: gs.cosine_restarts(1.0, 10, 2),
    ]
    for sched in ALL:
        assert sched == sched.replace() and hash(sched) == hash(sched.replace())
    for make in factories:
        assert make() == make() and hash(make()) == hash(make())
    # Dict order and int-valued floats do not matter; values do.
    assert gs.piecewise_constant(1.0, {20: 0.1, 10: 0.5}) == factories[0]()
    assert gs.warmup_cosine_decay(0.0, 1.0, 1e1, 1e4) == gs.warmup_cosine_decay(0.0, 1.0, 10, 10000)
    assert hash(gs.one_cycle(100.0, 1.0)) == hash(gs.one_cycle(100, 1.0))
    assert gs.one_cycle(100, 1.0) != gs.one_cycle(100, 2.0)
    assert gs.wsd(0.0, 1.0, 1, 2, 3) != gs.wsd(0.0, 1.0, 1, 2, 3, decay_type="cosine")
    assert gs.sgdr is gs.cosine_restarts and gs.wsd is gs.warmup_stable_decay


@pytest.mark.parametrize(
    "make, step",
    [
        (lambda v: gs.warmup_cosine_decay(0.0, v, 10, 100), 10),
        (lambda v: gs.one_cycle(100, v), 29),
        (lambda v: gs.cyclic_triangular(0.0, v, 5), 5),
        (lambda v: gs.cosine_restarts(v, 10, 2), 30),
        (lambda v: gs.piecewise_constant(v, {5: 0.5}), 1),
        (lambda v: gs.wsd(0.0, v, 5, 5, 5), 7),
        (lambda v: gs.inverse_sqrt(v, 10), 10),
        (lambda v: gs.exponential_decay(v, 10, 0.5, end_value=0.01), 0),
        (lambda v: gs.join_schedules((gs.constant(1.0), gs.warmup_constant(0.0, v, 2)), (3,)), 5),
    ],
)
def test_new_value_through_jit_does_not_retrace(make, step):
    traces = 0

    @jax.jit
    def f(sched, count):
        nonlocal traces
        traces += 1
        return sched(count)

    first = f(make(1.0), jnp.int32(step))
    second = f(make(3.0), jnp.int32(step))
    assert traces == 1
    np.testing.assert_allclose([first, second], [1.0, 3.0], rtol=1e-5)


# -- (6) bad inputs -------------------------------------------------------------------------------

BAD = [
    (lambda: gs.linear(1.0, 0.0, 0), "linear: transition_steps must be > 0"),
    (lambda: gs.linear(1.0, 0.0, 10, -1), "linear: transition_begin must be >= 0"),
    (lambda: gs.linear(1.0, 0.0, True), "linear: transition_steps must be an integer"),
    (lambda: gs.polynomial(1.0, 0.0, 0.0, 10), "polynomial: power must be > 0"),
    (lambda: gs.polynomial(1.0, 0.0, 1.0, 10.5), "polynomial: transition_steps must be an integer"),
    (lambda: gs.exponential_decay(1.0, 10, 0.0), "exponential_decay: decay_rate must be > 0"),
    (lambda: gs.exponential_decay(1.0, 0, 0.5), "exponential_decay: transition_steps must be > 0"),
    (lambda: gs.piecewise_constant(1.0, {10: -0.5}), "piecewise_constant: scales must be"),
    (lambda: gs.piecewise_constant(1.0, {-1: 0.5}), "piecewise_constant: boundaries must be"),
    (lambda: gs.piecewise_constant(1.0, {1.5: 0.5}), "piecewise_constant: boundaries must be"),
    (lambda: gs.cosine_decay(1.0, 0), "cosine_decay: decay_steps must be > 0"),
    (lambda: gs.cosine_decay(1.0, 10, exponent=-1.0), "cosine_decay: exponent must be > 0"),
    (
        lambda: gs.warmup_cosine_decay(0.0, 1.0, 10, 0),
        "warmup_cosine_decay: decay_steps must be > 0",
    ),
    (
        lambda: gs.warmup_cosine_decay(0.0, 1.0, 10, 10),
        "warmup_cosine_decay: decay_steps must be > warmup_steps",
    ),
    (lambda: gs.warmup_cosine_decay(math.nan, 1.0, 1, 10), "warmup_cosine_decay: init_value"),
    (lambda: gs.warmup_constant(0.0, 1.0, -1), "warmup_constant: warmup_steps must be >= 0"),
    (lambda: gs.wsd(0.0, 1.0, 1, 1, 0), "warmup_stable_decay: decay_steps must be > 0"),
    (lambda: gs.wsd(0.0, 1.0, 1, 1, 1, decay_type="exp"), "warmup_stable_decay: decay_type"),
    (lambda: gs.inverse_sqrt(1.0, 0), "inverse_sqrt: warmup_steps must be > 0"),
    (lambda: gs.one_cycle(0, 1.0), "one_cycle: transition_steps must be > 0"),
    (lambda: gs.one_cycle(100, 1.0, pct_start=1.0), r"one_cycle: pct_start must be in \(0, 1\)"),
    (lambda: gs.one_cycle(100, 1.0, div_factor=0.0), "one_cycle: div_factor must be > 0"),
    (lambda: gs.cyclic_triangular(0.1, 1.0, 0), "cyclic_triangular: step_size_up must be > 0"),
    (lambda: gs.cyclic_triangular(0.1, 1.0, 4, mode="sine"), "cyclic_triangular: mode"),
    (lambda: gs.cosine_restarts(1.0, 0), "cosine_restarts: first_period must be > 0"),
    (lambda: gs.cosine_restarts(1.0, 10, 1.5), "cosine_restarts: period_mult must be an integer"),
    (lambda: gs.sgdr(1.0, 10, 0), "cosine_restarts: period_mult must be > 0"),
    (lambda: gs.join_schedules((gs.constant(1.0),), (5,)), "join_schedules: boundaries must be"),
    (
        lambda: gs.join_schedules((gs.constant(1.0),) * 3, (10, 5)),
        "join_schedules: boundaries must be non-decreasing",
    ),
    (lambda: gs.join_schedules((1.0, 2.0), (5,)), "join_schedules: schedules must be"),
]


@pytest.mark.parametrize("build, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_inputs_raise(build, message):
    with pytest.raises(ValueError, match="gradtx." + message):
        build()


def test_repr_names_the_schedule():
    assert repr(gs.wsd(0.0, 1.0, 1, 2, 3)).startswith("WarmupStableDecay(")
    assert "boundaries_and_scales=((10, 0.5),)" in repr(gs.piecewise_constant(1.0, {10: 0.5}))
