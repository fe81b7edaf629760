"""Parameter averages: ``ema_params``, ``swa_params`` and ``eval_params``.

Oracles on the parameter sequence of a real run: ``torch.optim.swa_utils.AveragedModel`` (EMA
and its default SWA) with ``update_parameters`` after each averaging step, closed forms of the
averages in NumPy float64, and ``optax.ema(debias=True)`` fed the parameters. Then start/every
semantics, bfloat16 params with a float32 average, a msgpack checkpoint mid-run, the kit,
trace counts, flax (nnx.Optimizer, linen TrainState), nesting and errors.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import gradtx
from gradtx._wrappers.averages import EmaParams, ema_params, eval_params, swa_params
from gradtx.testing import check_transformation

torch = pytest.importorskip("torch")
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # noqa: E402

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.1, 0.4, 4)}
STEPS = 14


def _grads(i: int, params=PARAMS) -> dict:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(i), len(leaves))
    g = [jax.random.normal(k, x.shape).astype(x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, g)


def _run(tx, steps=STEPS, params=PARAMS, state=None, first=0, read=True):
    """Jitted steps; returns the params after each step, the averages read after each step
    (``read``), the updates, and the last params and state."""

    @jax.jit
    def step(params, state, g):
        u, state = tx.update(g, state, params)
        params = gradtx.apply_updates(params, u)
        return params, state, u, eval_params(state, params) if read else None

    state = tx.init(params) if state is None else state
    seq, avgs, ups = [], [], []
    for i in range(first, first + steps):
        params, state, u, avg = step(params, state, _grads(i, params))
        seq.append(params)
        avgs.append(avg)
        ups.append(u)
    return seq, avgs, ups, params, state


def _averaging(c: int, start: int, every: int) -> bool:
    return c >= start and (c - start) % every == 0


def _x64(dtype) -> contextlib.AbstractContextManager:
    return jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext()


def _close(a, b, rtol, atol=0.0):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x, np.float64),
            np.asarray(y, np.float64),
            rtol=rtol,
            atol=atol,
            err_msg=jax.tree_util.keystr(path),
        )


# --- torch ------------------------------------------------------------------------------------


def _torch_averages(seq, make_avg, start, every, dtype):
    """The average torch's AveragedModel holds after each step of ``seq``."""
    tdt = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    leaves0 = jax.tree_util.tree_leaves(seq[0])
    model = torch.nn.ParameterList(
        [torch.nn.Parameter(torch.tensor(np.asarray(x), dtype=tdt)) for x in leaves0]
    )
    averaged = make_avg(model)
    out, started = [], False
    for c, params in enumerate(seq):
        with torch.no_grad():
            for p, x in zip(model, jax.tree_util.tree_leaves(params)):
                p.copy_(torch.tensor(np.asarray(x), dtype=tdt))
        if _averaging(c, start, every):
            averaged.update_parameters(model)
            started = True
        src = averaged.module if started else model  # before the first average: the params
        out.append([p.detach().numpy().copy() for p in src])
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("start", "every"), [(0, 1), (3, 2)])
@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_equals_torch_averaged_model(kind, start, every, dtype):
    with _x64(dtype):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), PARAMS)
        if kind == "ema":
            tx = ema_params(gradtx.sgd(0.1, 0.9), 0.8, start=start, every=every)
            make = lambda m: AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(0.8))  # noqa: E731
        else:
            tx = swa_params(gradtx.sgd(0.1, 0.9), start=start, every=every)
            make = AveragedModel
        seq, avgs, _, _, _ = _run(tx, params=params)
        want = _torch_averages(seq, make, start, every, dtype)
    # torch's EMA is a fused lerp (an FMA on CPU): a rounding apart per step in float32;
    # SWA's a + (p − a)/(n + 1) is the same operations in both, so equal to rounding too.
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    for got, ref in zip(avgs, want):
        _close(jax.tree_util.tree_leaves(got), ref, rtol=rtol, atol=rtol)
    assert not np.allclose(avgs[-1]["w"], seq[-1]["w"], rtol=1e-3)  # an average, not θ


# --- NumPy float64 closed forms -----------------------------------------------------------


def _samples(seq, start, every):
    return [
        np.asarray(p["w"], np.float64) for c, p in enumerate(seq) if _averaging(c, start, every)
    ]


