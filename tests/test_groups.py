"""Parameter groups and ``explain``: torch's param groups on the same gradients, an explicit
partition of separately built optimizers, the three ways to select leaves, coverage errors,
frozen leaves without state, the no-decay rule on a flax model, and the table."""

from __future__ import annotations

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization
from flax.core import FrozenDict

import gradtx

torch = pytest.importorskip("torch")

PARAMS = {
    "dense": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "bias": jnp.full(4, 0.3)},
    "head": {"kernel": jnp.linspace(0.5, -0.5, 8).reshape(4, 2), "bias": jnp.zeros(2)},
}


def _grads(i: int, params=PARAMS):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(i), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _run(tx, params, steps=8):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(steps):
        u, state = step(_grads(i, params), state, params)
        params = gradtx.apply_updates(params, u)
    return params, state


def _torch_matches(opt, tp, params, ours, steps=10):
    """Steps ``opt`` (over the tensors ``tp``) on the gradients ``_run`` used; then compares."""
    for i in range(steps):
        g = _grads(i, params)
        for k in tp:
            for n in tp[k]:
                tp[k][n].grad = torch.tensor(np.asarray(g[k][n]))
        opt.step()
    for k in tp:
        for n in tp[k]:
            got = tp[k][n].detach().numpy()
            np.testing.assert_allclose(np.asarray(ours[k][n]), got, rtol=1e-10, atol=1e-12)


def test_equal_to_torch_param_groups():
    """torch.optim.AdamW with two groups (lr, weight decay per group) against groups() on the
    same gradients; float64 on both sides, rtol 1e-10 (the same formula, rounding only)."""
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), PARAMS)
        tx = gradtx.groups(
            gradtx.adamw(1e-2, weight_decay=0.1, eps=1e-8),
            [gradtx.group("bias", r"bias$", lr_mult=0.5, weight_decay=0.0)],
        )
        ours, _ = _run(tx, params, steps=10)
        tp = {k: {n: torch.tensor(np.asarray(v), requires_grad=True) for n, v in d.items()}
              for k, d in params.items()}  # fmt: skip
        decay = [tp[k]["kernel"] for k in tp]
        no_decay = [tp[k]["bias"] for k in tp]
        opt = torch.optim.AdamW(
            [{"params": decay}, {"params": no_decay, "lr": 5e-3, "weight_decay": 0.0}],
            lr=1e-2, weight_decay=0.1, eps=1e-8,
        )  # fmt: skip
        _torch_matches(opt, tp, params, ours)


def test_equal_to_torch_sgd_momentum_groups():
    """torch SGD with momentum, per-group lr and weight decay (coupled L2: torch adds λθ to
    the gradient before momentum); float64, rtol 1e-10."""
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), PARAMS)
        base = gradtx.chain(gradtx.add_decayed_weights(1e-2), gradtx.sgd(0.1, momentum=0.9))
        tx = gradtx.groups(
            base, [gradtx.group("head", r"^head/", lr_mult=3.0, weight_decay=0.0)], rest="body"
        )
        ours, _ = _run(tx, params, steps=10)
        tp = {k: {n: torch.tensor(np.asarray(v), requires_grad=True) for n, v in d.items()}
              for k, d in params.items()}  # fmt: skip
        opt = torch.optim.SGD(
            [{"params": list(tp["dense"].values())},
             {"params": list(tp["head"].values()), "lr": 0.3, "weight_decay": 0.0}],
            lr=0.1, momentum=0.9, weight_decay=1e-2,
        )  # fmt: skip
        _torch_matches(opt, tp, params, ours)


