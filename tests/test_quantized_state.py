"""int8_blocks: 8-bit block-quantised state slots, against NumPy float64 oracles, and whether
8-bit Adam state tracks float32 Adam on the digits MLP and a noisy quadratic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import gradtx
from gradtx._precision.quantized import decode, dequantize, dynamic_table, encode, quantize

Q8 = gradtx.int8_blocks
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# --- the NumPy float64 oracle of the stored form -------------------------------------------
def np_quantize(x, block, signed):
    """Codes, scales, the values they stand for and y = x/s, by the module's rule, in float64:
    the nearest table value by brute force (argmin over all 255/256 values)."""
    flat = np.asarray(x, np.float64).ravel()
    n, nb = flat.size, -(-flat.size // block)
    b = np.zeros(nb * block)
    b[:n] = flat
    b = b.reshape(nb, block)
    if not signed:
        b = np.sqrt(np.maximum(b, 0))
    s = np.abs(b).max(axis=1)
    y = b / np.where(s > 0, s, 1)[:, None]
    table = dynamic_table(signed)
    codes = np.abs(y[..., None] - table).argmin(-1)
    if not signed:
        codes = np.where((y > 0) & (codes == 0), 1, codes)
    deq = table[codes] * s[:, None]
    deq = deq if signed else deq * deq
    cut = lambda a: a.ravel()[:n].reshape(np.shape(x))  # noqa: E731
    return cut(codes), s, cut(deq), cut(y), cut(np.repeat(s, block))


def _spacing(y, signed):
    """The gap between the two table values around each y (the rounding step there)."""
    t = dynamic_table(signed)
    i = np.clip(np.searchsorted(t, y, side="right") - 1, 0, t.size - 2)
    return t[i + 1] - t[i]


def _wide_range(shape, seed):
    """Normal values times 10^U(-4, 0): elements of one block span four decades."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 0, shape)
    return x.astype(np.float32)