@pytest.mark.parametrize(("start", "every"), [(0, 1), (2, 3)])
def test_closed_forms_in_float64(start, every):
    b = 0.9
    runs = {
        "ema": _run(ema_params(gradtx.adam(0.05), b, start=start, every=every))[:2],
        "debias": _run(ema_params(gradtx.adam(0.05), b, debias=True, start=start, every=every))[:2],
        "swa": _run(swa_params(gradtx.adam(0.05), start=start, every=every))[:2],
    }
    seq = runs["ema"][0]
    for t in range(STEPS):
        xs = _samples(seq[: t + 1], start, every)
        n = len(xs)
        if n == 0:  # before averaging: the params themselves
            for _, avgs in runs.values():
                np.testing.assert_array_equal(avgs[t]["w"], seq[t]["w"])
            continue
        k = np.arange(1, n + 1)
        weights = (1 - b) * b ** (n - k)
        ema = b ** (n - 1) * xs[0] + sum(w * x for w, x in zip(weights[1:], xs[1:]))
        debiased = sum(w * x for w, x in zip(weights, xs)) / (1 - b**n)
        swa = np.mean(xs, axis=0)
        # float32 recursions of ≤ 14 steps against exact sums: a few float32 roundings
        for name, want in (("ema", ema), ("debias", debiased), ("swa", swa)):
            np.testing.assert_allclose(runs[name][1][t]["w"], want, rtol=2e-6, atol=2e-7)


def test_debias_equals_optax_ema_fed_the_params():
    b = 0.9
    seq, avgs, _, _, _ = _run(ema_params(gradtx.sgd(0.1), b, debias=True))
    ema = optax.ema(b, debias=True)
    s = ema.init(PARAMS)
    with jax.numpy_dtype_promotion("standard"):
        for params, got in zip(seq, avgs):
            want, s = ema.update(params, s)
            # optax's 1 − βᵗ in float32 against gradtx's −expm1(t·log β): ~1e-6 relative
            _close(got, want, rtol=5e-6, atol=1e-7)


# --- start / every ------------------------------------------------------------------------


def test_start_and_every_semantics():
    start, every = 4, 3
    tx = swa_params(gradtx.sgd(0.1), start=start, every=every)
    seq, avgs, _, _, state = _run(tx)
    for c in range(STEPS):
        if c < start:  # tracks the params exactly
            np.testing.assert_array_equal(avgs[c]["w"], seq[c]["w"])
        elif not _averaging(c, start, every):  # unchanged between averaging steps
            np.testing.assert_array_equal(avgs[c]["w"], avgs[c - 1]["w"])
    np.testing.assert_array_equal(avgs[start]["w"], seq[start]["w"])  # the first: a copy
    assert int(state.count) == STEPS
    assert int(state.n_averaged) == len(range(start, STEPS, every))


def test_updates_are_inner_updates_and_views():
    inner = gradtx.adam(gradtx.schedules.linear(0.1, 0.0, 20))
    _, _, ours, _, state = _run(ema_params(inner, 0.9))
    _, _, plain, _, _ = _run(inner, read=False)
    for a, b in zip(ours, plain):
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_array_equal(x, y)
    tx = ema_params(inner, 0.9)
    assert float(gradtx.current_learning_rate(tx, state)) == pytest.approx(0.1 * (1 - 14 / 20))
    assert gradtx.hyperparams(tx, state)["knobs"]["scale"]["b2"] == 0.999


# --- dtypes -------------------------------------------------------------------------------


def test_bfloat16_params_with_a_float32_average():
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    b = 0.99
    seq, avgs, _, _, state = _run(ema_params(gradtx.sgd(0.01), b, dtype=jnp.float32), params=params)
    _, low, _, _, _ = _run(ema_params(gradtx.sgd(0.01), b), params=params)
    assert state.ema["w"].dtype == jnp.float32 and avgs[-1]["w"].dtype == jnp.bfloat16
    want = np.asarray(seq[0]["w"], np.float64)
    for p in seq[1:]:
        want = b * want + (1 - b) * np.asarray(p["w"], np.float64)
    # the float32 average: float32 roundings of the exact EMA; read back, half a bfloat16 ulp
    np.testing.assert_allclose(np.asarray(state.ema["w"], np.float64), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(avgs[-1]["w"], np.float64), want, rtol=2**-8)
    # a bfloat16 average rounds most of the 1% increments away
    err_low = np.max(np.abs(np.asarray(low[-1]["w"], np.float64) - want))
    err_f32 = np.max(np.abs(np.asarray(state.ema["w"], np.float64) - want))
    assert err_low > 100 * err_f32, (err_low, err_f32)