def test_equal_to_an_explicit_partition():
    """groups() is the partition of optimizers one would build by hand: bit-identical."""
    sched = gradtx.schedules.warmup_cosine_decay(0.0, 1e-2, 3, 20)
    tx = gradtx.groups(
        gradtx.adamw(sched, weight_decay=0.05),
        [
            gradtx.group("bias", r"bias$", weight_decay=0.0, b2=0.95),
            gradtx.group("head", r"^head/kernel$", optimizer=gradtx.sgd(0.05, momentum=0.9)),
        ],
    )
    labels = {
        "dense": {"kernel": "default", "bias": "bias"},
        "head": {"kernel": "head", "bias": "bias"},
    }
    ref = gradtx.partition(
        {
            "bias": gradtx.adamw(sched, weight_decay=0.0, b2=0.95),
            "head": gradtx.sgd(0.05, momentum=0.9),
            "default": gradtx.adamw(sched, weight_decay=0.05),
        },
        labels,
    )
    a, sa = _run(tx, PARAMS)
    b, sb = _run(ref, PARAMS)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert sorted(sa.inner_states) == sorted(sb.inner_states)


def test_lr_mult_scales_a_schedule_and_readers_see_it():
    sched = gradtx.schedules.linear(1e-2, 1e-3, 10)
    tx = gradtx.groups(gradtx.adam(sched), [gradtx.group("head", r"^head/", lr_mult=4.0)])
    state = tx.init(PARAMS)
    step = jax.jit(tx.update)
    for i in range(5):
        lr = gradtx.current_learning_rate(tx, state)
        np.testing.assert_allclose(float(lr["head"]), 4.0 * float(sched(i)), rtol=1e-6)
        np.testing.assert_allclose(float(lr["default"]), float(sched(i)), rtol=1e-6)
        _, state = step(_grads(i), state, PARAMS)


@pytest.mark.parametrize("kind", ["dict", "frozendict", "function"])
def test_label_trees(kind):
    labels = {"dense": "body", "head": {"kernel": "head", "bias": "body"}}  # a prefix tree
    given = {"dict": labels, "frozendict": FrozenDict(labels), "function": lambda p: labels}[kind]
    tx = gradtx.groups(
        gradtx.sgd(0.1),
        [gradtx.group("body"), gradtx.group("head", lr_mult=10.0)],
        labels=given,
        rest=None,
    )
    u, _ = tx.update(PARAMS, tx.init(PARAMS))
    np.testing.assert_allclose(
        np.asarray(u["head"]["kernel"]), -1.0 * np.asarray(PARAMS["head"]["kernel"]), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(u["head"]["bias"]), -0.1 * np.asarray(PARAMS["head"]["bias"])
    )
    np.testing.assert_allclose(
        np.asarray(u["dense"]["bias"]), -0.1 * np.asarray(PARAMS["dense"]["bias"]), rtol=1e-6
    )


def test_nnx_state_and_trees_with_none():
    model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.LayerNorm(4, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    tx = gradtx.groups(
        gradtx.adamw(1e-3, weight_decay=0.1),
        [gradtx.group("nd", gradtx.no_decay, weight_decay=0.0)],
    )
    rows = {r.path: r for r in gradtx.explain(tx, params).rows}
    assert (
        rows["layers/0/kernel"].group == "default" and rows["layers/0/kernel"].weight_decay == 0.1
    )
    assert {rows[p].group for p in ("layers/0/bias", "layers/1/scale", "layers/1/bias")} == {"nd"}
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train(model, opt):
        grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3))) ** 2))(model)
        opt.update(model, grads)

    train(model, opt)
    # a tree with None leaves (as equinox modules have): None passes through, needs no group
    tree = {"w": jnp.ones((2, 2)), "skip": None, "b": jnp.ones(2)}
    tx2 = gradtx.groups(gradtx.sgd(1.0), [gradtx.group("b", r"^b$", frozen=True)], rest="w")
    u, _ = tx2.update(tree, tx2.init(tree))
    assert u["skip"] is None and float(jnp.abs(u["b"]).sum()) == 0.0


