"""Optimizer state through checkpoints: flax.serialization (msgpack) and orbax-checkpoint.

Types come back (``gradtx.State``, nested for chains) and training continued after a restore
is bit-identical to training that never stopped.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
from gradtx._interop.checkpoint import BUILDER_KEY

serialization = pytest.importorskip("flax.serialization")
ocp = pytest.importorskip("orbax.checkpoint")

TOTAL, SPLIT = 12, 5


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "dense": {"kernel": jax.random.normal(k1, (4, 3)), "bias": jnp.zeros(3)},
        "scale": jax.random.normal(k2, (3,)),
    }


def _tx():
    sched = gradtx.schedules.warmup_cosine_decay(0.0, 1e-1, warmup_steps=3, decay_steps=TOTAL)
    return gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.adamw(
            sched,
            weight_decay=1e-2,
            mask=lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params),
        ),
    )


def _loss(params, x):
    h = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"][None])
    return jnp.sum((h * params["scale"][None] - 1.0) ** 2)


def _make_step(tx):
    @jax.jit
    def step(params, state, x):
        grads = jax.grad(_loss)(params, x)
        updates, state = tx.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state

    return step


def _batch(i):
    return jax.random.normal(jax.random.fold_in(jax.random.key(1), i), (5, 4))


def _train(step, params, state, start, stop):
    for i in range(start, stop):
        params, state = step(params, state, _batch(i))
    return params, state


def _assert_bit_identical(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), (x, y)


def _assert_state_types(state):
    assert type(state) is gradtx.State
    assert list(state) == ["clip_by_global_norm", "adamw"]
    assert type(state.clip_by_global_norm) is gradtx.State
    assert type(state.adamw) is gradtx.State
    assert type(state.adamw.knobs) is gradtx.State
    assert type(state.adamw.learning_rate) is gradtx.State
    assert list(state.adamw.knobs) == ["count", "mu", "nu"]


@pytest.fixture(scope="module")
def reference():
    """Uninterrupted training and the state at the split point."""
    tx = _tx()
    step = _make_step(tx)
    params = _params()
    p_mid, s_mid = _train(step, params, tx.init(params), 0, SPLIT)
    p_end, s_end = _train(step, p_mid, s_mid, SPLIT, TOTAL)
    return tx, step, (p_mid, s_mid), (p_end, s_end)


def test_msgpack_roundtrip_and_continuation(reference, tmp_path):
    tx, step, (p_mid, s_mid), (p_end, s_end) = reference
    path = tmp_path / "ckpt.msgpack"
    path.write_bytes(serialization.to_bytes({"params": p_mid, "opt_state": s_mid}))

    # A fresh process would build the target from the same code: init on the same params.
    target = {"params": _params(), "opt_state": tx.init(_params())}
    restored = serialization.from_bytes(target, path.read_bytes())
    _assert_state_types(restored["opt_state"])
    _assert_bit_identical(restored, {"params": p_mid, "opt_state": s_mid})
    assert int(restored["opt_state"].adamw.learning_rate.count) == SPLIT

    p, s = _train(step, restored["params"], restored["opt_state"], SPLIT, TOTAL)
    _assert_bit_identical((p, s), (p_end, s_end))


def test_msgpack_state_dict_is_named(reference):
    _, _, (_, s_mid), _ = reference
    sd = serialization.to_state_dict(s_mid)
    assert isinstance(sd, dict)
    assert set(sd) == {"clip_by_global_norm", "adamw"}
    # the entries, plus the record of what built the optimizer's state (checked on restore)
    assert set(sd["adamw"]) == {"knobs", "add_decayed_weights", "learning_rate", BUILDER_KEY}
    assert sd["adamw"][BUILDER_KEY] == "adamw(Ema, AdamScale)"
    assert set(sd["adamw"]["knobs"]["mu"]) == {"dense", "scale"}


def test_msgpack_mismatch_names_entries(reference):
    _, _, (p_mid, s_mid), _ = reference
    blob = serialization.to_bytes(s_mid)
    with pytest.raises(ValueError, match="missing entries"):
        serialization.from_bytes(gradtx.adam(1e-3).init(p_mid), blob)


def test_register_flax_serialization_is_idempotent(reference):
    _, _, (_, s_mid), _ = reference
    gradtx.register_flax_serialization()
    gradtx.register_flax_serialization()
    assert serialization.from_bytes(s_mid, serialization.to_bytes(s_mid)) == s_mid


def test_flax_train_state_roundtrip(reference):
    from flax.training import train_state

    tx, step, (p_mid, s_mid), _ = reference
    ts = train_state.TrainState(step=SPLIT, apply_fn=None, params=p_mid, tx=tx, opt_state=s_mid)
    target = train_state.TrainState.create(apply_fn=None, params=_params(), tx=tx)
    restored = serialization.from_bytes(target, serialization.to_bytes(ts))
    _assert_state_types(restored.opt_state)
    _assert_bit_identical(restored.opt_state, s_mid)
    assert restored.tx is tx


def test_registration_without_user_call():
    """Importing flax after gradtx is enough: the first state built registers State."""
    flax_after = (
        "import sys, gradtx, jax.numpy as jnp\n"
        "from gradtx._core import flax_hook\n"
        "gradtx.adam(1e-3).init({'w': jnp.ones(2)})\n"
        "assert 'flax' not in sys.modules, 'gradtx imported flax'\n"
        "assert not flax_hook.registered\n"
        "from flax import serialization\n"
        "s = gradtx.adam(1e-3).init({'w': jnp.ones(2)})\n"
        "r = serialization.from_bytes(s, serialization.to_bytes(s))\n"
        "assert type(r.knobs) is gradtx.State, type(r.knobs)\n"
    )
    flax_before = (
        "from flax import serialization\n"
        "import gradtx\n"
        "from gradtx._core import flax_hook\n"
        "assert flax_hook.registered\n"
    )
    for code in (flax_after, flax_before):
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_orbax_roundtrip_and_continuation(reference, tmp_path):
    tx, step, (p_mid, s_mid), (p_end, s_end) = reference
    path = tmp_path / "orbax_ckpt"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, {"params": p_mid, "opt_state": s_mid})
        ckptr.wait_until_finished()

    abstract = jax.eval_shape(lambda: {"params": _params(), "opt_state": tx.init(_params())})
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, abstract)
    _assert_state_types(restored["opt_state"])
    _assert_bit_identical(restored, {"params": p_mid, "opt_state": s_mid})

    p, s = _train(step, restored["params"], restored["opt_state"], SPLIT, TOTAL)
    _assert_bit_identical((p, s), (p_end, s_end))


def test_orbax_without_target_gives_named_dicts(reference, tmp_path):
    _, _, (_, s_mid), _ = reference
    path = tmp_path / "orbax_raw"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, {"opt_state": s_mid})
        ckptr.wait_until_finished()
    with ocp.StandardCheckpointer() as ckptr:
        raw = ckptr.restore(path)
    # Without a target orbax cannot know the types, but the entries keep their names.
    knobs = raw["opt_state"]["adamw"]["knobs"]
    assert set(knobs) == {"count", "mu", "nu"}
    assert int(knobs["count"]) == SPLIT


def test_nnx_optimizer_orbax_continuation(tmp_path):
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return jnp.tanh(self.dense(x))

    def fresh():
        model = Model(nnx.Rngs(0))
        return model, nnx.Optimizer(model, _tx(), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x):
        grads = nnx.grad(lambda m: jnp.sum((m(x) - 1.0) ** 2))(model)
        opt.update(model, grads)

    model, opt = fresh()
    for i in range(SPLIT):
        step(model, opt, _batch(i))
    path = tmp_path / "nnx_ckpt"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, {"model": nnx.state(model), "opt": nnx.state(opt)})
        ckptr.wait_until_finished()
    for i in range(SPLIT, TOTAL):
        step(model, opt, _batch(i))

    model2, opt2 = fresh()
    abstract = jax.eval_shape(lambda: {"model": nnx.state(model2), "opt": nnx.state(opt2)})
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, abstract)
    nnx.update(model2, restored["model"])
    nnx.update(opt2, restored["opt"])
    assert type(opt2.opt_state) is gradtx.State
    assert type(opt2.opt_state.adamw.knobs) is gradtx.State
    for i in range(SPLIT, TOTAL):
        step(model2, opt2, _batch(i))
    _assert_bit_identical(nnx.state(model2), nnx.state(model))
    _assert_bit_identical(nnx.state(opt2), nnx.state(opt))
