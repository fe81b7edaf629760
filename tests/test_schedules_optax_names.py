"""optax's schedule names in gradtx.schedules, and exact schedules at large step counts.

(1) Every name of ``gradtx.schedules.OPTAX_NAMES`` has optax 0.2.8's signature and optax's
values (float32 state tolerance: rtol=1e-5, atol=1e-6, the atol for optax's float32
``1 + cos`` cancellation). (2) Past 2**24 steps (F08) the schedules match a float64 oracle in
Python integers to rtol=2e-5 with no atol, so a float32 step count (exact only to 2**24) fails
them. (3) Step counts of 2**31 and more at construction work: an int32 count never reaches them.
"""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradtx import schedules as gs

SMALL = list(range(70)) + [99, 100, 101, 1000, 10**6, 2**24 - 1]
BIG = [2**24 - 1, 2**24, 2**24 + 1, 2**24 + 2, 2**30, 2**30 + 1, 2**31 - 2, 2**31 - 1]


def values(sched, steps) -> np.ndarray:
    out = jax.jit(jax.vmap(sched))(jnp.asarray(steps, jnp.int32))
    assert out.dtype == jnp.float32
    return np.asarray(out, np.float64)


def optax_values(sched, steps) -> np.ndarray:
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts with float constants
        out = jax.vmap(lambda s: jnp.asarray(sched(s), jnp.float32))(jnp.asarray(steps, jnp.int32))
    return np.asarray(out, np.float64)


# -- (1) names, signatures and values -------------------------------------------------------------


def _optax_schedule_names() -> set[str]:
    skip = {"inject_hyperparams", "inject_stateful_hyperparams"}  # not schedules
    return {
        n
        for n in dir(optax.schedules)
        if not n.startswith("_")
        and inspect.isfunction(getattr(optax.schedules, n))
        and n not in skip
    }


def test_every_optax_schedule_name_is_provided():
    assert set(gs.OPTAX_NAMES) == _optax_schedule_names()
    assert len(set(gs.OPTAX_NAMES)) == len(gs.OPTAX_NAMES)
    for name in gs.OPTAX_NAMES:
        assert name in gs.__all__, name


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", sorted(_optax_schedule_names()))
def test_signature_is_optax(name):
    assert _params(getattr(gs, name)) == _params(getattr(optax.schedules, name))


def test_same_concept_same_object():
    assert gs.constant_schedule is gs.constant
    assert gs.linear_schedule is gs.linear
    assert gs.polynomial_schedule is gs.polynomial
    assert gs.piecewise_constant_schedule is gs.piecewise_constant
    assert gs.cosine_decay_schedule is gs.cosine_decay
    assert gs.warmup_cosine_decay_schedule is gs.warmup_cosine_decay
    assert gs.warmup_constant_schedule is gs.warmup_constant