def test_tables_and_the_computed_codec():
    """Tables as the module defines them; encode/decode (computed, no search) agree with them:
    every code decodes to its table value (float32, rtol 2e-7), every table value encodes to
    its code, and random y get a nearest table value (distance within 1e-7 of the least)."""
    t, tu = dynamic_table(True), dynamic_table(False)
    assert t.size == 255 and tu.size == 256
    assert np.all(np.diff(t) > 0) and np.all(np.diff(tu) > 0)
    np.testing.assert_array_equal(t, -t[::-1])  # symmetric: one code unused
    assert t[127] == 0 and t[-1] == 1 and tu[0] == 0 and tu[-1] == 1
    assert np.sum(t > 0.1) == 64 and np.sum(tu > 0.1) == 128  # finest steps near the absmax
    assert t[128] == pytest.approx(1e-6) and tu[1] == pytest.approx(1e-7)  # 7 and 8 decades
    rng = np.random.default_rng(0)
    for signed, table in ((True, t), (False, tu)):
        codes = jnp.arange(table.size).astype(jnp.uint8)
        np.testing.assert_allclose(decode(codes, signed, jnp.float32), table, rtol=2e-7)
        mid = (table[1:] + table[:-1]) / 2
        y = rng.standard_normal(4000) * 10.0 ** rng.uniform(-9, 0, 4000)
        y = np.clip(y, -1, 1) if signed else np.minimum(np.abs(y), 1)
        y = np.concatenate([y, table, mid * (1 + 1e-5), mid * (1 - 1e-5)]).astype(np.float32)
        got = np.asarray(jax.jit(encode, static_argnums=1)(jnp.asarray(y), signed)).astype(int)
        np.testing.assert_array_equal(got[4000 : 4000 + table.size], np.arange(table.size))
        y64 = y.astype(np.float64)
        best = np.abs(y64[:, None] - table).min(axis=1)
        gap = np.abs(y64 - table[got]) - best
        if not signed:  # the no-zero rule: 0 < y below half the smallest step gets that step
            gap = np.where((y64 > 0) & (got == 1), 0, gap)
        assert gap.max() <= 1e-7, gap.max()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_quantize_matches_the_oracle_within_the_block_error_bound(signed):
    """A (3, 100) leaf in blocks of 64 (the last block 44 elements, padded), values spanning
    four decades. Scales as the oracle's (rtol 1e-6: float32 √); codes equal except where y is
    within 1e-6 of a rounding boundary; the error per element is at most half the table step
    around y times the block's scale (+1e-6·s) -- of √x for the unsigned form -- so at most
    0.9/128·s (signed) and 0.9/256·s (unsigned) anywhere; a positive x never stores as 0."""
    x = _wide_range((3, 100), 1)
    if not signed:
        x = x * x
    codes, scales = jax.jit(quantize, static_argnums=(1, 2))(jnp.asarray(x), 64, signed)
    back = np.asarray(dequantize(codes, scales, 64, signed), np.float64)
    want_codes, want_s, want_back, y, s = np_quantize(x, 64, signed)
    assert codes.dtype == jnp.uint8 and codes.shape == x.shape and scales.shape == (5,)
    np.testing.assert_allclose(scales, want_s, rtol=1e-6)
    t = dynamic_table(signed)
    differ = np.asarray(codes) != want_codes
    boundary = np.min(np.abs(y[..., None] - (t[1:] + t[:-1]) / 2), axis=-1) < 1e-6
    assert not np.any(differ & ~boundary)
    val = back if signed else np.sqrt(back)
    ref = x.astype(np.float64) if signed else np.sqrt(x.astype(np.float64))
    err = np.abs(val - ref)
    bound = s * _spacing(y, signed) / 2 + 1e-6 * s
    if not signed:  # the no-zero rule stores tiny values as the smallest step
        bound = np.where(y < t[1], s * t[1], bound)
    assert np.all(err <= bound)
    assert err.max() / s.max() <= (0.9 / 128 if signed else 0.9 / 256) + 1e-6
    np.testing.assert_allclose(back, want_back, rtol=1e-5, atol=1e-6 * float(np.max(want_back)))
    if not signed:
        assert np.all(back[x > 0] > 0)


def test_padding_and_blocks():
    """2·B + 1 elements: three blocks, the last holding one element (its scale is |x| of that
    element, the padding zeros do not count); the absmax of each block, negative or not, is
    stored exactly (±1 is in the table); an all-zero block has scale 0 and decodes to 0."""
    block = 8
    x = np.concatenate([np.linspace(-3, 1, 8), np.zeros(8), [-0.25]]).astype(np.float32)
    codes, scales = quantize(jnp.asarray(x), block, True)
    assert codes.shape == (17,) and scales.shape == (3,)
    np.testing.assert_array_equal(scales, [3.0, 0.0, 0.25])
    back = np.asarray(dequantize(codes, scales, block, True))
    assert back[0] == -3 and back[-1] == -0.25 and np.all(back[8:16] == 0)
    div = quantize(jnp.ones((4, 8)), block, False)
    assert div[1].shape == (4,) and np.all(np.asarray(dequantize(*div, block, False)) == 1)


def _adam_q8(min_size=4096, rounding="nearest", block=256, lr=1e-2):
    return gradtx.with_state_dtypes(
        gradtx.adam(lr),
        {"mu": Q8(block, min_size=min_size), "nu": Q8(block, signed=False, min_size=min_size)},
        rounding=rounding,
    )