def test_none_leaves_pass_through():
    params = {"w": PARAMS["w"], "frozen": None}
    tx = ema_params(gradtx.sgd(0.1), 0.9)
    state = tx.init(params)
    assert state.ema["frozen"] is None
    u, state = tx.update({"w": jnp.ones((3, 4)), "frozen": None}, state, params)
    assert eval_params(state, params)["frozen"] is None


# --- checkpoint, kit, traces --------------------------------------------------------------


@pytest.mark.parametrize(
    "tx",
    [ema_params(gradtx.adamw(0.05), 0.9, debias=True, every=2), swa_params(gradtx.adam(0.05))],
    ids=["ema", "swa"],
)
def test_checkpoint_round_trip_continues_bit_identically(tx):
    _, _, _, params, state = _run(tx, steps=5)
    restored = serialization.from_bytes(tx.init(PARAMS), serialization.to_bytes(state))
    a = _run(tx, 5, params, state, first=5)
    b = _run(tx, 5, params, restored, first=5)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


# ema_params, its debiased form and swa_params pass the kit in tests/test_conformance.py
# (tests/kit_cases.py); here the variants the table does not hold.


def test_kit_with_an_optax_inner_misses_only_what_optax_misses():
    report = check_transformation(ema_params(optax.adam(1e-3), 0.9))
    assert set(report.misses) == {"strict_promotion"}, str(report)  # optax.adam's own (0.2.8)
    assert "strict_promotion" in check_transformation(optax.adam(1e-3), name="optax").misses


def test_kit_float32_average_of_low_precision_params():
    tx = ema_params(gradtx.adam(1e-3), dtype=jnp.float32)
    check_transformation(tx, strict=True, dtypes=(jnp.float32, jnp.bfloat16, jnp.float16))


def test_jit_does_not_retrace_for_new_decay_or_equal_rebuild():
    traces = []

    @jax.jit
    def step(tx, params, state, g):
        traces.append(1)
        u, state = tx.update(g, state, params)
        return gradtx.apply_updates(params, u), state

    state = ema_params(gradtx.sgd(0.1), 0.9).init(PARAMS)
    params = PARAMS
    for i, decay in enumerate((0.9, 0.99, 0.5)):
        params, state = step(ema_params(gradtx.sgd(0.1), decay), params, state, _grads(i))
    assert len(traces) == 1
    assert ema_params(gradtx.adam(1e-3), 0.9) == ema_params(gradtx.adam(1e-3), 0.9)
    assert hash(swa_params(gradtx.sgd(0.1))) == hash(swa_params(gradtx.sgd(0.1)))


# --- flax ---------------------------------------------------------------------------------


def test_nnx_optimizer_and_eval_params():
    nnx = pytest.importorskip("flax.nnx")
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, ema_params(gradtx.adam(0.05), 0.8), wrt=nnx.Param)
    traces, seq = [], [nnx.state(model, nnx.Param)]

    @nnx.jit
    def step(model, opt):
        traces.append(1)
        opt.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))

    for _ in range(5):
        step(model, opt)
        seq.append(jax.tree_util.tree_map(jnp.copy, nnx.state(model, nnx.Param)))
    assert len(traces) == 1
    avg = eval_params(opt.opt_state, nnx.state(model, nnx.Param))
    want = seq[1]["kernel"][...]
    for s in seq[2:]:
        want = want + 0.2 * (s["kernel"][...] - want)
    np.testing.assert_allclose(avg["kernel"], want, rtol=1e-6)
    ema_model = nnx.clone(model)
    nnx.update(ema_model, avg)
    np.testing.assert_allclose(ema_model(x), x @ avg["kernel"] + avg["bias"][None], rtol=1e-6)


