"""The packed parameter layout: pack/unpack, gradients, transparency of every optimizer."""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gradtx
from gradtx._core.struct import static
from gradtx._stages.clipping import AdaptiveGradClip


def _params(seed: int = 0) -> dict:
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    return {
        "emb": jax.random.normal(k[0], (40, 16)),
        "layer": [
            {"w": jax.random.normal(k[1], (16, 24)), "b": jax.random.normal(k[2], (24,))},
            {"w": jax.random.normal(k[3], (24, 16)), "b": jax.random.normal(k[4], (16,))},
        ],
        "scale": jax.random.normal(k[5], ()),
    }


def _loss(p: dict) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(p)
    return sum(jnp.sum(jnp.sin(x * (i + 1.0)) * x) for i, x in enumerate(leaves))


def _close(a, b, rtol=2e-5, atol=2e-6):
    """Same tree structure, shapes and dtypes, values within float32 rounding."""
    chex.assert_trees_all_equal_structs(a, b)
    chex.assert_trees_all_equal_dtypes(a, b)
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def test_roundtrip_grouping_and_paths():
    p = {
        "a": jnp.arange(6.0).reshape(2, 3),
        "h": jnp.ones(4, jnp.bfloat16),
        "i": jnp.arange(3),
        "big": jnp.zeros(100),
        "n": None,
        "z": jnp.full((5,), 2.0),
    }
    packed = gradtx.pack(p, threshold=50)
    lay = packed.layout
    assert [(g.dtype, g.size, len(g.indices)) for g in lay.groups] == [
        ("float32", 11, 2),
        ("bfloat16", 4, 1),
    ]
    assert len(lay.big) == 3  # big, the integer leaf and None stay as they are
    out = gradtx.unpack(packed)
    assert jax.tree_util.tree_structure(out, is_leaf=lambda x: x is None) == (
        jax.tree_util.tree_structure(p, is_leaf=lambda x: x is None)
    )
    for k in ("a", "h", "i", "big", "z"):
        assert out[k].dtype == p[k].dtype
        np.testing.assert_array_equal(out[k], p[k])
    np.testing.assert_array_equal(packed["['a']"], p["a"])
    assert "['z']" in packed.paths
    everything = gradtx.pack(p, threshold=None)
    assert len(everything.layout.big) == 2
    chosen = gradtx.pack(p, include=lambda path, x: path == "['big']")
    assert chosen.layout.groups[0].size == 100
    # equal layouts: no retrace
    assert jax.tree_util.tree_structure(gradtx.pack(p, threshold=50)) == (
        jax.tree_util.tree_structure(packed)
    )


def test_gradient_through_unpack_concatenates():
    p = _params()
    packed = gradtx.pack(p, threshold=None)
    g_ref = jax.grad(_loss)(p)
    g = jax.grad(lambda q: _loss(gradtx.unpack(q)))(packed)
    assert isinstance(g, gradtx.Packed)
    _close(gradtx.unpack(g), g_ref, rtol=1e-6, atol=1e-6)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda q: _loss(gradtx.unpack(q))))(packed))
    assert "concatenate" in jaxpr and " pad" not in jaxpr


NAMED = {
    "sgd": lambda: gradtx.sgd(0.1, momentum=0.9, nesterov=True),
    "sign_sgd": lambda: gradtx.sign_sgd(0.01),
    "adagrad": lambda: gradtx.adagrad(0.1),
    "rmsprop": lambda: gradtx.rmsprop(0.01, centered=True, momentum=0.9),
    "adadelta": lambda: gradtx.adadelta(1.0, weight_decay=0.1),
    "adam": lambda: gradtx.adam(1e-2),
    "adamw": lambda: gradtx.adamw(1e-2, weight_decay=0.1),
    "nadam": lambda: gradtx.nadam(1e-2),
    "nadamw": lambda: gradtx.nadamw(1e-2, weight_decay=0.1),
    "adamax": lambda: gradtx.adamax(1e-2),
    "amsgrad": lambda: gradtx.amsgrad(1e-2),
    "adabelief": lambda: gradtx.adabelief(1e-2),
    "yogi": lambda: gradtx.yogi(1e-2),
    "radam": lambda: gradtx.radam(1e-2),
    "lion": lambda: gradtx.lion(1e-3, weight_decay=0.1),
    "lamb": lambda: gradtx.lamb(1e-2, weight_decay=0.1),
    "lars": lambda: gradtx.lars(0.1, weight_decay=0.1, trust_coefficient=0.01),
    "adafactor": lambda: gradtx.adafactor(1e-2, min_dim_size_to_factor=16, momentum=0.9),
    "adafactor_unfactored": lambda: gradtx.adafactor(1e-2, factored=False),
    "clip_chain": lambda: gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.clip(0.5),
        gradtx.clip_by_block_rms(0.2),
        gradtx.adaptive_grad_clip(0.05),
        gradtx.adamw(gradtx.schedules.linear(1e-2, 1e-3, 10), weight_decay=0.1),
    ),
}