def test_small_leaves_scalars_dtypes_and_checkpoints():
    """Leaves below min_size and scalars are stored unquantised in float32 (also for bfloat16
    params); quantised ones as uint8 codes and float32 scales; the dtypes survive steps; a
    flax msgpack round trip of the state (None scales included) continues bit for bit."""
    params = {
        "big": jnp.asarray(_wide_range((8, 8), 5), jnp.bfloat16),
        "small": jnp.ones(63, jnp.bfloat16),
        "s": jnp.ones((), jnp.bfloat16),
    }
    tx = _adam_q8(min_size=64, block=16)
    grads = [jax.tree.map(lambda p, i=i: (p * 0.1 * i).astype(p.dtype), params) for i in range(5)]
    step = jax.jit(tx.update)
    state = tx.init(params)
    states = [state]
    for g in grads[:2]:
        _, state = step(g, state, params)
        states.append(state)
    for s in states:
        for name in ("mu", "nu"):
            slot = s.inner_state.knobs[name]
            assert slot["codes"]["big"].dtype == jnp.uint8
            assert slot["codes"]["big"].shape == (8, 8)
            assert slot["scales"]["big"].dtype == jnp.float32
            assert slot["scales"]["big"].shape == (4,)
            assert slot["codes"]["small"].dtype == slot["codes"]["s"].dtype == jnp.float32
            assert slot["scales"]["small"] is None and slot["scales"]["s"] is None
    restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(state))
    a, b = state, restored
    for g in grads[2:]:
        ua, a = step(g, a, params)
        ub, b = step(g, b, params)
        jax.tree.map(np.testing.assert_array_equal, ua, ub)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    scalar = gradtx.with_state_dtypes(gradtx.adam(1e-2), {"mu": Q8(min_size=0)})
    assert scalar.init({"s": jnp.ones(())}).inner_state.knobs.mu["scales"]["s"] is None
    assert tx.declared_state_dtypes() == {"mu": np.dtype(np.uint8), "nu": np.dtype(np.uint8)}


def test_memory_report_counts_the_stored_bytes():
    """The report's total equals the state arrays' nbytes; codes and scales are counted under
    their slot (mu, nu), under their param's group, and by dtype."""
    params = {"w": jnp.ones((48, 100)), "b": jnp.ones(100)}  # 4800: quantised; 100: not
    tx = gradtx.with_state_dtypes(
        gradtx.groups(
            gradtx.adamw(1e-3, weight_decay=0.1),
            [gradtx.group("no_decay", gradtx.no_decay, weight_decay=0.0)],
        ),
        {"mu": Q8(), "nu": Q8(signed=False)},
    )
    state = tx.init(params)
    report = gradtx.memory_report(tx, params)
    assert report.total_bytes == sum(x.nbytes for x in jax.tree.leaves(state))
    per_slot = 4800 + 4 * 19 + 4 * 100  # codes, ⌈4800/256⌉ scales, float32 bias
    assert report.by_slot["mu"] == report.by_slot["nu"] == per_slot
    assert report.by_dtype["uint8"] == 2 * 4800
    assert report.by_group["no_decay"] == 2 * 4 * 100 + 4  # + the group's step count
    assert report.by_group["default"] == 2 * (4800 + 4 * 19) + 4


