"""The packed layout without touching the model: gradtx.PackedOptimizer (flax nnx),
gradtx.PackedTrainState (flax linen), gradtx.packed_loss and gradtx.pack_like (plain JAX).

Oracles: the per-leaf step of the same transformation (``nnx.Optimizer``, linen
``TrainState``, a plain ``tx.update`` loop): params and state equal to float32 rounding
(``rtol=RTOL, atol=ATOL``: clipping's global norm and LAMB's trust ratios sum in another
order). Also: one trace for repeated steps, checkpoints of the ordinary tree that restore into
the packed form (and into the per-leaf optimizer), shardings on the 8-CPU-device mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gradtx

nnx = pytest.importorskip("flax.nnx")
nn = pytest.importorskip("flax.linen")
serialization = pytest.importorskip("flax.serialization")
train_state = pytest.importorskip("flax.training.train_state")

RTOL, ATOL = 2e-5, 1e-6


class MLP(nnx.Module):
    def __init__(self, rngs, kernel_init=nnx.initializers.lecun_normal()):
        self.l1 = nnx.Linear(4, 8, rngs=rngs, kernel_init=kernel_init)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.norm(self.l1(x))))


def _kernels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "kernel" in jax.tree_util.keystr(path), params
    )


TXS = {
    "clip_adamw_schedule": lambda: gradtx.chain(
        gradtx.clip_by_global_norm(0.5),
        gradtx.adamw(gradtx.schedules.warmup_cosine_decay(0.0, 3e-2, 2, 8), weight_decay=0.1),
    ),
    # a mask of a stage (the weight decay on kernels only), given for the ordinary tree
    "adamw_decay_mask": lambda: gradtx.adamw(3e-2, weight_decay=0.1, mask=_kernels),
    "multi_steps": lambda: gradtx.MultiSteps(gradtx.adamw(3e-2), every_k_schedule=2),
    "lamb": lambda: gradtx.lamb(3e-2, weight_decay=0.01),
    # wrappers that select leaves by a tree of values: pack groups the leaves by them
    "masked": lambda: gradtx.masked(gradtx.adam(3e-2), _kernels),
    "groups_no_decay": lambda: gradtx.groups(
        gradtx.adamw(3e-2, weight_decay=0.1),
        [gradtx.group("no_decay", gradtx.no_decay, weight_decay=0.0, lr_mult=0.5)],
    ),
}
# per case, the pack threshold: 20 keeps the 32- and 24-element kernels as they are
THRESHOLDS = {"adamw_decay_mask": 20, "lamb": 20}

X = jax.random.normal(jax.random.key(1), (4, 6, 4))
Y = jax.random.normal(jax.random.key(2), (4, 6, 3))
TRACES: dict[str, int] = {}


def _loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


@nnx.jit
def nnx_step(model, optimizer, x, y):
    key = type(optimizer).__name__
    TRACES[key] = TRACES.get(key, 0) + 1
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss


def _close(a, b):
    def one(u, v):
        if isinstance(u, str):  # a tag of a saved state
            assert u == v
        else:
            np.testing.assert_allclose(u, v, rtol=RTOL, atol=ATOL)

    jax.tree.map(one, a, b)


def _pure(x):
    return nnx.as_pure(nnx.state(x))


@pytest.mark.parametrize("name", sorted(TXS))
def test_nnx_packed_optimizer_equals_nnx_optimizer(name):
    tx = TXS[name]()
    ref_model, model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    ref = nnx.Optimizer(ref_model, tx, wrt=nnx.Param)
    opt = gradtx.PackedOptimizer(
        model, tx, wrt=nnx.Param, threshold=THRESHOLDS.get(name, gradtx.DEFAULT_THRESHOLD)
    )
    assert isinstance(opt, nnx.Optimizer) and isinstance(opt, gradtx.PackedOptimizer)
    assert len(opt.layout.groups) >= 1
    if name in THRESHOLDS:
        assert len(opt.layout.big) == 2  # the kernels, kept as they are
    TRACES.clear()
    for x, y in zip(X, Y):
        nnx_step(ref_model, ref, x, y)
        nnx_step(model, opt, x, y)
    assert TRACES == {"Optimizer": 1, "PackedOptimizer": 1}  # one program for every step
    assert int(opt.step[...]) == int(ref.step[...]) == len(X)
    _close(_pure(model), _pure(ref_model))
    # the state of the ordinary tree is nnx.Optimizer's, leaf for leaf
    state, ref_state = opt.unpacked_state(), _pure(ref)
    if name in ("masked", "groups_no_decay"):  # nnx keeps None slots of masked-out leaves
        flat = dict(jax.tree_util.tree_leaves_with_path(state))
        ref_flat = dict(jax.tree_util.tree_leaves_with_path(ref_state))
        assert set(flat) == set(ref_flat)
        _close(list(flat.values()), [ref_flat[k] for k in flat])
        return
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    _close(state, ref_state)


def test_a_wrapper_mask_that_splits_a_buffer_is_refused_naming_its_leaves():
    # packed without the tx, the kernels and the biases share a buffer: masked cannot give
    # it one value, so it is refused, naming the leaves and the way out (pack with tx=)
    params = nnx.as_pure(nnx.state(MLP(nnx.Rngs(0)), nnx.Param))
    packed = gradtx.pack(params)
    with pytest.raises(gradtx.TransformError, match=r"one buffer.*kernel.*tx=tx"):
        gradtx.masked(gradtx.adam(3e-2), _kernels).init(packed)


def test_nnx_state_checkpoint_roundtrip_orbax_and_into_nnx_optimizer(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    tx = TXS["clip_adamw_schedule"]()
    model = MLP(nnx.Rngs(0))
    opt = gradtx.PackedOptimizer(model, tx, wrt=nnx.Param)
    for x, y in zip(X[:2], Y[:2]):
        nnx_step(model, opt, x, y)
    # the optimizer's own nnx.state holds the buffers; unpacked_state the ordinary tree
    assert "buffers" in str(jax.tree_util.tree_structure(nnx.state(opt)))
    ckpt = {"model": _pure(model), "optimizer": opt.unpacked_state()}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "ckpt", ckpt)
        ckptr.wait_until_finished()
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(tmp_path / "ckpt", jax.eval_shape(lambda: ckpt))

    model2 = MLP(nnx.Rngs(5))
    opt2 = gradtx.PackedOptimizer(model2, tx, wrt=nnx.Param)
    nnx.update(model2, restored["model"])
    opt2.load_unpacked_state(restored["optimizer"])
    assert opt2.layout is opt.layout
    ref_model = MLP(nnx.Rngs(7))
    ref = nnx.Optimizer(ref_model, tx, wrt=nnx.Param)  # the same checkpoint, per leaf
    nnx.update(ref_model, restored["model"])
    nnx.update(ref, restored["optimizer"])
    TRACES.clear()
    for x, y in zip(X[2:], Y[2:]):
        nnx_step(model, opt, x, y)
        nnx_step(model2, opt2, x, y)
        nnx_step(ref_model, ref, x, y)
    assert TRACES.get("PackedOptimizer", 0) == 0  # restored: no new program
    jax.tree.map(np.testing.assert_array_equal, _pure(model2), _pure(model))
    jax.tree.map(np.testing.assert_array_equal, _pure(opt2), _pure(opt))
    _close(_pure(ref_model), _pure(model))

    # msgpack of the pure dict, into a fresh optimizer
    data = serialization.to_bytes(nnx.to_pure_dict(opt.unpacked_state()))
    opt3 = gradtx.PackedOptimizer(MLP(nnx.Rngs(0)), tx, wrt=nnx.Param)
    opt3.load_unpacked_state(
        serialization.from_bytes(nnx.to_pure_dict(opt3.unpacked_state()), data)
    )
    jax.tree.map(np.testing.assert_array_equal, _pure(opt3), _pure(opt))


def test_nnx_shardings_survive_on_a_mesh():
    mesh = jax.make_mesh((8,), ("x",))
    tx = TXS["clip_adamw_schedule"]()
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "x"))
    rep = NamedSharding(mesh, P())
    with jax.set_mesh(mesh):
        model = MLP(nnx.Rngs(0), kernel_init=init)  # l1's kernel sharded by its annotation
        params = nnx.as_pure(nnx.state(model, nnx.Param))
        # the other params replicated on the mesh
        nnx.update(
            model,
            jax.tree.map(
                lambda x: x if len(x.sharding.device_set) > 1 else jax.device_put(x, rep), params
            ),
        )
        opt = gradtx.PackedOptimizer(model, tx, wrt=nnx.Param, threshold=None)
    spec_before = nnx.get_partition_spec(nnx.state(model))
    kernel_sharding = model.l1.kernel[...].sharding
    assert not kernel_sharding.is_fully_replicated
    assert len(opt.layout.big) == 1  # the sharded kernel is kept as it is
    assert opt.opt_state.adamw.knobs.mu.buffers[0][...].sharding.is_fully_replicated
    assert len(opt.opt_state.adamw.knobs.mu.buffers[0][...].sharding.device_set) == 8
    TRACES.clear()
    with jax.set_mesh(mesh):
        for x, y in zip(X[:2], Y[:2]):
            nnx_step(model, opt, x, y)
    assert TRACES == {"PackedOptimizer": 1}
    assert model.l1.kernel[...].sharding.is_equivalent_to(kernel_sharding, 2)
    assert model.l1.kernel.get_metadata()["out_sharding"] == (None, "x")
    for v in jax.tree.leaves(nnx.state(model.l2)):
        assert v.sharding.is_fully_replicated and len(v.sharding.device_set) == 8
    assert nnx.get_partition_spec(nnx.state(model)) == spec_before
    mu = opt.opt_state.adamw.knobs.mu
    assert mu.leaves[0][...].sharding.is_equivalent_to(kernel_sharding, 2)
    assert len(mu.buffers[0][...].sharding.device_set) == 8
    # a restore keeps the buffers replicated
    again = gradtx.pack_like(nnx.as_pure(opt.opt_state), gradtx.unpack(nnx.as_pure(opt.opt_state)))
    assert len(again.adamw.knobs.mu.buffers[0].sharding.device_set) == 8


class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(jnp.tanh(nn.Dense(8)(x)))


@jax.jit
def linen_step(state, x, y):
    TRACES[type(state).__name__] = TRACES.get(type(state).__name__, 0) + 1

    def loss_fn(params):
        return jnp.mean((state.apply_fn({"params": params}, x) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


def _linen(name):
    model, tx = Dense(), TXS[name]()
    params = model.init(jax.random.key(0), X[0])["params"]
    ref = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    state = gradtx.PackedTrainState.create(apply_fn=model.apply, params=params, tx=tx)
    return model, params, ref, state


def test_linen_packed_train_state_equals_train_state():
    name = "clip_adamw_schedule"
    _, params, ref, state = _linen(name)
    assert isinstance(state, train_state.TrainState) and isinstance(state.params, gradtx.Packed)
    TRACES.clear()
    for x, y in zip(X, Y):
        ref, _ = linen_step(ref, x, y)
        state, _ = linen_step(state, x, y)
    assert TRACES == {"TrainState": 1, "PackedTrainState": 1}
    assert int(state.step) == len(X)
    _close(gradtx.unpack(state.params), ref.params)
    _close(gradtx.unpack(state.opt_state), ref.opt_state)
    # ordinary-tree gradients are packed into the layout: the same step
    grads = jax.tree.map(jnp.ones_like, params)
    a = state.apply_gradients(grads=grads)
    b = state.apply_gradients(grads=gradtx.pack_like(state.params, grads))
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_linen_serialization_saves_the_ordinary_tree(tmp_path):
    _, params, ref, state = _linen("clip_adamw_schedule")
    for x, y in zip(X[:2], Y[:2]):
        ref, _ = linen_step(ref, x, y)
        state, _ = linen_step(state, x, y)
    saved = serialization.to_state_dict(state)
    assert jax.tree.structure(saved) == jax.tree.structure(serialization.to_state_dict(ref))
    _close(saved, serialization.to_state_dict(ref))

    template = gradtx.PackedTrainState.create(apply_fn=Dense().apply, params=params, tx=ref.tx)
    back = serialization.from_bytes(template, serialization.to_bytes(state))
    assert back.params.layout is state.params.layout and int(back.step) == 2
    jax.tree.map(
        np.testing.assert_array_equal,
        (back.params, back.opt_state),
        (state.params, state.opt_state),
    )
    # a TrainState's checkpoint restores into the packed form, and the other way round
    from_ref = serialization.from_bytes(template, serialization.to_bytes(ref))
    _close(gradtx.unpack(from_ref.params), ref.params)
    plain = train_state.TrainState.create(apply_fn=Dense().apply, params=params, tx=ref.tx)
    to_ref = serialization.from_bytes(plain, serialization.to_bytes(state))
    _close(to_ref.params, ref.params)
    # continuing from the restored state is the run that never stopped
    TRACES.clear()
    s1, _ = linen_step(state, X[2], Y[2])
    s2, _ = linen_step(back, X[2], Y[2])
    jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)

    # orbax: save the ordinary trees, pack the restored ones into the state's layout
    ocp = pytest.importorskip("orbax.checkpoint")
    ordinary = {"params": gradtx.unpack(state.params), "opt_state": gradtx.unpack(state.opt_state)}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "linen", ordinary)
        ckptr.wait_until_finished()
    with ocp.StandardCheckpointer() as ckptr:
        raw = ckptr.restore(tmp_path / "linen", jax.eval_shape(lambda: ordinary))
    again = template.replace(
        params=gradtx.pack_like(template.params, raw["params"]),
        opt_state=gradtx.pack_like(template.opt_state, raw["opt_state"]),
    )
    jax.tree.map(
        np.testing.assert_array_equal,
        (again.params, again.opt_state),
        (state.params, state.opt_state),
    )


def test_linen_slots_not_laid_out_like_params_are_saved_packed():
    params = {"w": jnp.ones((6, 5)), "b": jnp.zeros(5)}
    tx = gradtx.adafactor(1e-2, min_dim_size_to_factor=2)
    state = gradtx.PackedTrainState.create(apply_fn=None, params=params, tx=tx)
    state = state.replace(opt_state=jax.tree.map(lambda x: x + 1, state.opt_state))
    v_row = state.opt_state.knobs.v_row  # factored: not laid out like the params
    assert v_row.buffers[0].shape != state.params.buffers[0].shape
    saved = serialization.to_state_dict(state)
    assert "buffers" in saved["opt_state"]["knobs"]["v_row"]  # kept packed
    assert "w" in saved["params"]  # the params: the ordinary tree
    back = serialization.from_bytes(state, serialization.to_bytes(state))
    jax.tree.map(np.testing.assert_array_equal, back.opt_state, state.opt_state)


# --- plain JAX / equinox-like ---------------------------------------------------------------


class Module:  # an equinox-like module: array fields are children, the activation static
    def __init__(self, w, b, act):
        self.w, self.b, self.act = w, b, act

    def __call__(self, x):
        return self.act(x @ self.w + self.b[None, :])


jax.tree_util.register_pytree_with_keys(
    Module,
    lambda m: (((jax.tree_util.GetAttrKey("w"), m.w), (jax.tree_util.GetAttrKey("b"), m.b)), m.act),
    lambda act, ch: Module(*ch, act),
)


def test_packed_loss_plain_loop_equals_per_leaf():
    params = {"a": Module(jnp.ones((4, 3)) * 0.3, jnp.zeros(3), jnp.tanh), "s": jnp.ones(3)}

    @gradtx.packed_loss
    def loss(p, x, y):
        return jnp.mean((p["a"](x) * p["s"][None, :] - y) ** 2)

    tx = TXS["clip_adamw_schedule"]()
    packed = gradtx.pack(params, tx=tx)

    @jax.jit
    def step(p, s, x, y):
        value, g = jax.value_and_grad(loss)(p, x, y)
        u, s = tx.update(g, s, p)
        return gradtx.apply_updates(p, u), s, value

    p, s, q, r = packed, tx.init(packed), params, tx.init(params)
    for x, y in zip(X, Y):
        p, s, v1 = step(p, s, x, y)
        q, r, v2 = step(q, r, x, y)  # the same loss on the ordinary tree
        np.testing.assert_allclose(v1, v2, rtol=RTOL)
    assert isinstance(p, gradtx.Packed) and step._cache_size() == 2
    out = gradtx.unpack(p)
    assert isinstance(out["a"], Module) and out["a"].act is jnp.tanh
    _close(out, q)
    _close(gradtx.unpack(s), r)
    # pack_like inverts unpack on the state, with the same layouts
    again = gradtx.pack_like(s, gradtx.unpack(s))
    jax.tree.map(np.testing.assert_array_equal, again, s)
    assert again[1].knobs.mu.layout is s[1].knobs.mu.layout


def test_pack_like_errors_name_the_leaf():
    packed = gradtx.pack({"b": jnp.zeros(3), "w": jnp.ones((2, 2))})
    with pytest.raises(gradtx.TransformError, match=r"gradtx.pack_like.*missing \[\"\['w'\]\"\]"):
        gradtx.pack_like(packed, {"b": jnp.zeros(3)})
    with pytest.raises(gradtx.TransformError, match=r"gradtx.pack_like: the leaf \['w'\].*\[4\]"):
        gradtx.pack_like(packed, {"b": jnp.zeros(3), "w": jnp.ones(4)})
    with pytest.raises(gradtx.TransformError, match=r"\['b'\] is int32"):
        gradtx.pack_like(packed, {"b": jnp.zeros(3, jnp.int32), "w": jnp.ones((2, 2))})
    other = gradtx.pack({"b": jnp.zeros(3), "w": jnp.ones((2, 2))}, threshold=3)
    with pytest.raises(gradtx.TransformError, match="gradtx.pack_like: the packed value"):
        gradtx.pack_like(packed, other)