def _cases():
    cycle_a = dict(init_value=0.0, peak_value=1.0, warmup_steps=3, decay_steps=10)
    cycle_b = dict(init_value=0.1, peak_value=0.5, warmup_steps=0, decay_steps=7, end_value=0.05)
    cycle_c = dict(init_value=0.2, peak_value=2.0, warmup_steps=5, decay_steps=2**20, exponent=2.0)
    return {
        "constant_schedule": [(0.3,), (2,)],
        "linear_schedule": [(0.0, 1.0, 20, 5), (1.0, 0.1, 1, 0), (2.0, 0.0, 10**6, 10**5)],
        "polynomial_schedule": [(1.0, 0.1, 3.0, 30, 5), (1.0, 0.0, 0.5, 7), (1.0, 0.0, 2.0, 2**23)],
        "exponential_decay": [
            (1.0, 5, 0.7, 3, False, 0.2),
            (1.0, 5, 0.7, 3, True, 0.2),
            (1.0, 4, 1.5, 0, False, 3.0),
            (2.0, 10**5, 0.5, 10, True),
        ],
        "piecewise_constant_schedule": [
            (1.0, {5: 0.5, 10: 2.0, 30: 0.1}),
            (1.0, None),
            (0.5, {0: 2.0, 10**6: 0.1}),
        ],
        "piecewise_interpolate_schedule": [
            ("linear", 1.0, {3: 0.5, 7: 4.0, 12: 0.1}),
            ("cosine", 1.0, {0: 2.0, 7: 0.5, 12: 0.1}),
            ("cosine", 2.0, None),
            ("linear", 1.0, {100: 0.01, 10**6: 0.5}),
        ],
        "cosine_decay_schedule": [(1.0, 40, 0.1, 2.0), (1.0, 1), (3.0, 10**6, 0.5)],
        "warmup_cosine_decay_schedule": [
            (0.1, 1.0, 10, 45, 0.05, 1.5),
            (0.0, 1.0, 0, 30),
            (0.0, 2.0, 100, 10**6, 0.1),
        ],
        "warmup_constant_schedule": [(0.0, 1.0, 10), (0.5, 1.0, 1), (0.0, 1.0, 10**6)],
        "warmup_exponential_decay_schedule": [
            (0.1, 1.0, 5, 4, 0.7, 3, True, 0.2),
            (0.1, 1.0, 0, 4, 0.7),
            (0.0, 1.0, 10, 3, 1.2, 0, False, 2.0),
            (0.0, 1.0, 100, 10**5, 0.5),
        ],
        "sgdr_schedule": [([cycle_a, cycle_b],), ([cycle_b],), ([cycle_a, cycle_c, cycle_b],)],
        "cosine_onecycle_schedule": [(30, 2.0), (25, 1.0, 0.4, 10.0, 100.0), (10**6, 1.0)],
        "linear_onecycle_schedule": [(30, 2.0), (40, 1.0, 0.25, 0.7, 5.0, 50.0), (10**6, 1.0)],
        "join_schedules": [
            (
                (
                    gs.linear(0.0, 1.0, 10),
                    gs.cosine_decay(1.0, 20),
                    gs.exponential_decay(0.5, 4, 0.8),
                ),
                (10, 30),
            ),
            ((gs.constant(1.0), gs.linear(1.0, 0.0, 10**6)), (100,)),
        ],
    }


def _optax_args(name, args):
    if name == "join_schedules":  # the same schedules, built with optax
        twins = {
            "linear": lambda s: optax.linear_schedule(
                s.init_value, s.end_value, s.transition_steps, s.transition_begin
            ),
            "cosine_decay": lambda s: optax.cosine_decay_schedule(s.init_value, s.decay_steps),
            "exponential_decay": lambda s: optax.exponential_decay(
                s.init_value, s.transition_steps, s.decay_rate
            ),
            "constant": lambda s: optax.constant_schedule(s.init_value),
        }
        return ([twins[s.name](s) for s in args[0]], list(args[1]))
    return args


CASES = [
    pytest.param(name, args, id=f"{name}-{i}")
    for name, arg_sets in _cases().items()
    for i, args in enumerate(arg_sets)
]


def test_cases_cover_every_name():
    assert {name for name, *_ in (p.values for p in CASES)} == set(gs.OPTAX_NAMES)


@pytest.mark.parametrize("name, args", CASES)
def test_values_are_optax(name, args):
    ours = getattr(gs, name)(*args)
    assert isinstance(ours, gs.Schedule)
    theirs = getattr(optax.schedules, name)(*_optax_args(name, args))
    bounds = [1, 5, 10, 20, 25, 30, 45, 10**5, 10**6, 2**20]
    steps = sorted(set(SMALL + [b + d for b in bounds for d in (-1, 0, 1)]))
    np.testing.assert_allclose(
        values(ours, steps), optax_values(theirs, steps), rtol=1e-5, atol=1e-6
    )


