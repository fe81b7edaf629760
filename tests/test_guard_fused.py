"""The guards' in-place form (``in_place=True``): an inner made of gradtx stages runs on every
step with each slot kept where its rule computes it (``gradtx._core.context.keeping`` /
``run_kept``).

Oracle: the same guard in its default ``lax.cond`` form over a scripted run of finite, NaN,
inf and give-up steps: counters and skip decisions equal, skipped steps bit for bit (zero
updates, params and the whole inner state exactly as before the step), applied steps equal up
to fused multiply-add rounding (XLA may contract the other product of ``a·m + b·g``; rtol
1e-5, the largest difference seen was 6e-6 relative on an element from a cancellation);
trace counts; ``jax.grad`` and ``jax.vmap`` through the kept rules; ``finite_check`` against
NumPy's ``all(isfinite)``; and, from the compiled HLO of a donated step, no more array copies
than the step without a guard (the reason the form exists: docs/benchmarks.md, guard probe).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx
from gradtx._wrappers import finite

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.1, 0.4, 4)}
NAN, INF = float("nan"), float("inf")


def _grads(i: int, bad: float | None = None) -> dict:
    kw, kb = jax.random.split(jax.random.PRNGKey(i))
    g = {"w": jax.random.normal(kw, (3, 4)), "b": jax.random.normal(kb, (4,))}
    if bad is not None:
        g["b"] = g["b"].at[1].set(bad)
    return g


# finite, NaN, finite, inf, then NaN and -inf (given up, with max_consecutive_skips=1), finite
SCRIPT = [None, NAN, None, INF, NAN, -INF, None]


def _chain() -> gradtx.GradientTransformation:
    sched = gradtx.schedules.warmup_cosine_decay(0.0, 1e-2, 2, 20)
    return gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(sched, weight_decay=0.1))


def _inners() -> dict:
    base = _chain()
    return {
        "chain": base,
        "groups": gradtx.groups(base, [gradtx.group("no_decay", gradtx.no_decay, weight_decay=0)]),
        "lion": gradtx.lion(1e-3),
    }


def _run(tx, params=PARAMS, pack=None) -> list:
    """Every step's (updates, state, params), jitted."""
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    p = params if pack is None else pack(params)
    s, out = tx.init(p), []
    for i, bad in enumerate(SCRIPT):
        g = _grads(i, bad)
        u, s = step(g if pack is None else pack(g), s, p)
        p = gradtx.apply_updates(p, u)
        out.append((u, s, p))
    return out


def _assert_same(a, b, rtol: float = 0.0) -> None:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype
        if rtol == 0.0 or not jnp.issubdtype(x.dtype, jnp.inexact):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit
        else:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-8)


def _check(in_place: list, cond: list) -> None:
    """The in-place run against the lax.cond run of the same guard (see the module docstring)."""
    prev = None
    for (u, s, p), (uc, sc, pc) in zip(in_place, cond):
        counters = {k: v for k, v in s.items() if k != "inner_state"}
        _assert_same(counters, {k: v for k, v in sc.items() if k != "inner_state"})
        skipped = all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(uc))
        if skipped and prev is not None:  # exactly as before the step, bit for bit
            _assert_same(s["inner_state"], prev[1]["inner_state"])
            _assert_same(p, prev[2])
            _assert_same(u, uc)
        _assert_same((u, s, p), (uc, sc, pc), rtol=1e-5)
        prev = (u, s, p)


@pytest.mark.parametrize(
    "inner, wrapper",
    [("chain", "skip_nonfinite"), ("groups", "apply_if_finite"), ("lion", "skip_nonfinite")],
)
def test_in_place_equals_cond(inner, wrapper):
    tx_inner = _inners()[inner]
    assert finite.fuses(tx_inner)
    if wrapper == "skip_nonfinite":
        make = lambda **kw: gradtx.skip_nonfinite(tx_inner, max_consecutive_skips=1, **kw)  # noqa: E731
    else:
        make = lambda **kw: gradtx.apply_if_finite(tx_inner, max_consecutive_errors=1, **kw)  # noqa: E731
    in_place = _run(make(in_place=True))
    _check(in_place, _run(make()))
    states = [s["inner_state"] for _, s, _ in in_place]
    _assert_same(states[1], states[0])  # NaN: skipped, bit for bit
    _assert_same(states[3], states[2])  # inf: skipped
    if wrapper == "skip_nonfinite":
        last = in_place[-1][1]
        assert (int(last.skipped), int(last.steps), bool(last.gave_up)) == (2, 5, True)


def test_in_place_packed_equals_cond():
    def pack(t):
        return gradtx.pack(t, threshold=None)

    tx = gradtx.skip_nonfinite(_chain(), in_place=True)
    _check(_run(tx, pack=pack), _run(gradtx.skip_nonfinite(_chain()), pack=pack))