def test_coverage_errors_list_the_paths():
    tx = gradtx.groups(gradtx.sgd(0.1), [gradtx.group("k", r"kernel")], rest=None)
    with pytest.raises(gradtx.TransformError, match=r"in no group: dense/bias, head/bias"):
        tx.init(PARAMS)
    tx = gradtx.groups(
        gradtx.sgd(0.1), [gradtx.group("k", r"kernel"), gradtx.group("h", r"^head/")]
    )
    with pytest.raises(gradtx.TransformError, match=r"more than one group: head/kernel \(k, h\)"):
        tx.init(PARAMS)
    tx = gradtx.groups(
        gradtx.sgd(0.1),
        [gradtx.group("a"), gradtx.group("b")],
        labels={"dense": "a", "head": None},
        rest=None,
    )
    with pytest.raises(gradtx.TransformError, match=r"no group to: head/bias, head/kernel"):
        tx.init(PARAMS)
    with pytest.raises(gradtx.TransformError, match=r"'c' at"):
        gradtx.groups(
            gradtx.sgd(0.1), [gradtx.group("a")], labels={"dense": "a", "head": "c"}
        ).init(PARAMS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="gradtx.group 'x': match"):
        gradtx.group("x", "(")
    with pytest.raises(ValueError, match="lr_mult"):
        gradtx.group("x", "a", lr_mult=-1.0)
    with pytest.raises(ValueError, match="unique"):
        gradtx.groups(gradtx.sgd(0.1), [gradtx.group("a", "a"), gradtx.group("a", "b")])
    with pytest.raises(TypeError, match="no hyperparameter \\['b2'\\]"):
        gradtx.groups(gradtx.sgd(0.1), [gradtx.group("a", "a", b2=0.9)])
    with pytest.raises(TypeError, match="optax optimizer"):
        gradtx.groups(optax.adamw(1e-3), [gradtx.group("a", "a", weight_decay=0.0)])
    with pytest.raises(TypeError, match="labels or each group's match"):
        gradtx.groups(gradtx.sgd(0.1), [gradtx.group("a", "a")], labels={"dense": "a", "head": "a"})


def test_frozen_groups_keep_no_state_and_get_exact_zeros():
    tx = gradtx.groups(gradtx.adam(1e-2), [gradtx.group("frozen", r"^dense/", frozen=True)])
    params, state = _run(tx, PARAMS, steps=3)
    for n in ("kernel", "bias"):
        np.testing.assert_array_equal(
            np.asarray(params["dense"][n]), np.asarray(PARAMS["dense"][n])
        )
    assert jax.tree_util.tree_leaves(state.inner_states["frozen"]) == []
    adam_leaves = jax.tree_util.tree_leaves(state.inner_states["default"])
    assert sum(x.size for x in adam_leaves) == 2 * (8 + 2) + 1  # mu, nu of head; one count


def test_no_decay_rule_on_a_linen_model():
    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = linen.Embed(10, 4, name="embed")(x)
            x = linen.LayerNorm(name="ln")(x)
            return linen.Dense(3, name="out")(x)

    params = Net().init(jax.random.PRNGKey(0), jnp.zeros((2,), jnp.int32))["params"]
    tx = gradtx.groups(
        gradtx.adamw(1e-3, weight_decay=0.1),
        [gradtx.group("nd", gradtx.no_decay, weight_decay=0.0)],
    )
    rows = {r.path: (r.group, r.weight_decay) for r in gradtx.explain(tx, params).rows}
    assert rows == {
        "embed/embedding": ("nd", 0.0),
        "ln/bias": ("nd", 0.0),
        "ln/scale": ("nd", 0.0),
        "out/bias": ("nd", 0.0),
        "out/kernel": ("default", 0.1),
    }


