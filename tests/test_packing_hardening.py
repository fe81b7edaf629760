"""Regressions of the packed layout (``gradtx.pack``/``unpack``/``Packed``/``Layout``).

- F03: packed params and optimizer state go through checkpoints (flax msgpack and orbax, also
  when every leaf is packed) and training continues identically after a restore.
- F09: eager ``pack`` compiles no N-operand concatenation (nor eager ``unpack`` an N-output
  split), and traced ``unpack`` is one ``split`` per buffer, so the packed step's program
  grows no faster with the number of leaves than the per-leaf one (asserted on the mechanism,
  never on a time).
- F14: committed (restored, ``device_put``) and fresh arrays pack to the same ``Layout``.
- F16: forward-mode AD (``jax.jvp``, ``jax.jacfwd``) and ``jax.linear_transpose`` through
  ``unpack``.
- F17: the table of interned layouts frees the layouts nothing uses any more.
"""

from __future__ import annotations

import gc
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
from gradtx._core import packed as _packing

serialization = pytest.importorskip("flax.serialization")


def _params(seed: int = 0) -> dict:
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    return {
        "emb": jax.random.normal(k[0], (40, 16)),  # 640 elements: "big" for threshold=100
        "layer": [
            {"w": jax.random.normal(k[1], (4, 6)), "b": jax.random.normal(k[2], (6,))},
            {"w": jax.random.normal(k[3], (6, 4)), "b": jax.random.normal(k[4], (4,))},
        ],
        "scale": jnp.asarray(0.5),
    }


def _loss(p: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(p)
    return sum(
        jnp.sum(jnp.sin(x * (i + 1.0)) * x).astype(jnp.float32) for i, x in enumerate(leaves)
    )


def _tx() -> gradtx.GradientTransformation:
    return gradtx.adamw(1e-2, weight_decay=0.1)


def _step(tx):
    @jax.jit
    def step(p, s):
        g = jax.grad(lambda q: _loss(gradtx.unpack(q)))(p)
        u, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, u), s

    return step


def _train(step, p, s, n):
    for _ in range(n):
        p, s = step(p, s)
    return p, s