def test_foreign_and_stateful_inners_keep_the_cond():
    assert not finite.fuses(finite.as_inner("t", optax.adam(1e-3)))
    assert not finite.fuses(gradtx.chain(gradtx.clip(1.0), optax.sgd(0.1)))
    assert not finite.fuses(gradtx.MultiSteps(gradtx.adam(1e-3), 2))
    assert finite.fuses(gradtx.chain(gradtx.clip(1.0), gradtx.adam(1e-3)))
    # an optax inner with in_place=True is the lax.cond form: the same updates and state
    tx = gradtx.skip_nonfinite(optax.sgd(0.1, momentum=0.9), in_place=True)
    with jax.numpy_dtype_promotion("standard"):
        _assert_same(_run(tx), _run(gradtx.skip_nonfinite(optax.sgd(0.1, momentum=0.9))))


def test_one_trace_over_finite_and_skipped_steps():
    tx = gradtx.skip_nonfinite(_chain(), in_place=True)
    traces = []

    @jax.jit
    def step(g, s, p):
        traces.append(1)
        u, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, u), s

    p, s = PARAMS, tx.init(PARAMS)
    for i, bad in enumerate(SCRIPT):
        p, s = step(_grads(i, bad), s, p)
    assert len(traces) == 1
    assert int(s.skipped) == 4 and int(s.steps) == 3


def test_meta_gradient_of_taken_steps_equals_inner():
    # jax.grad through the guard's kept rules: on finite steps, that of the inner alone
    def loss(lr, guarded):
        inner = gradtx.adam(lr)
        tx = gradtx.skip_nonfinite(inner, in_place=True) if guarded else inner
        p, s = PARAMS, tx.init(PARAMS)
        for i in range(2):
            u, s = tx.update(_grads(i), s, p)
            p = gradtx.apply_updates(p, u)
        return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(p))

    a = jax.jit(jax.grad(lambda lr: loss(lr, True)))(jnp.float32(0.1))
    b = jax.jit(jax.grad(lambda lr: loss(lr, False)))(jnp.float32(0.1))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)  # FMA rounding


def test_vmap_over_learning_rates():
    lrs = jnp.array([1e-3, 1e-2, 1e-1], jnp.float32)
    g = _grads(0, NAN)
    g2 = _grads(1)

    def run(lr):
        tx = gradtx.skip_nonfinite(gradtx.adam(lr), in_place=True)
        s = tx.init(PARAMS)
        _, s = tx.update(g, s, PARAMS)
        u, s = tx.update(g2, s, PARAMS)
        return u, s

    batched = jax.jit(jax.vmap(run))(lrs)
    for k, lr in enumerate(lrs):
        one = jax.jit(run)(lr)
        _assert_same(jax.tree_util.tree_map(lambda x, k=k: x[k], batched), one, rtol=1e-5)


CASES = [  # (leaves, all finite)
    ([np.ones(3, np.float32)], True),
    ([np.full(4, 3e38, np.float32)], True),  # finite, but the norm overflows
    ([np.array([1.0, INF], np.float32)], False),
    ([np.array([-INF, 0.0], np.float32)], False),
    ([np.array([NAN], np.float32), np.ones(2, np.float32)], False),
    ([np.ones(2, np.float32), np.array([1 + 1j, complex(0, INF)], np.complex64)], False),
    ([np.full(3, 3e38, np.float32).astype(jnp.bfloat16)], True),
    ([], True),
]


def test_finite_check_is_all_isfinite():
    trees = [[jnp.asarray(x) for x in leaves] for leaves, _ in CASES]
    checks = jax.jit(lambda ts: [(finite.finite_check(t), finite.all_finite(t)) for t in ts])
    for (leaves, want), (got, got_all) in zip(CASES, checks(trees)):
        numpy = all(np.all(np.isfinite(np.asarray(x).astype(np.complex128))) for x in leaves)
        assert bool(got) is bool(got_all) is want is numpy, leaves


def _copies(compiled) -> int:
    """Copies of non-scalar arrays in the entry computation (scalar counters excluded)."""
    text = compiled.as_text()
    entry = text[text.index("ENTRY") :]
    return len(re.findall(r"= \w+\[[0-9][0-9,]*\]\S* copy\(", entry))


def test_donated_guarded_step_copies_no_state():
    shapes = [(64, 32), (32,), (32, 128)]
    params = [jnp.zeros(s, jnp.float32) for s in shapes]
    grads = [jnp.ones(s, jnp.float32) for s in shapes]

    def compiled(tx):
        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return gradtx.apply_updates(p, u), s

        jitted = jax.jit(step, donate_argnums=(0, 1))
        return jitted.lower(params, tx.init(params), grads).compile()

    plain = _copies(compiled(_chain()))
    assert _copies(compiled(gradtx.skip_nonfinite(_chain(), in_place=True))) <= plain