MIXED = {"adafactor", "lamb", "clip_chain", "adamw"}


def _run(tx, params, steps=2):
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda q: _loss(gradtx.unpack(q)))(p)
        u, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_optimizers_packed_equal_per_leaf(name):
    tx = NAMED[name]()
    p = _params()
    ref, _ = _run(tx, p)
    out, _ = _run(tx, gradtx.pack(p, threshold=None))  # one buffer
    _close(gradtx.unpack(out), ref)
    if name in MIXED:
        out, _ = _run(tx, gradtx.pack(p, threshold=100))  # buffers and big leaves
        _close(gradtx.unpack(out), ref)


def _mask(p):
    return jax.tree_util.tree_map(lambda x: x.ndim > 1, p)


@pytest.mark.parametrize("by_mask", [False, True])
def test_masks_mixed_and_grouped(by_mask):
    p = _params()
    txs = [
        gradtx.adamw(1e-2, weight_decay=0.5, mask=_mask),
        gradtx.lamb(1e-2, weight_decay=0.1, mask=_mask),
        gradtx.lars(0.1, weight_decay=0.1, weight_decay_mask=_mask(p), trust_ratio_mask=_mask),
    ]
    for tx in txs:
        ref, ref_state = _run(tx, p)
        packed = gradtx.pack(p, threshold=None, tx=tx if by_mask else None)
        n_groups = len(packed.layout.groups)
        assert n_groups == (2 if by_mask else 1)
        out, state = _run(tx, packed)
        _close(gradtx.unpack(out), ref)
        assert len(jax.tree_util.tree_leaves(state)) >= 1


def test_elementwise_state_unpacks_like_params():
    tx = gradtx.adamw(1e-2)
    p = _params()
    _, ref_state = _run(tx, p)
    _, state = _run(tx, gradtx.pack(p, threshold=None))
    _close(gradtx.unpack(state.knobs.mu), ref_state.knobs.mu)
    _close(gradtx.unpack(state.knobs.nu), ref_state.knobs.nu)
    assert state.knobs.mu.buffers[0].shape == (sum(x.size for x in jax.tree.leaves(p)),)


def test_declared_elementwise():
    assert gradtx.adamw(1e-3).knobs.elementwise
    assert not gradtx.adafactor().knobs.elementwise
    assert gradtx.clip_by_global_norm(1.0).elementwise
    assert not gradtx.clip_by_block_rms(1.0).elementwise
    assert not gradtx.adaptive_grad_clip(0.1).elementwise
    assert not gradtx.scale_by_trust_ratio().elementwise


def test_non_elementwise_slots_are_concatenated_per_leaf():
    tx = gradtx.adafactor(1e-2, min_dim_size_to_factor=16)
    p = _params()
    state = tx.init(gradtx.pack(p, threshold=None))
    ref = tx.init(p)
    sizes = sum(x.size for x in jax.tree.leaves(ref.knobs.v_row))
    assert state.knobs.v_row.buffers[0].shape == (sizes,)
    with pytest.raises(ValueError, match="elementwise"):
        gradtx.unpack(state.knobs.v_row)


def test_sharded_params_keep_sharding():
    mesh = jax.make_mesh((8,), ("x",))
    rep = NamedSharding(mesh, P())
    row = NamedSharding(mesh, P("x"))
    p = {
        "w": jax.device_put(jnp.ones((64, 8)), row),
        "b": jax.device_put(jnp.ones((8,)), rep),
        "c": jax.device_put(jnp.ones((3, 4)), rep),
    }
    packed = gradtx.pack(p, threshold=None)
    assert packed.layout.big == (2,)  # the sharded leaf stays as it is
    assert packed.buffers[0].sharding.is_equivalent_to(rep, 1)
    assert packed.leaves[0].sharding.is_equivalent_to(row, 2)
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-2, weight_decay=0.1))
    state = tx.init(packed)

    @jax.jit
    def step(q, s):
        g = jax.grad(lambda q: jnp.sum(jnp.sin(gradtx.unpack(q)["w"])))(q)
        u, s = tx.update(g, s, q)
        return gradtx.apply_updates(q, u), s

    new, state = step(packed, state)
    assert new.leaves[0].sharding.is_equivalent_to(row, 2)
    assert new.buffers[0].sharding.is_fully_replicated
    assert len(new.buffers[0].sharding.device_set) == 8
    assert state[1].knobs.mu.leaves[0].sharding.is_equivalent_to(row, 2)
    assert gradtx.unpack(new)["w"].sharding.is_equivalent_to(row, 2)