def test_a_step_matches_a_float64_oracle_from_the_stored_state():
    """Each of 6 steps from the stored state: the oracle decodes our codes and scales (float64,
    the table), takes a float64 Adam step and quantises the new m, v. Our update agrees (rtol
    1e-4: float32 arithmetic), our new scales too (rtol 1e-5), and our codes wherever the
    oracle's y is not within 1e-5 of a rounding boundary (float32 rounding may cross it)."""
    lr, b1, b2, eps, block = 1e-2, 0.9, 0.999, 1e-8, 32
    tx = _adam_q8(min_size=0, block=block, lr=lr)
    params = {"w": jnp.asarray(_wide_range((10, 20), 3))}
    state = tx.init(params)
    step = jax.jit(tx.update)
    t_s, t_u = dynamic_table(True), dynamic_table(False)
    for t in range(1, 7):
        g = _wide_range((10, 20), 10 + t)
        knobs = state.inner_state.knobs
        m = t_s[np.asarray(knobs.mu["codes"]["w"])].ravel()
        m = m * np.repeat(np.asarray(knobs.mu["scales"]["w"], np.float64), block)[: m.size]
        r = t_u[np.asarray(knobs.nu["codes"]["w"])].ravel()
        r = r * np.repeat(np.asarray(knobs.nu["scales"]["w"], np.float64), block)[: r.size]
        m = b1 * m.reshape(g.shape) + (1 - b1) * g
        v = b2 * (r * r).reshape(g.shape) + (1 - b2) * g.astype(np.float64) ** 2
        want = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        u, state = step({"w": jnp.asarray(g)}, state, params)
        np.testing.assert_allclose(u["w"], want, rtol=1e-4, atol=1e-9)
        for name, val, signed in (("mu", m, True), ("nu", v, False)):
            codes, s, _, y, _ = np_quantize(val, block, signed)
            slot = state.inner_state.knobs[name]
            np.testing.assert_allclose(slot["scales"]["w"], s, rtol=1e-5)
            table = dynamic_table(signed)
            near = np.min(np.abs(y[..., None] - (table[1:] + table[:-1]) / 2), axis=-1) < 1e-5
            assert not np.any((np.asarray(slot["codes"]["w"]) != codes) & ~near), (t, name)


def test_stochastic_rounding_is_unbiased():
    """256 stochastic quantisations of one leaf: the mean of the stored values is within 1/6
    of the local table step of x (> 5 standard errors of the mean, step/32); round to nearest
    is off by up to half a step and the same every time. Unsigned: unbiased for √v."""
    x = jnp.asarray(_wide_range((512,), 4))
    vals = {True: x, False: x * x}

    @jax.jit
    def stored(u):  # dequantised: 256 stochastic roundings, and round to nearest
        return {
            signed: (
                jax.vmap(lambda u, v=v, sg=signed: dequantize(*quantize(v, 256, sg, u), 256, sg))(
                    u
                ),
                dequantize(*quantize(v, 256, signed), 256, signed),
            )
            for signed, v in vals.items()
        }

    got = stored(jax.random.uniform(jax.random.key(0), (256, 512)))
    for signed, val in vals.items():
        outs, near = (np.asarray(a, np.float64) for a in got[signed])
        _, _, _, y, s = np_quantize(np.asarray(val), 256, signed)
        ref = np.asarray(x, np.float64) if signed else np.abs(np.asarray(x, np.float64))
        mean = outs.mean(0) if signed else np.sqrt(outs).mean(0)
        near = near if signed else np.sqrt(near)
        step = s * _spacing(y, signed)
        tiny = (not signed) & (y < dynamic_table(False)[1])  # the no-zero rule rounds up
        assert np.all((np.abs(mean - ref) <= step / 6) | tiny)
        assert np.mean(np.abs(mean - ref)) < np.mean(np.abs(near - ref)) / 4


def test_bad_specs_are_named():
    with pytest.raises(ValueError, match=r"gradtx\.int8_blocks: block_size must be an int >= 1"):
        Q8(0)
    with pytest.raises(ValueError, match=r"min_size must be an int >= 0"):
        Q8(min_size=-1)
    with pytest.raises(TypeError, match=r"signed must be a bool"):
        Q8(signed="no")
    with pytest.raises(TypeError, match=r"is not a dtype or gradtx\.int8_blocks"):
        gradtx.with_state_dtypes(gradtx.adam(1e-3), {"nu": "eight bits"})


# --- does 8-bit state track float32 Adam? ----------------------------------------------------
def _train_digits(tx, data, order, model):
    from flax import nnx

    sys.path.insert(0, str(EXAMPLES))
    from digits_data import cross_entropy

    x_tr, x_te, y_tr, y_te = (jnp.asarray(a) for a in data)
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)

    def loss(p, x, y):
        return cross_entropy(nnx.merge(graphdef, p)(x), y)

    @jax.jit
    def run(params):
        def body(carry, idx):
            p, s = carry
            g = jax.grad(loss)(p, x_tr[idx], y_tr[idx])
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), order)
        acc = jnp.mean(jnp.argmax(nnx.merge(graphdef, p)(x_te), -1) == y_te)
        return loss(p, x_tr, y_tr), acc

    return tuple(float(v) for v in run(params))


