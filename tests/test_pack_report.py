"""``gradtx.pack_report``: which leaves ``pack`` packs and why, the buffers, the step estimate;
and the per-platform threshold ``pack(threshold="auto")`` chooses.

The report follows ``pack``'s rules without packing, so every test checks it against the
``Layout`` that ``pack`` itself builds from the same arguments (the oracle), and the pass
estimate against a count made here from that layout by the documented model.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gradtx
from gradtx._packing import pack as pack_mod

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _params() -> dict:
    return {
        "big": jnp.ones((40, 30)),  # 1,200 elements
        "blocks": [{"w": jnp.ones((4, 5)), "b": jnp.zeros(5)} for _ in range(3)],
        "half": jnp.ones((6,), jnp.bfloat16),
        "step": jnp.zeros((), jnp.int32),
        "flag": jnp.zeros((2,), bool),
        "gone": None,
    }


def _decay_mask(tree: dict) -> dict:
    """Decay on matrices only: the biases and the bf16 vector go to other buffers."""
    return jax.tree.map(lambda x: x is not None and x.ndim > 1, tree, is_leaf=lambda x: x is None)


def _tx() -> gradtx.GradientTransformation:
    return gradtx.chain(
        gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-3, weight_decay=0.1, mask=_decay_mask)
    )


def _check_against_layout(report: gradtx.PackReport, layout: gradtx.Layout) -> None:
    """Leaf by leaf and buffer by buffer, the report says what ``pack`` did."""
    assert [leaf.path for leaf in report.leaves] == list(layout.paths)
    assert len(report.buffers) == len(layout.groups)
    for b, (plan, group) in enumerate(zip(report.buffers, layout.groups)):
        assert (plan.dtype, plan.leaves, plan.elements) == (
            group.dtype,
            len(group.indices),
            group.size,
        )
        assert plan.shapes == len(set(group.shapes))
        assert [i for i, leaf in enumerate(report.leaves) if leaf.buffer == b] == sorted(
            group.indices
        )
    assert [i for i, leaf in enumerate(report.leaves) if not leaf.packed] == [i for i in layout.big]


def test_report_says_which_leaves_are_packed_and_why():
    params, tx = _params(), _tx()
    report = gradtx.pack_report(params, tx=tx, threshold=100)
    _check_against_layout(report, gradtx.pack(params, tx=tx, threshold=100).layout)
    by_path = {leaf.path: leaf for leaf in report.leaves}
    assert by_path["['big']"].rule == "threshold" and not by_path["['big']"].packed
    assert by_path["['big']"].reason == "size 1,200 > threshold 100"
    assert by_path["['blocks'][0]['w']"].reason == "size 20 <= threshold 100"
    assert (by_path["['step']"].rule, by_path["['step']"].reason) == (
        "dtype",
        "integer dtype int32",
    )
    assert by_path["['flag']"].reason == "boolean dtype bool"
    assert by_path["['gone']"].rule == "none"
    # three groups: float32 decayed (kernels), float32 not decayed (biases), bfloat16
    kernels = {by_path[f"['blocks'][{i}]['w']"].buffer for i in range(3)}
    biases = {by_path[f"['blocks'][{i}]['b']"].buffer for i in range(3)}
    assert len(kernels) == len(biases) == 1 and kernels != biases
    masks = {b.masks for b in report.buffers}
    assert masks == {(("add_decayed_weights", True),), (("add_decayed_weights", False),)}
    assert {b.dtype for b in report.buffers} == {"float32", "bfloat16"}
    assert report.reasons() == {
        "kept by threshold": 1,
        "packed by threshold": 7,
        "kept by dtype": 2,
        "kept by none": 1,
    }
    text = str(report)
    assert "7 of 11 leaves into 3 buffer(s), threshold 100" in text
    assert "add_decayed_weights=False" in text and "['blocks'][2]['b']" in text


def test_pass_estimate_follows_the_layout():
    # clip_by_global_norm has a global reduction: 2 passes per array (reduce, fused update)
    params, tx = _params(), _tx()
    layout = gradtx.pack(params, tx=tx, threshold=100).layout
    report = gradtx.pack_report(params, tx=tx, threshold=100)
    leaves = jax.tree.leaves(params, is_leaf=lambda x: x is None)
    floats = [
        i for i, x in enumerate(leaves) if x is not None and jnp.issubdtype(x.dtype, jnp.floating)
    ]
    kept = [i for i in layout.big if i in floats]
    assert report.passes_per_leaf == 2 * len(floats) == 16
    assert report.passes_packed == 2 * (len(layout.groups) + len(kept)) == 8
    # a non-elementwise stage runs once per stack of equal shapes: adafactor's factored
    # moments (one pass per stack) + the learning rate (one fused pass per buffer)
    tree = {"a": [jnp.ones((4, 4))] * 3, "b": [jnp.ones(4)] * 2, "c": jnp.ones((4, 4))}
    ada = gradtx.adafactor(1e-2)
    lay = gradtx.pack(tree, threshold=None).layout
    (group,) = lay.groups
    stacks = 1 + sum(s != t for s, t in zip(group.shapes, group.shapes[1:]))
    assert stacks == 2  # pack put the four 4x4 leaves next to each other
    rep = gradtx.pack_report(tree, tx=ada, threshold=None)
    assert rep.passes_packed == stacks + 1
    assert rep.passes_per_leaf == 2 * 6
    # leafwise (trust ratio): fused, plus one segment reduction per buffer
    assert gradtx.pack_report(tree, tx=gradtx.lamb(1e-2), threshold=None).passes_packed == 2
    assert gradtx.pack_report(tree, threshold=None).passes_packed == 0  # no tx, no estimate


def test_include_overrides_the_threshold():
    params, tx = _params(), _tx()
    include = lambda path, leaf: "blocks" in path  # noqa: E731
    report = gradtx.pack_report(params, include=include)
    _check_against_layout(report, gradtx.pack(params, include=include).layout)
    assert {leaf.reason for leaf in report.leaves if leaf.rule == "include"} == {
        "include() is True",
        "include() is False",
    }
    assert len(report.buffers) == 1
    # with tx=, kernels (decayed) and biases (not) go to two buffers, as pack(tx=tx) does
    masked = gradtx.pack_report(params, include=include, tx=tx)
    _check_against_layout(masked, gradtx.pack(params, include=include, tx=tx).layout)
    assert len(masked.buffers) == 2
    assert masked.passes_packed == 2 * (2 + 2)  # two buffers, two float leaves kept ("big", "half")


def test_sharded_and_replicated_leaves():
    mesh = jax.make_mesh((8,), ("x",))
    rep, row = NamedSharding(mesh, P()), NamedSharding(mesh, P("x"))
    params = {
        "w": jax.device_put(jnp.ones((64, 8)), row),
        "b": jax.device_put(jnp.ones((8,)), rep),
        "c": jnp.ones(3),
    }
    report = gradtx.pack_report(params, threshold=None)
    _check_against_layout(report, gradtx.pack(params, threshold=None).layout)
    by_path = {leaf.path: leaf for leaf in report.leaves}
    assert by_path["['w']"].rule == "sharded" and not by_path["['w']"].packed
    assert {b.placement for b in report.buffers} == {"replicated on 8", "default device"}
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    assert gradtx.pack_report(abstract, threshold=None).leaves[2].rule == "sharded"


def test_auto_threshold_per_platform(monkeypatch):
    assert pack_mod.auto_threshold("cpu") == pack_mod.THRESHOLDS["cpu"]
    assert pack_mod.auto_threshold("CUDA") == pack_mod.THRESHOLDS["gpu"]
    assert pack_mod.auto_threshold("tpu") == gradtx.DEFAULT_THRESHOLD
    assert pack_mod.auto_threshold("some-new-chip") == gradtx.DEFAULT_THRESHOLD
    assert pack_mod.auto_threshold() == pack_mod.THRESHOLDS[jax.default_backend()]
    monkeypatch.setitem(pack_mod.THRESHOLDS, "cpu", 5)
    monkeypatch.setitem(pack_mod.THRESHOLDS, "gpu", 6)
    tree = {"five": jnp.ones(5), "six": jnp.ones(6)}
    # concrete params: the platform of their devices (cpu), whatever the default device
    fake = types.SimpleNamespace(platform="gpu")
    real = pack_mod._default_place()
    monkeypatch.setattr(pack_mod, "_default_place", lambda: (fake, real[1]))
    assert gradtx.pack(tree).layout.big == (1,)
    assert gradtx.pack_report(tree).threshold == 5
    # traced params (pack inside jit): the default device's platform, here "gpu"
    traced = jax.eval_shape(lambda t: gradtx.pack(t), tree)
    assert traced.layout.big == ()
    assert gradtx.pack_report(tree, backend="gpu").threshold == 6
    assert gradtx.pack(tree, threshold=5).layout.big == (1,)  # an int is taken as it is
    with pytest.raises(ValueError, match="gradtx.pack: threshold"):
        gradtx.pack(tree, threshold="fast")


@pytest.fixture
def model_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", ["model_bench.py", "--quick"])
    return importlib.import_module("model_bench")


def test_model_bench_builds_its_models(model_bench):
    # every model of the benchmark builds in --quick sizes, and its whole tree packs
    zoo = importlib.import_module("model_zoo")
    tx = model_bench.chains()[1]
    for name, build in zoo.MODELS.items():  # shapes only: flax's initialisers stay traced
        params = jax.eval_shape(lambda build=build: build(True).params)
        report = gradtx.pack_report(params, tx=tx)
        assert report.num_packed == len(jax.tree.leaves(params)) > 10, name
    # three packed steps of the smallest model run and lower its loss (the benchmark's models
    # broadcast biases, which the suite's strict rank promotion refuses)
    with jax.numpy_rank_promotion("allow"):
        model = zoo.MODELS["deep"](True)
        case = model_bench.train_case("gradtx packed", model, tx, gradtx.apply_updates, True)
        assert [c.impl for c in model_bench.cases_for(model)][1:3] == [
            "gradtx per-leaf",
            "gradtx packed",
        ]
        args = case.make_args()
        loss = jax.jit(lambda p: model.loss(gradtx.unpack(p), None, *model.batch)[0])
        before = float(loss(args[0]))
        step = jax.jit(case.fn)
        for _ in range(3):
            args[:3] = step(*args)
        assert float(loss(args[0])) < before