def test_flax_nnx_packed_and_optimizer():
    nnx = pytest.importorskip("flax.nnx")

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 8, rngs=rngs)
            self.l2 = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)))

    x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    tx = gradtx.adamw(1e-2, weight_decay=0.1)

    def loss(model):
        return jnp.mean(model(x) ** 2)

    # per-leaf, inside nnx.Optimizer
    model = MLP(nnx.Rngs(0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train(model, opt):
        opt.update(model, nnx.grad(loss)(model))

    for _ in range(2):
        train(model, opt)
    ref = nnx.state(model, nnx.Param)

    # packed, functional
    model = MLP(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    packed = gradtx.pack(params)
    state = tx.init(packed)

    @jax.jit
    def step(packed, state):
        grads = jax.grad(lambda q: loss(nnx.merge(graphdef, gradtx.unpack(q), rest)))(packed)
        updates, state = tx.update(grads, state, packed)
        return gradtx.apply_updates(packed, updates), state

    for _ in range(2):
        packed, state = step(packed, state)
    _close(gradtx.unpack(packed), ref)


def test_packed_pytree_errors_name_stage():
    tx = gradtx.adam(1e-3)
    packed = gradtx.pack(_params(), threshold=None)
    other = gradtx.pack(_params(), threshold=100)
    with pytest.raises(gradtx.TransformError):
        tx.update(other, tx.init(packed), packed)


def test_equal_layouts_are_one_object():
    # jit hashes and compares the layout on every call: interned layouts compare by identity
    a = gradtx.pack([jnp.zeros(2) for _ in range(50)])
    b = gradtx.pack([jnp.ones(2) for _ in range(50)])
    assert a.layout is b.layout and hash(a.layout) == hash(b.layout)
    assert gradtx.pack([jnp.zeros(3) for _ in range(50)]).layout != a.layout


@pytest.mark.parametrize("sizes", ["equal", "varied", "distinct"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.lamb(1e-2, weight_decay=0.1),
        lambda: gradtx.lars(0.1, weight_decay=1e-3),
        lambda: gradtx.chain(gradtx.clip_by_block_rms(0.05), gradtx.sgd(0.1)),
    ],
    ids=["lamb", "lars", "block_rms"],
)
def test_leafwise_stages_reduce_per_segment(make, sizes, monkeypatch):
    """Trust ratios and block RMS run once on a buffer with per-leaf (segment) reductions:
    one run of equal-sized leaves as a block, a few runs (``pack`` sorts leaves by shape, so
    sizes 3..6 interleaved become 4 runs) block by block, and more than MAX_RUNS distinct sizes
    through one segment_sum. MAX_RUNS is lowered to 6 (read at trace time) so that the
    per-leaf reference stays a small program; the paths taken are the same."""
    from gradtx._core import pieces

    monkeypatch.setattr(pieces, "MAX_RUNS", 6)

    def tree(n):
        shapes = {
            "equal": [(4, 3)] * n,
            "varied": [(3 + i % 4,) for i in range(n)],
            "distinct": [(3 + i,) for i in range(n)],
        }[sizes]
        keys = jax.random.split(jax.random.PRNGKey(7), n)
        return {f"w{i:02d}": jax.random.normal(k, s) for i, (k, s) in enumerate(zip(keys, shapes))}

    n = pieces.MAX_RUNS + 8
    p = tree(n)
    tx = make()
    ref, _ = _run(tx, p)
    packed = gradtx.pack(p, threshold=None)
    assert len(packed.buffers) == 1
    assert (
        len(pieces._runs(packed.layout.groups[0]))
        == {"equal": 1, "varied": 4, "distinct": n}[sizes]
    )
    out, _ = _run(tx, packed)
    _close(gradtx.unpack(out), ref)

    # The stage ran once on the buffer: no per-leaf slicing of it in the program, so 10 more
    # leaves (still past MAX_RUNS where distinct) add no slice to it.
    def slices(q):
        return str(jax.make_jaxpr(lambda q, s: tx.update(q, s, q))(q, tx.init(q))).count("slice")

    assert slices(packed) == slices(gradtx.pack(tree(n + 10), threshold=None))


def test_pack_puts_equal_shapes_together():
    """Within a buffer, leaves of one shape are adjacent (shapes in order of first appearance,
    each in tree order); unpack still restores the tree exactly."""
    shapes = [(3,), (2, 2), (3,), (5,), (2, 2), (3,)]
    p = [jnp.full(s, float(i)) for i, s in enumerate(shapes)]
    packed = gradtx.pack(p, threshold=None)
    g = packed.layout.groups[0]
    assert g.indices == (0, 2, 5, 1, 4, 3)
    assert g.shapes == ((3,), (3,), (3,), (2, 2), (2, 2), (5,))
    chex.assert_trees_all_equal(gradtx.unpack(packed), p)
    np.testing.assert_array_equal(packed.buffers[0][:9], np.repeat([0.0, 2.0, 5.0], 3))


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.chain(gradtx.adaptive_grad_clip(0.05), gradtx.sgd(0.1)),
        lambda: gradtx.adafactor(1e-2, min_dim_size_to_factor=2),
    ],
    ids=["agc", "adafactor"],
)
def test_shape_dependent_stages_run_once_per_shape(make):
    """Stages that depend on a leaf's shape run once per stack of equal-shape leaves (a vmap of
    the rule), not once per leaf, and equal the per-leaf results."""
    n = 8
    shapes = [(4, 3), (5,), (2, 3, 2)]
    keys = jax.random.split(jax.random.PRNGKey(3), 3 * n)
    p = {f"w{i:03d}": jax.random.normal(k, shapes[i % 3]) for i, k in enumerate(keys)}
    tx = make()
    ref, ref_state = _run(tx, p)
    packed = gradtx.pack(p, threshold=None)
    out, state = _run(tx, packed)
    _close(gradtx.unpack(out), ref)
    if "knobs" in state:  # adafactor: each leaf's ravelled row statistics, in buffer order
        order = packed.layout.groups[0].indices
        rows = [jnp.ravel(ref_state.knobs.v_row[f"w{i:03d}"]) for i in order]
        np.testing.assert_allclose(state.knobs.v_row.buffers[0], jnp.concatenate(rows), rtol=2e-5)

    # 3 stacks, not one view per leaf: twice the leaves, the same slices
    def slices(q):
        return str(jax.make_jaxpr(lambda q, s: tx.update(q, s, q))(q, tx.init(q))).count(" slice[")

    keys2 = jax.random.split(jax.random.PRNGKey(4), 6 * n)
    p2 = {f"w{i:03d}": jax.random.normal(k, shapes[i % 3]) for i, k in enumerate(keys2)}
    assert slices(packed) == slices(gradtx.pack(p2, threshold=None))


@pytest.mark.parametrize("count", [2, 4, 10])
def test_segment_sums_of_small_leaves_are_exact(count):
    """Regression: broadcasting each run's sums and concatenating them, read twice by one
    fusion (``where(s == 0, 1, s / t)``, as the trust ratio does), was miscompiled by XLA:CPU
    for small leaves (jaxlib 0.10.2: a segfault or wrong values). Compared with float64."""
    from gradtx._core.context import Context, SegmentContext

    shapes = [(s,) for s in (3, 4, 5, 6) for _ in range(count)]
    x = jnp.arange(sum(s[0] for s in shapes), dtype=jnp.float32) % 7
    packed = gradtx.pack([jnp.zeros(s) for s in shapes], threshold=None)
    ctx = SegmentContext(Context(None, None, {}, {}), packed.layout.groups[0])

    def f(a, b):
        pn, un = jnp.sqrt(ctx.leaf_sum(b)), jnp.sqrt(ctx.leaf_mean(a))
        return a * jnp.where((pn == 0) | (un == 0), 1.0, pn / un)

    got = np.asarray(jax.jit(f)(x, x + 1))
    xs, ref, o = np.asarray(x, np.float64), [], 0
    for (n,) in shapes:
        a = xs[o : o + n]
        pn, un = np.sqrt((a + 1).sum()), np.sqrt(a.mean())
        ref.append(a * (1.0 if pn == 0 or un == 0 else pn / un))
        o += n
    np.testing.assert_allclose(got, np.concatenate(ref), rtol=1e-6)


def test_segment_reductions_refuse_buffers_beyond_int32():
    from gradtx._core.packed import Group
    from gradtx._core.pieces import leaf_ids

    n = 2**31
    big = Group("float32", (0, 1), (0, n // 2), ((n // 2,), (n // 2,)), n)
    with pytest.raises(ValueError, match="too large for per-leaf reductions"):
        leaf_ids(big)


@pytest.mark.parametrize("case", ["few_runs", "many_runs", "beyond_float32"])
def test_leaf_ids_are_exact(case):
    """The leaf of every element, against NumPy: compare-all search with a corrected float
    quotient (few runs), a binary search (more than MAX_RUNS runs), and integer division in a
    run longer than the float path's limit."""
    from gradtx._core.packed import Group
    from gradtx._core.pieces import MAX_RUNS, leaf_ids

    sizes = {
        "few_runs": [7] * 30 + [9] * 30 + [100] * 5,
        "many_runs": [3 + i for i in range(MAX_RUNS + 20)],
        # a run of 5 leaves of 2**22 + 1: offsets within it pass 2**24, where float32 rounds
        # (and the float path's limit of 2**22 elements per run)
        "beyond_float32": [3] * 5 + [2**22 + 1] * 5 + [7] * 4,
    }[case]
    offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    group = Group(
        "float32", tuple(range(len(sizes))), offsets, tuple((s,) for s in sizes), sum(sizes)
    )
    np.testing.assert_array_equal(leaf_ids(group), np.repeat(np.arange(len(sizes)), sizes))


def test_leaf_ids_survive_an_inexact_float_division(monkeypatch):
    """GPU/TPU float32 division may be a few ulp off; the integer correction makes the leaf
    ids exact anyway. Simulated here with a quotient pushed 3 ulp down (and up)."""
    from gradtx._core import pieces as _packed_tx
    from gradtx._core.packed import Group

    sizes = sum(([n] * 7 for n in range(3, 60)), [])
    offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    group = Group(
        "float32", tuple(range(len(sizes))), offsets, tuple((s,) for s in sizes), sum(sizes)
    )
    want = np.repeat(np.arange(len(sizes)), sizes)
    for direction in (-1.0, 1.0):

        def sloppy(a, b, d=direction):
            q = jnp.divide(a, b)
            for _ in range(3):
                q = jnp.nextafter(q, jnp.float32(d * np.inf))
            return q

        monkeypatch.setattr(_packed_tx, "_divide", sloppy)
        np.testing.assert_array_equal(_packed_tx.leaf_ids(group), want)
    # the simulation is strong enough to matter: uncorrected, the low quotient puts leaf
    # starts into the previous leaf
    within = np.concatenate([np.arange(7 * n) for n in range(3, 60)]).astype(np.float32)
    size = np.repeat(np.arange(3, 60), [7 * n for n in range(3, 60)]).astype(np.float32)
    low = jnp.divide(within, size)
    for _ in range(3):
        low = jnp.nextafter(low, jnp.float32(-np.inf))
    assert (np.floor(low) != within // size).any()


class MaskedAGC(AdaptiveGradClip):
    """Adaptive gradient clipping with a mask (a stage's ``mask`` field), for the test below."""

    mask: Any = static(None)


def test_mask_that_splits_a_stack_of_equal_shapes():
    """A shape-dependent stage whose mask differs between leaves of one shape, on a buffer
    packed without ``tx`` (so it mixes masked-in and masked-out leaves): stacks are split at
    mask changes, masked-out leaves pass through and hold no state."""
    shapes = [(4, 3), (4, 3), (5,), (4, 3), (5,), (4, 3), ()]
    keys = jax.random.split(jax.random.PRNGKey(5), len(shapes))
    p = {f"w{i}": jax.random.normal(k, s) for i, (k, s) in enumerate(zip(keys, shapes))}
    mask = {f"w{i}": i % 3 != 1 for i in range(len(shapes))}
    tx = gradtx.chain(MaskedAGC(0.01, mask=mask), gradtx.sgd(0.1))
    ref, _ = _run(tx, p)
    packed = gradtx.pack(p, threshold=None)
    assert len(packed.buffers) == 1
    out, _ = _run(tx, packed)
    _close(gradtx.unpack(out), ref)