def test_new_scale_through_jit_does_not_retrace():
    traces = 0

    @jax.jit
    def f(sched, count):
        nonlocal traces
        traces += 1
        return sched(count)

    for div in (25.0, 10.0):
        for peak in (1.0, 3.0):
            got = f(gs.cosine_onecycle_schedule(100, peak, div_factor=div), jnp.int32(0))
            np.testing.assert_allclose(got, peak / div, rtol=1e-6)
    assert traces == 1
    s = gs.warmup_exponential_decay_schedule(0.0, 1.0, 10, 5, 0.5)
    assert s == gs.warmup_exponential_decay_schedule(0.0, 1.0, 10, 5, 0.5)
    assert hash(s) == hash(gs.warmup_exponential_decay_schedule(0.0, 1.0, 10, 5, 0.5))


BAD = [
    (
        lambda: gs.piecewise_interpolate_schedule("cubic", 1.0, {1: 0.5}),
        "piecewise_interpolate_schedule: interpolate_type",
    ),
    (
        lambda: gs.piecewise_interpolate_schedule("linear", 1.0, {1: -0.5}),
        "piecewise_interpolate_schedule: scales must be",
    ),
    (
        lambda: gs.piecewise_interpolate_schedule("linear", 1.0, {-3: 0.5}),
        "piecewise_interpolate_schedule: boundaries must be",
    ),
    (
        lambda: gs.cosine_onecycle_schedule(0, 1.0),
        "cosine_onecycle_schedule: transition_steps must be",
    ),
    (
        lambda: gs.linear_onecycle_schedule(10, 1.0, pct_start=jnp.float32(0.3)),
        "linear_onecycle_schedule: pct_start must be a Python number",
    ),
    (
        lambda: gs.warmup_exponential_decay_schedule(0.0, 1.0, -1, 5, 0.5),
        "warmup_exponential_decay_schedule: warmup_steps must be",
    ),
    (
        lambda: gs.warmup_exponential_decay_schedule(0.0, 1.0, 2, 0, 0.5),
        "warmup_exponential_decay_schedule: exponential_decay: transition_steps",
    ),
    (lambda: gs.sgdr_schedule([]), "sgdr_schedule: join_schedules: schedules must be"),
    (
        lambda: gs.sgdr_schedule(
            [dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=5)]
        ),
        "sgdr_schedule: warmup_cosine_decay: decay_steps must be > warmup_steps",
    ),
]


@pytest.mark.parametrize(
    "build, message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)]
)
def test_bad_inputs_raise(build, message):
    with pytest.raises(ValueError, match="gradtx." + message):
        build()


# -- (2) and (3): a float64 oracle in Python integers, at steps past 2**24 ------------------------


def cos_half(left: int, length: int) -> float:
    """(1 + cos(pi p)) / 2 for p = 1 - left/length, accurate near p = 1 (float64)."""
    return math.sin(0.5 * math.pi * left / length) ** 2


def clip(x: int, lo: int, hi: int) -> int:
    return min(max(x, lo), hi)


def o_linear(v0, v1, t, b):
    return lambda s: v0 + (v1 - v0) * clip(s - b, 0, t) / t


def o_poly(v0, v1, p, t, b):
    return lambda s: (v0 - v1) * ((t - clip(s - b, 0, t)) / t) ** p + v1