@pytest.mark.slow
def test_8bit_adamw_tracks_float32_on_the_digits_mlp():
    """The example's MLP (64-64-64-10, GELU) on the digits, 3 epochs of batch 64 (336 steps),
    adamw(3e-3, weight_decay=1e-4), default int8_blocks (the two 64×64 kernels, 92% of the
    params, quantised; the rest float32) with stochastic rounding. Final training loss within
    2% of float32's (measured 0.1%; round to nearest, not run here: 0.03%), test accuracy
    within 1 point."""
    pytest.importorskip("sklearn")
    nnx = pytest.importorskip("flax.nnx")
    spec = importlib.util.spec_from_file_location("_q8_digits", EXAMPLES / "flax_nnx_digits.py")
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    sys.path.insert(0, str(EXAMPLES))
    from digits_data import batches, load_data

    data = load_data(0)
    order = jnp.asarray(batches(len(data[0]), 64, 3, 0).reshape(-1, 64))
    base = lambda: gradtx.adamw(3e-3, weight_decay=1e-4)  # noqa: E731
    q8 = {"mu": Q8(), "nu": Q8(signed=False)}
    runs = {
        name: _train_digits(tx, data, order, example.MLP(64, rngs=nnx.Rngs(0)))
        for name, tx in {
            "f32": base(),
            "8-bit": gradtx.with_state_dtypes(base(), q8, rounding="stochastic"),
        }.items()
    }
    (loss32, acc32), (loss, acc) = runs["f32"], runs["8-bit"]
    assert loss32 < 0.15 and acc32 > 0.9  # it trained
    assert abs(loss / loss32 - 1) < 0.02, runs
    assert abs(acc - acc32) <= 0.01, runs


@pytest.mark.slow
def test_8bit_adam_on_a_noisy_quadratic():
    """A noisy quadratic (Zhang et al. 2019): 4096 weights, curvatures h log-uniform in
    [1e-4, 1e2] (random order, so each block spans six decades), gradient noise of variance h,
    1000 Adam steps (lr 1e-2); the mean loss of the last 200 steps, the noise floor. 8-bit
    state with stochastic rounding tracks float32 within 5% (measured 1.0%); round to nearest
    does not (measured 1.52×, asserted > 1.25×): a β₂ = 0.999 step changes v by ~1e-3 of
    itself, below half a code step, so ``nu`` ratchets up as a bfloat16 one does."""
    n = 4096
    rng = np.random.default_rng(0)
    h = jnp.asarray(10.0 ** rng.uniform(-4, 2, n), jnp.float32)
    target = jnp.asarray(rng.standard_normal(n), jnp.float32)

    def loss(w):
        return 0.5 * jnp.sum(h * (w - target) ** 2) / n

    def floor(tx):
        def body(carry, key):
            w, s = carry
            g = jax.grad(loss)(w) + jnp.sqrt(h) / n * jax.random.normal(key, (n,))
            u, s = tx.update({"w": g}, s, {"w": w})
            return (w + u["w"], s), loss(w)

        w0 = jnp.zeros(n)
        keys = jax.random.split(jax.random.key(0), 1000)
        _, losses = jax.lax.scan(body, (w0, tx.init({"w": w0})), keys)
        return jnp.mean(losses[-200:])

    ref, sr, near = (
        float(jax.jit(lambda tx=tx: floor(tx))())
        for tx in (gradtx.adam(1e-2), _adam_q8(rounding="stochastic"), _adam_q8())
    )
    assert abs(sr / ref - 1) < 0.05, (sr, ref)
    assert near / ref > 1.25, (near, ref)