def test_explain_bytes_equal_eval_shape():
    sched = gradtx.schedules.linear(1e-2, 1e-3, 10)
    tx = gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        gradtx.groups(
            gradtx.adamw(
                sched,
                weight_decay=0.1,
                mask=lambda p: jax.tree_util.tree_map(lambda x: x.ndim > 1, p),
            ),
            [
                gradtx.group("frozen", r"^dense/bias$", frozen=True),
                gradtx.group("head", r"^head/", optimizer=gradtx.sgd(0.1, momentum=0.9)),
            ],
        ),
    )
    ex = gradtx.explain(tx, PARAMS)
    rows = {r.path: r for r in ex.rows}
    assert rows["dense/bias"].frozen and rows["dense/bias"].state_bytes == 0
    assert (
        rows["dense/kernel"].state_bytes == 2 * 12 * 4 and rows["dense/kernel"].weight_decay == 0.1
    )
    assert rows["head/kernel"].optimizer == "sgd" and rows["head/kernel"].state_bytes == 8 * 4
    assert rows["head/kernel"].learning_rate == pytest.approx(0.1)
    assert str(rows["dense/kernel"].learning_rate).startswith("schedule (0.01")
    inner = tx.stages[1]
    total = sum(
        x.size * x.dtype.itemsize
        for x in jax.tree_util.tree_leaves(jax.eval_shape(inner.init, PARAMS))
    )
    assert ex.state_bytes == total
    assert ex.by_group()["head"]["leaves"] == 2
    assert "head/kernel" in str(ex)
    # no groups: one group "all"
    ex = gradtx.explain(gradtx.adam(1e-3), PARAMS)
    assert {r.group for r in ex.rows} == {"all"} and ex.overhead["all"] == 4


def test_kit_jit_checkpoint_and_live():
    tx = gradtx.groups(
        gradtx.adamw(1e-3, weight_decay=0.1),
        [
            gradtx.group("nd", gradtx.no_decay, weight_decay=0.0),
            gradtx.group("head", r"^head/kernel$", lr_mult=2.0),
        ],
    )
    # the kit runs on groups in tests/test_conformance.py (tests/kit_cases.py)
    assert tx == gradtx.groups(
        gradtx.adamw(1e-3, weight_decay=0.1),
        [
            gradtx.group("nd", gradtx.no_decay, weight_decay=0.0),
            gradtx.group("head", r"^head/kernel$", lr_mult=2.0),
        ],
    )
    assert hash(tx) == hash(
        gradtx.groups(
            gradtx.adamw(1e-3, weight_decay=0.1),
            [
                gradtx.group("nd", gradtx.no_decay, weight_decay=0.0),
                gradtx.group("head", r"^head/kernel$", lr_mult=2.0),
            ],
        )
    )
    assert tx != gradtx.groups(
        gradtx.adamw(1e-3, weight_decay=0.1), [gradtx.group("nd", gradtx.no_decay)]
    )
    traces = []

    @jax.jit
    def step(g, s, p):
        traces.append(1)
        return tx.update(g, s, p)

    state = tx.init(PARAMS)
    for i in range(3):
        _, state = step(_grads(i), state, PARAMS)
    assert len(traces) == 1
    restored = serialization.from_bytes(tx.init(PARAMS), serialization.to_bytes(state))
    a, _ = step(_grads(7), state, PARAMS)
    b, _ = step(_grads(7), restored, PARAMS)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # live: each group's hyperparameters are names of their own
    lt = gradtx.live(tx)
    ls = gradtx.set_hyperparams(lt.init(PARAMS), **{"head.learning_rate": 5e-3})
    assert float(gradtx.current_learning_rate(lt, ls)["head"]) == pytest.approx(5e-3)


def test_optax_base_with_lr_mult():
    """An optax base: lr_mult is a scale after it (rtol 1e-6: the same float32 ops reordered)."""
    tx = gradtx.groups(optax.sgd(0.1, momentum=0.9), [gradtx.group("head", r"^head/", lr_mult=2.0)])
    ref = optax.multi_transform(
        {"head": optax.sgd(0.2, momentum=0.9), "default": optax.sgd(0.1, momentum=0.9)},
        {"dense": "default", "head": "head"},
    )
    with jax.numpy_dtype_promotion("standard"):
        a, _ = _run(tx, PARAMS, steps=4)
        b, _ = _run(ref, PARAMS, steps=4)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)