def test_linen_train_state_and_eval_params():
    from flax.training import train_state

    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    ts = train_state.TrainState.create(
        apply_fn=lambda p, x: x @ p["w"],
        params={"w": jnp.ones((3, 2))},
        tx=gradtx.chain(gradtx.clip_by_global_norm(1.0), swa_params(gradtx.sgd(0.1), start=1)),
    )

    @jax.jit
    def step(ts):
        grads = jax.grad(lambda p: jnp.mean(ts.apply_fn(p, x) ** 2))(ts.params)
        return ts.apply_gradients(grads=grads)

    seen = []
    for _ in range(4):
        ts = step(ts)
        seen.append(ts.params["w"])
    avg = eval_params(ts.opt_state, ts.params)
    np.testing.assert_allclose(avg["w"], np.mean(seen[1:], axis=0), rtol=1e-6)


# --- nesting ------------------------------------------------------------------------------


def test_found_inside_optax_chain_and_merged_across_partition_groups():
    with jax.numpy_dtype_promotion("standard"):
        _, avgs, _, params, state = _run(
            optax.chain(optax.clip(1.0), ema_params(gradtx.sgd(0.1), 0.9))
        )
    ref = _run(gradtx.chain(gradtx.clip(1.0), ema_params(gradtx.sgd(0.1), 0.9)))[1]
    _close(avgs[-1], ref[-1], rtol=1e-7)
    labels = {"w": "avg", "b": "plain"}
    tx = gradtx.partition(
        {"avg": ema_params(gradtx.sgd(0.1), 0.9), "plain": gradtx.sgd(0.1)}, labels
    )
    seq, avgs, _, params, state = _run(tx)
    np.testing.assert_array_equal(avgs[-1]["b"], params["b"])  # not averaged: the param
    assert not np.allclose(avgs[-1]["w"], params["w"], rtol=1e-3)
    both = {"avg": ema_params(gradtx.sgd(0.1), 0.9), "plain": swa_params(gradtx.sgd(0.1))}
    _, avgs, _, params, state = _run(gradtx.partition(both, labels), steps=3)
    # disjoint averages merge: each leaf from the group that holds it
    np.testing.assert_array_equal(avgs[-1]["w"], state.inner_states["avg"].inner_state.ema["w"])
    np.testing.assert_array_equal(avgs[-1]["b"], state.inner_states["plain"].inner_state.swa["b"])


def test_nested_averages_read_the_outer_one_or_the_state_given():
    tx = ema_params(swa_params(gradtx.sgd(0.1)), 0.5)
    _, _, _, params, state = _run(tx, steps=4)
    np.testing.assert_array_equal(eval_params(state, params)["w"], state.ema["w"])
    inner = state.inner_state
    np.testing.assert_array_equal(eval_params(inner, params)["w"], inner.swa["w"])


# --- errors -------------------------------------------------------------------------------


def test_errors_name_the_problem():
    tx = ema_params(gradtx.sgd(0.1))
    state = tx.init(PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"gradtx.ema_params: update needs params"):
        tx.update(_grads(0), state)
    with pytest.raises(gradtx.TransformError, match=r"gradtx.swa_params: state is not"):
        swa_params(gradtx.sgd(0.1)).update(_grads(0), state, PARAMS)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"gradtx.ema_params: decay"):
            ema_params(gradtx.sgd(0.1), bad)
    with pytest.raises(TypeError, match=r"gradtx.ema_params: decay must be a number"):
        ema_params(gradtx.sgd(0.1), lambda t: 0.9)
    with pytest.raises(ValueError, match=r"gradtx.swa_params: every must be an int >= 1"):
        swa_params(gradtx.sgd(0.1), every=0)
    with pytest.raises(ValueError, match=r"gradtx.ema_params: start must be an int >= 0"):
        ema_params(gradtx.sgd(0.1), start=True)
    with pytest.raises(TypeError, match=r"gradtx.swa_params: dtype must be a floating dtype"):
        swa_params(gradtx.sgd(0.1), dtype=jnp.int32)
    with pytest.raises(TypeError, match=r"gradtx.ema_params: inner must be a transformation"):
        EmaParams(object())
    with pytest.raises(ValueError, match=r"gradtx.eval_params: state holds no parameter average"):
        eval_params(gradtx.adam(0.1).init(PARAMS), PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"gradtx.eval_params: .*\.ema"):
        eval_params(state, {"w": PARAMS["w"]})
    with pytest.raises(gradtx.TransformError, match=r"gradtx.eval_params: at \['b'\].*shape"):
        eval_params(state, {"w": PARAMS["w"], "b": jnp.zeros(5)})