def _equal(a, b):
    """Same structure (layouts included) and bit-identical values."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    chex.assert_trees_all_equal(a, b)


def _packed_nodes(tree) -> list:
    return [
        x
        for x in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, gradtx.Packed))
        if isinstance(x, gradtx.Packed)
    ]


# --- F03: checkpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [None, 100], ids=["all_packed", "some_unpacked"])
def test_msgpack_roundtrip_of_packed_params_and_adamw_state(threshold):
    tx = _tx()
    step = _step(tx)
    packed = gradtx.pack(_params(), threshold=threshold)
    assert bool(packed.layout.big) == (threshold is not None)
    p_mid, s_mid = _train(step, packed, tx.init(packed), 2)
    blob = serialization.to_bytes({"params": p_mid, "opt_state": s_mid})

    fresh = gradtx.pack(_params(1), threshold=threshold)
    target = {"params": fresh, "opt_state": tx.init(fresh)}
    restored = serialization.from_bytes(target, blob)
    assert type(restored["params"]) is gradtx.Packed
    assert restored["params"].layout is packed.layout
    slots = _packed_nodes(restored["opt_state"])
    assert len(slots) == 2  # adamw's mu and nu, in the params' layout
    assert all(s.layout is packed.layout for s in slots)
    _equal(restored, {"params": p_mid, "opt_state": s_mid})
    # A training step continues identically after the restore.
    _equal(
        _train(step, restored["params"], restored["opt_state"], 2), _train(step, p_mid, s_mid, 2)
    )


def test_msgpack_restore_into_another_layout_is_refused():
    saved = serialization.to_bytes(gradtx.pack(_params(), threshold=100))
    with pytest.raises(ValueError, match=r"gradtx\.Packed: .*another layout"):
        serialization.from_bytes(gradtx.pack(_params(), threshold=None), saved)
    # the same parts, but a buffer of another size
    saved = serialization.to_bytes(gradtx.pack({"a": jnp.ones(2), "b": jnp.ones(2)}))
    with pytest.raises(ValueError, match=r"gradtx\.Packed: the saved buffer 0 .*float32\[4\]"):
        serialization.from_bytes(gradtx.pack({"a": jnp.ones(3), "b": jnp.ones(2)}), saved)


@pytest.mark.parametrize("threshold", [None, 100], ids=["all_packed", "some_unpacked"])
def test_orbax_roundtrip_of_packed_params_and_state(threshold, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    tx = _tx()
    step = _step(tx)
    packed = gradtx.pack(_params(), threshold=threshold)
    # every leaf packed: no leaf is kept as is, and an empty `leaves` is no pytree child
    assert (packed.layout.big == ()) == (threshold is None)
    p_mid, s_mid = _train(step, packed, tx.init(packed), 2)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", {"params": p_mid, "opt_state": s_mid})
        ckpt.wait_until_finished()
    fresh = gradtx.pack(_params(1), threshold=threshold)
    target = jax.eval_shape(lambda: {"params": fresh, "opt_state": tx.init(fresh)})
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(tmp_path / "ckpt", target)
    assert type(restored["params"]) is gradtx.Packed
    assert restored["params"].layout is packed.layout
    assert all(s.layout is packed.layout for s in _packed_nodes(restored["opt_state"]))
    _equal(restored, {"params": p_mid, "opt_state": s_mid})
    _equal(
        _train(step, restored["params"], restored["opt_state"], 2), _train(step, p_mid, s_mid, 2)
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_orbax_restore_into_another_layout_fails(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", gradtx.pack(_params(), threshold=None))
        ckpt.wait_until_finished()
    other = gradtx.pack(_params(), threshold=100)  # a buffer and a leaf kept as is
    with ocp.StandardCheckpointer() as ckpt, pytest.raises((ValueError, KeyError, TypeError)):
        ckpt.restore(tmp_path / "ckpt", jax.eval_shape(lambda: other))
    gc.collect()  # orbax's unawaited coroutines: collected here, not in another test
    gc.collect()


# --- F09: no N-operand compilation in pack, one split per buffer in unpack ---------------------

SHAPES = [(8,), (16,), (4, 4), (3, 5), (32,), (2, 3, 4)]


def _many(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(SHAPES[i % 6]), jnp.float32) for i in range(n)]


class _Compiles:
    """Records the name of every XLA compilation while active (``jax.monitoring``)."""

    def __enter__(self) -> list[str]:
        self.names: list[str] = []
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self.names

    def __exit__(self, *exc: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs: Any) -> None:
        if event.endswith("backend_compile_duration"):
            self.names.append(str(kwargs.get("fun_name", "?")))


def test_eager_pack_and_unpack_compile_nothing_per_leaf():
    leaves = jax.block_until_ready(_many(2000))
    with _Compiles() as compiled:
        packed = jax.block_until_ready(gradtx.pack(leaves, threshold=None))
    assert len(packed.buffers) == 1
    assert not [c for c in compiled if "concatenate" in c or "ravel" in c], compiled
    assert len(compiled) <= len(packed.buffers), compiled  # at most a copy per buffer
    want = np.concatenate([np.ravel(leaves[i]) for i in packed.layout.groups[0].indices])
    np.testing.assert_array_equal(packed.buffers[0], want)
    # Eager unpack: no 2,000-output program either (a dynamic slice per leaf size and a
    # reshape per leaf shape at most), and the leaves come back exactly.
    with _Compiles() as compiled:
        out = jax.block_until_ready(gradtx.unpack(packed))
    assert not [c for c in compiled if "split" in c], compiled
    assert len(compiled) <= 2 * len(SHAPES), compiled
    chex.assert_trees_all_equal(out, leaves)
    # inside jit, pack is traced as before (the concatenation is part of the program)
    small = leaves[:12]
    jitted = jax.jit(lambda t: gradtx.pack(t, threshold=None))(small)
    assert jitted.layout is gradtx.pack(small, threshold=None).layout
    np.testing.assert_array_equal(jitted.buffers[0], gradtx.pack(small, threshold=None).buffers[0])


def _count_eqns(jaxpr) -> int:
    from jax.extend.core import jaxprs_in_params

    return sum(1 + sum(_count_eqns(j) for j in jaxprs_in_params(e.params)) for e in jaxpr.eqns)


def _step_jaxpr(tree, packed: bool):
    tx = gradtx.adamw(1e-3, weight_decay=0.1)

    def step(p, s):
        v, g = jax.value_and_grad(lambda q: _loss(gradtx.unpack(q) if packed else q))(p)
        u, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, u), s, v

    return jax.make_jaxpr(step)(tree, tx.init(tree))


def test_unpack_is_one_views_op_per_buffer_and_the_step_grows_slower_than_per_leaf():
    p = {"f32": _many(60), "bf16": [x.astype(jnp.bfloat16) for x in _many(30, 1)]}
    packed = gradtx.pack(p, threshold=None)
    assert len(packed.buffers) == 2
    text = str(jax.make_jaxpr(jax.jit(gradtx.unpack))(packed))
    assert text.count(" packed_views[") == 2
    assert " slice[" not in text and "custom_vjp" not in text
    # the whole packed training step: one views op per buffer forward, its transpose (one
    # concatenate per buffer) backward; no per-leaf slices, no padding
    step = str(_step_jaxpr(packed, packed=True))
    assert step.count(" packed_views[") == 2 and step.count(" concatenate[") == 2
    assert " slice[" not in step and " pad[" not in step
    # and its program (equations, sub-programs included) grows with the number of leaves no
    # faster than the per-leaf step's
    sizes: dict[str, list[int]] = {"packed": [], "leaf": []}
    for n in (60, 240):
        tree = _many(n)
        sizes["packed"].append(_count_eqns(_step_jaxpr(gradtx.pack(tree), packed=True).jaxpr))
        sizes["leaf"].append(_count_eqns(_step_jaxpr(tree, packed=False).jaxpr))
    slope = {k: (v[1] - v[0]) / 180 for k, v in sizes.items()}
    assert slope["packed"] <= slope["leaf"], sizes


# --- F14: committedness does not change the layout ----------------------------------------------


def test_committed_and_restored_arrays_pack_to_the_same_layout(tmp_path):
    fresh = _params()
    assert not any(x.committed for x in jax.tree.leaves(fresh))
    committed = jax.device_put(fresh, jax.devices()[0])
    assert all(x.committed for x in jax.tree.leaves(committed))
    restored = serialization.from_bytes(_params(1), serialization.to_bytes(fresh))
    trees = {"fresh": fresh, "committed": committed, "msgpack": restored}
    ocp = pytest.importorskip("orbax.checkpoint")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "p", fresh)
        ckpt.wait_until_finished()
    with ocp.StandardCheckpointer() as ckpt:
        trees["orbax"] = ckpt.restore(tmp_path / "p", jax.eval_shape(_params))

    for threshold in (None, 100):
        packs = {k: gradtx.pack(t, threshold=threshold) for k, t in trees.items()}
        layouts = {k: q.layout for k, q in packs.items()}
        assert all(lay is layouts["fresh"] for lay in layouts.values()), layouts
        for q in packs.values():
            chex.assert_trees_all_equal(gradtx.unpack(q), fresh)

        traces = []
        tx = _tx()

        @jax.jit
        def step(p, s, tx=tx, traces=traces):
            traces.append(1)  # runs once per trace
            g = jax.grad(lambda w: _loss(gradtx.unpack(w)))(p)
            u, s = tx.update(g, s, p)
            return gradtx.apply_updates(p, u), s

        results = [step(q, tx.init(q)) for q in packs.values()]
        assert len(traces) == 1  # compiled on fresh arrays, no retrace on the others
        for r in results[1:]:
            _equal(r, results[0])


# --- F16: forward-mode AD and transposition through unpack --------------------------------------


def _f(tree) -> jax.Array:
    """A vector-valued function of every leaf (so its Jacobian mixes the leaves)."""
    leaves = jax.tree_util.tree_leaves(tree)
    total = sum(jnp.sum(jnp.sin(x) * x) for x in leaves)
    return jnp.stack([total, sum(jnp.sum(x**2) for x in leaves), jnp.sum(jnp.tanh(leaves[1]))])


def _leafwise(packed_like: gradtx.Packed, layout: gradtx.Layout, lead: tuple) -> list:
    """Per original leaf (tree order), its part of a Packed whose arrays have ``lead`` axes
    in front (a Jacobian with respect to a packed tree)."""
    out: list[Any] = [None] * layout.num_leaves
    for g, buf in zip(layout.groups, packed_like.buffers):
        for i, o, s in zip(g.indices, g.offsets, g.shapes):
            n = int(np.prod(s, dtype=np.int64))
            out[i] = buf[..., o : o + n].reshape(lead + s)
    for i, x in zip(layout.big, packed_like.leaves):
        out[i] = x
    return out


@pytest.mark.parametrize("threshold", [None, 100], ids=["all_packed", "some_unpacked"])
def test_forward_mode_and_transpose_through_unpack(threshold):
    p = _params()
    t = jax.tree.map(jnp.cos, _params(3))
    packed, tangent = gradtx.pack(p, threshold=threshold), gradtx.pack(t, threshold=threshold)
    assert tangent.layout is packed.layout

    def g(q):
        return _f(gradtx.unpack(q))

    # jvp
    y, dy = jax.jit(lambda q, t: jax.jvp(g, (q,), (t,)))(packed, tangent)
    y_ref, dy_ref = jax.jit(lambda q, t: jax.jvp(_f, (q,), (t,)))(p, t)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    np.testing.assert_allclose(dy, dy_ref, rtol=1e-6)
    # jacfwd (and jacrev, for comparison), leaf by leaf
    jac_ref = jax.tree_util.tree_leaves(jax.jit(jax.jacfwd(_f))(p))
    for jac in (jax.jit(jax.jacfwd(g))(packed), jax.jit(jax.jacrev(g))(packed)):
        assert type(jac) is gradtx.Packed and jac.layout is packed.layout
        for a, b in zip(_leafwise(jac, packed.layout, (3,)), jac_ref):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # grad still works
    grad = jax.jit(jax.grad(lambda q: _loss(gradtx.unpack(q))))(packed)
    assert type(grad) is gradtx.Packed
    chex.assert_trees_all_close(
        gradtx.unpack(grad), jax.jit(jax.grad(_loss))(p), rtol=1e-6, atol=1e-7
    )
    # unpack is linear: its transpose packs a cotangent tree (a concatenation, exactly)
    (ct,) = jax.jit(jax.linear_transpose(gradtx.unpack, packed))(t)
    assert type(ct) is gradtx.Packed and ct.layout is packed.layout
    chex.assert_trees_all_equal(ct.buffers, tangent.buffers)
    chex.assert_trees_all_equal(ct.leaves, tangent.leaves)
    # and the jvp of unpack itself is unpack of the tangent
    _, du = jax.jit(lambda q, t: jax.jvp(gradtx.unpack, (q,), (t,)))(packed, tangent)
    chex.assert_trees_all_equal(du, gradtx.unpack(tangent))


# --- F17: interned layouts are freed ------------------------------------------------------------


def test_interned_layouts_are_freed_with_their_last_user():
    gc.collect()
    before = len(_packing._INTERNED)
    # 200 distinct layouts (distinct shapes; one buffer size, so one host-to-device copy shape)
    for i in range(200):
        q = gradtx.pack({"x": np.zeros(i + 1, np.float32), "y": np.zeros(300 - i, np.float32)})
        assert len(q.layout.groups) == 1 and q.layout.groups[0].size == 301
    assert len(_packing._INTERNED) >= before + 1
    del q
    gc.collect()
    assert len(_packing._INTERNED) == before

    # Equal layouts are still one object while one of them is alive.
    a = gradtx.pack({"x": np.zeros(3, np.float32), "y": np.zeros(4, np.float32)})
    b = gradtx.pack({"x": np.ones(3, np.float32), "y": np.ones(4, np.float32)})
    assert a.layout is b.layout
    del b
    gc.collect()
    c = gradtx.pack({"x": jnp.ones(3), "y": jnp.full(4, 2.0)})
    assert c.layout is a.layout and len(_packing._INTERNED) == before + 1
    del a, c
    gc.collect()
    assert len(_packing._INTERNED) == before