def o_exp(v0, t, r, b, stair=False):
    return lambda s: v0 if s <= b else v0 * r ** ((s - b) // t if stair else (s - b) / t)


def o_pwc(v0, pairs):
    return lambda s: v0 * math.prod(c for b, c in pairs.items() if s >= b)


def o_cos(v0, t, a=0.0):
    return lambda s: v0 * ((1 - a) * cos_half(t - min(s, t), t) + a)


def o_wcd(v0, vp, w, t, v1=0.0):
    def f(s):
        if s < w:
            return v0 + (vp - v0) * s / w
        return v1 + (vp - v1) * cos_half(t - clip(s, w, t), t - w)

    return f


def o_wsd(v0, vp, w, st, d, v1=0.0):
    def f(s):
        if s < w:
            return v0 + (vp - v0) * s / w
        return v1 + (vp - v1) * (w + st + d - clip(s, w + st, w + st + d)) / d

    return f


def o_isqrt(vp, w):
    return lambda s: vp * s / w if s < w else vp * math.sqrt(w / s)


def o_tri(v0, vm, up, mode="triangular"):
    def f(s):
        q, k = s % (2 * up), s // (2 * up)
        h = q / up if q <= up else (2 * up - q) / up
        return v0 + (vm - v0) * h * (0.5**k if mode == "triangular2" else 1.0)

    return f


def o_restart(v0, t0, mult=1, v1=0.0):
    def f(s):
        if mult == 1:  # equal periods: the cycle's start in integers, no loop
            start = s // t0 * t0
            return v1 + (v0 - v1) * cos_half(start + t0 - s, t0)
        start, period = 0, t0
        while s >= start + period:
            start, period = start + period, period * mult
        return v1 + (v0 - v1) * cos_half(start + period - s, period)

    return f


def o_join(fns, bounds):
    def f(s):
        k = sum(s >= b for b in bounds)
        return fns[k](s - ([0] + list(bounds))[k])

    return f


def o_interp(v0, pairs, cosine=False):
    bounds = [0] + sorted(pairs)
    vals = [v0]
    for b in sorted(pairs):
        vals.append(vals[-1] * pairs[b])

    def f(s):
        for k in range(1, len(bounds)):
            lo, hi = bounds[k - 1], bounds[k]
            if lo <= s < hi:
                if cosine:
                    return vals[k] + (vals[k - 1] - vals[k]) * cos_half(hi - s, hi - lo)
                return vals[k - 1] + (vals[k] - vals[k - 1]) * (s - lo) / (hi - lo)
        return vals[-1]

    return f


def o_onecycle(t, vp, pct=0.25, div=4.0, final=2.0):  # torch's OneCycleLR (cosine)
    v0, e1, e2 = vp / div, pct * t - 1, t - 1

    def f(s):
        v1 = v0 / final
        if s <= e1:
            return vp + (v0 - vp) * math.sin(0.5 * math.pi * (e1 - s) / e1) ** 2
        return v1 + (vp - v1) * math.sin(0.5 * math.pi * (e2 - min(s, e2)) / (e2 - e1)) ** 2

    return f


M = 2**31 - 1  # the largest int32 count
E = 2**24 + 1  # the first integer a float32 step rounds


def _big_cases():
    """(id, gradtx schedule, float64 oracle): phases that start, end or cycle past 2**24."""
    return [
        ("linear_end", gs.linear(1.0, 0.0, M - 5, 4), o_linear(1.0, 0.0, M - 5, 4)),
        ("linear_begin", gs.linear(1.0, 0.5, 8, E), o_linear(1.0, 0.5, 8, E)),
        ("polynomial", gs.polynomial(1.0, 0.0, 2.0, M - 1), o_poly(1.0, 0.0, 2.0, M - 1, 0)),
        ("polynomial_begin", gs.polynomial(1.0, 0.0, 1.0, 3, E), o_poly(1.0, 0.0, 1.0, 3, E)),
        (
            "exp_stair",
            gs.exponential_decay(1.0, 3, 0.5, E - 3, True),
            o_exp(1.0, 3, 0.5, E - 3, True),
        ),
        ("exp_begin", gs.exponential_decay(1.0, 2, 0.5, E), o_exp(1.0, 2, 0.5, E)),
        (
            "exp_stair_long",
            gs.exponential_decay(1.0, 2**29, 0.5, 0, True),
            o_exp(1.0, 2**29, 0.5, 0, True),
        ),
        ("piecewise", gs.piecewise_constant(1.0, {E: 0.5, M: 0.25}), o_pwc(1.0, {E: 0.5, M: 0.25})),
        ("cosine", gs.cosine_decay(1.0, M), o_cos(1.0, M)),
        ("cosine_alpha", gs.cosine_decay(2.0, 2**30 + 1, 0.25), o_cos(2.0, 2**30 + 1, 0.25)),
        ("wcd", gs.warmup_cosine_decay(0.0, 1.0, E, M), o_wcd(0.0, 1.0, E, M)),
        (
            "wcd_short",
            gs.warmup_cosine_decay(0.0, 1.0, 2**24, E + 1),
            o_wcd(0.0, 1.0, 2**24, E + 1),
        ),
        ("warmup_constant", gs.warmup_constant(0.0, 1.0, M), o_linear(0.0, 1.0, M, 0)),
        ("wsd", gs.wsd(0.0, 1.0, 4, 2**24 - 4, 4), o_wsd(0.0, 1.0, 4, 2**24 - 4, 4)),
        (
            "wsd_end",
            gs.wsd(0.0, 1.0, 4, 2**30, M - 2**30 - 4),
            o_wsd(0.0, 1.0, 4, 2**30, M - 2**30 - 4),
        ),
        ("inverse_sqrt", gs.inverse_sqrt(1.0, E), o_isqrt(1.0, E)),
        ("one_cycle", gs.one_cycle(M, 1.0, 0.25, 4.0, 2.0), o_onecycle(M, 1.0)),
        ("triangular", gs.cyclic_triangular(0.0, 1.0, 3), o_tri(0.0, 1.0, 3)),
        ("triangular_big", gs.cyclic_triangular(0.0, 1.0, 2**30 - 7), o_tri(0.0, 1.0, 2**30 - 7)),
        (
            "triangular2",
            gs.cyclic_triangular(0.0, 1.0, 2**27 + 1, mode="triangular2"),
            o_tri(0.0, 1.0, 2**27 + 1, "triangular2"),
        ),
        ("restarts_3", gs.cosine_restarts(1.0, 3), o_restart(1.0, 3)),
        ("restarts_mult", gs.cosine_restarts(1.0, 7, 2, 0.5), o_restart(1.0, 7, 2, 0.5)),
        ("restarts_last", gs.cosine_restarts(1.0, 2**30 - 1, 3), o_restart(1.0, 2**30 - 1, 3)),
        (
            "join",
            gs.join_schedules((gs.constant(1.0), gs.cosine_restarts(1.0, 3)), (E,)),
            o_join([lambda s: 1.0, o_restart(1.0, 3)], [E]),
        ),
        (
            "interp_linear",
            gs.piecewise_interpolate_schedule("linear", 1.0, {E: 0.5, M: 0.25}),
            o_interp(1.0, {E: 0.5, M: 0.25}),
        ),
        (
            "interp_cosine",
            gs.piecewise_interpolate_schedule("cosine", 1.0, {2**30: 2.0, M: 0.0}),
            o_interp(1.0, {2**30: 2.0, M: 0.0}, cosine=True),
        ),
        (
            "cosine_onecycle",
            gs.cosine_onecycle_schedule(M, 1.0, 0.5),
            o_interp(0.04, {M // 2: 25.0, M: 1 / 25e4}, cosine=True),
        ),
        (
            "sgdr",
            gs.sgdr_schedule(
                [dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=E)] * 3
            ),
            o_join([o_wcd(0.0, 1.0, 2, E)] * 3, [E, 2 * E]),
        ),
    ]


def _oracle_steps(sched) -> list[int]:
    return BIG + [b + d for b in (E, 2 * E, 2**30) for d in (-2, -1, 1, 2, 3)]


@pytest.mark.parametrize("sched, oracle", [pytest.param(s, o, id=i) for i, s, o in _big_cases()])
def test_exact_past_2_to_the_24(sched, oracle):
    steps = sorted(set(_oracle_steps(sched)))
    expected = np.asarray([oracle(s) for s in steps])
    np.testing.assert_allclose(values(sched, steps), expected, rtol=2e-5, atol=0)


def _huge_cases():
    """Step counts of 2**31 and more at construction: an int32 count never reaches them."""
    t = 2**31
    return [
        ("linear", gs.linear(1.0, 0.0, t), o_linear(1.0, 0.0, t, 0)),
        ("linear_begin", gs.linear(1.0, 0.0, 10, 2**40), lambda s: 1.0),
        ("polynomial", gs.polynomial(1.0, 0.0, 1.0, 2**40, 2**31), lambda s: 1.0),
        ("exp", gs.exponential_decay(1.0, t, 0.5), o_exp(1.0, t, 0.5, 0)),
        ("exp_stair", gs.exponential_decay(1.0, t, 0.5, 0, True), lambda s: 1.0),
        ("exp_begin", gs.exponential_decay(1.0, 5, 0.5, t), lambda s: 1.0),
        ("exp_begin_max", gs.exponential_decay(1.0, 5, 0.5, M), lambda s: 1.0),
        ("piecewise", gs.piecewise_constant(1.0, {t: 0.5, 2**40: 0.5}), lambda s: 1.0),
        ("cosine", gs.cosine_decay(1.0, t), o_cos(1.0, t)),
        ("wcd", gs.warmup_cosine_decay(0.0, 1.0, 10, 2**33), o_wcd(0.0, 1.0, 10, 2**33)),
        ("wcd_warm", gs.warmup_cosine_decay(0.0, 1.0, t, t + 1), o_linear(0.0, 1.0, t, 0)),
        ("warmup_constant", gs.warmup_constant(0.0, 1.0, t), o_linear(0.0, 1.0, t, 0)),
        ("wsd", gs.wsd(0.0, 1.0, 10, t, 5), lambda s: min(s / 10, 1.0)),
        ("inverse_sqrt", gs.inverse_sqrt(1.0, t), o_linear(0.0, 1.0, t, 0)),
        ("one_cycle", gs.one_cycle(2**32, 1.0, 0.25, 4.0, 2.0), o_onecycle(2**32, 1.0)),
        ("triangular", gs.cyclic_triangular(0.0, 1.0, t), lambda s: s / t),
        ("restarts", gs.cosine_restarts(1.0, t), o_restart(1.0, t)),
        ("restarts_mult", gs.cosine_restarts(1.0, 2**30, 4), o_restart(1.0, 2**30, 4)),
        ("join", gs.join_schedules((gs.constant(1.0), gs.constant(0.5)), (t,)), lambda s: 1.0),
        (
            "interp",
            gs.piecewise_interpolate_schedule("linear", 1.0, {2**32: 0.0}),
            o_interp(1.0, {2**32: 0.0}),
        ),
        (
            "sgdr",
            gs.sgdr_schedule(
                [dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=t)] * 2
            ),
            o_wcd(0.0, 1.0, 2, t),
        ),
        (
            "wexp",
            gs.warmup_exponential_decay_schedule(0.0, 1.0, t, 5, 0.5),
            o_linear(0.0, 1.0, t, 0),
        ),
    ]


@pytest.mark.parametrize("sched, oracle", [pytest.param(s, o, id=i) for i, s, o in _huge_cases()])
def test_steps_beyond_int32_at_construction(sched, oracle):
    steps = [0, 1, 7, 2**24 + 1, 2**30, M - 1, M]
    expected = np.asarray([oracle(s) for s in steps])
    # atol: a warmup or linear ramp near its end rounds s / T to float32 (state tolerance).
    np.testing.assert_allclose(values(sched, steps), expected, rtol=2e-5, atol=1e-7)
    # Eager Python-int counts and float counts (rounded to float32) work too.
    np.testing.assert_allclose(float(sched(M)), oracle(M), rtol=2e-5)
    np.testing.assert_allclose(float(sched(10.0)), oracle(10), rtol=2e-5, atol=1e-9)
