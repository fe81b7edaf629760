"""The conformance kit catches every rule a transformation can break, with a clear message.

Each bad transformation below breaks exactly one rule of ``gradtx.testing`` and is run through
the check for that rule; the test asserts the check's name, its tier and the words of its
message: a required failure raises by default, an advisory miss is recorded in the report by
default and raises with ``strict=True``. Third-party transformations (a plain NamedTuple one and
optax's own) pass the required tier by default.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx
from gradtx.testing import (
    ADVISORY,
    CHECKS,
    REQUIRED,
    TIERS,
    CheckFailure,
    CheckReport,
    check_sharding,
    check_structure,
    check_transformation,
    default_params,
    tier_of,
)

# --- good transformations -----------------------------------------------------------------------


class SignMomentum(gradtx.Stage):
    """The docs/testing.md example: sign of an EMA of the gradients, a rule for one array."""

    name = "sign_momentum"
    slots = ("m",)
    decay: float = gradtx.hyper(0.9, "unit")

    def update_leaf(self, g, slots, param, ctx):
        m = self.decay * slots["m"] + (1 - self.decay) * g
        return jnp.sign(m), {"m": m}


class ScaleByLoss(gradtx.Stage):
    """Needs the loss value at every step: declares it in ``requires``."""

    name = "scale_by_loss"
    requires = ("loss",)

    def update_leaf(self, g, slots, param, ctx):
        return g * jnp.asarray(ctx.extra["loss"], g.dtype), slots


def test_custom_stage_passes_every_check():
    report = check_transformation(SignMomentum(0.9), strict=True)
    assert set(CHECKS) <= set(report.passed)
    assert report.skipped == {} and report.misses == {}
    assert "sharding" in str(report) and "sign_momentum" in str(report)


def test_required_extra_argument_is_passed_and_enforced():
    report = check_transformation(
        ScaleByLoss(), extra_args={"loss": jnp.float32(2.0)}, checks=["extra_args"], strict=True
    )
    assert "required loss enforced" in report.passed["extra_args"]
    assert report.passed["extra_args.declared"] == "loss given"
    with pytest.raises(CheckFailure, match=r"requires update argument\(s\) loss; pass values with"):
        check_transformation(ScaleByLoss(), checks=["vmap"])  # checked before any check runs


def test_required_extra_argument_inside_a_chain():
    tx = gradtx.chain(ScaleByLoss(), gradtx.sgd(0.1))
    report = check_transformation(
        tx, checks=["extra_args", "jit"], extra_args={"loss": jnp.float32(0.5)}
    )
    assert "required loss enforced" in report.passed["extra_args"]


# --- the report ---------------------------------------------------------------------------------


def test_report_records_skips_with_reasons():
    report = check_transformation(gradtx.sgd(0.1), checks=["sharding"], devices=1)
    assert "sharding" not in report.passed
    assert "needs at least 2 devices, 8 available" in report.skipped["sharding"]


def test_no_hyperparameters_is_a_recorded_skip():
    tx = gradtx.chain()  # no stages, no numbers
    report = check_transformation(tx, checks=["jit", "vmap"])
    assert "no numeric hyperparameters" in report.skipped["jit.hyperparameters"]
    assert "no numeric pytree leaves" in report.skipped["vmap.hyperparameters"]
    assert "jit" in report.passed and "vmap.params" in report.passed


def test_unknown_check_name():
    with pytest.raises(ValueError, match=r"unknown check\(s\) \['jitt'\]"):
        check_transformation(gradtx.sgd(0.1), checks=["jitt"])


def test_failure_attributes():
    with pytest.raises(CheckFailure) as info:
        check_transformation(_CrashesOnExtras(), checks=["extra_args"], strict=True)
    e = info.value
    assert (e.check, e.transformation, e.tier) == ("extra_args", "crashes_on_extras", ADVISORY)
    assert str(e).startswith("crashes_on_extras failed advisory check 'extra_args': ")
    assert isinstance(e, AssertionError)


def test_sharding_without_shardable_params_is_a_recorded_skip():
    report = check_sharding(gradtx.sgd(0.1), {"a": jnp.ones(3), "b": jnp.ones(())}, devices=2)
    assert "no param has a dimension divisible" in report.skipped["sharding"]


def test_report_str_lists_passed_skipped_and_missed_with_tiers():
    r = CheckReport("t")
    r.ok("jit", "fine")
    r.skip("sharding", "one device")
    r.note(r.fail("structure.errors", "anonymous error"))
    lines = [
        "check_transformation(t): required checks passed, 1 advisory miss",
        "  passed   required jit: fine",
        "  skipped  required sharding: one device",
        "  MISSED   advisory structure.errors: anonymous error",
    ]
    assert str(r) == "\n".join(lines)
    with pytest.raises(CheckFailure, match="failed required check 'vmap.params'"):
        r.note(r.fail("vmap.params", "a required failure is never only recorded"))


def test_tiers():
    assert tier_of("dtypes.bfloat16") == REQUIRED and tier_of("dtypes.policy") == ADVISORY
    assert {c for c in TIERS if "." not in c} == set(CHECKS)
    assert set(TIERS.values()) == {REQUIRED, ADVISORY}
    with pytest.raises(KeyError, match="'jitt' is no check"):
        tier_of("jitt")


# --- bad transformations: one broken rule each ---------------------------------------------------


def _sgd(updates):
    return jax.tree_util.tree_map(lambda g: -0.1 * g, updates)


class _StaticStep:
    """A step counter kept as static pytree data (a common mistake)."""

    def __init__(self, n):
        self.n = n


jax.tree_util.register_pytree_node(_StaticStep, lambda s: ((), s.n), lambda n, _: _StaticStep(n))


class _RetracesEveryStep(gradtx.GradientTransformation):
    name = "retraces_every_step"

    def init(self, params):
        return {"step": _StaticStep(0)}

    def update(self, updates, state, params=None, **extra):
        return _sgd(updates), {"step": _StaticStep(state["step"].n + 1)}


@jax.tree_util.register_pytree_node_class
class _HyperInStaticData:
    """Its learning rate is a leaf, but a copy of it also leaks into the static data."""

    name = "hyper_in_static_data"

    def __init__(self, lr):
        self.lr = lr

    def tree_flatten(self):
        return (self.lr,), f"lr={self.lr}"

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        return jax.tree_util.tree_map(lambda g: -self.lr * g, updates), state


class _HyperAsPythonNumber(gradtx.GradientTransformation):
    name = "hyper_as_python_number"
    lr: float = gradtx.hyper(0.1)

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        lr = float(self.lr)  # fails when the hyperparameter is traced
        return jax.tree_util.tree_map(lambda g: -lr * g, updates), state


class _CountWeakType(gradtx.GradientTransformation):
    name = "count_weak_type"

    def init(self, params):
        return {"count": jnp.asarray(0)}  # weakly typed

    def update(self, updates, state, params=None, **extra):
        return _sgd(updates), {"count": (state["count"] + 1).astype(jnp.int32)}


class _StateGrows(gradtx.GradientTransformation):
    name = "state_grows"

    def init(self, params):
        return {"mu": jax.tree_util.tree_map(jnp.zeros_like, params)}

    def update(self, updates, state, params=None, **extra):
        return _sgd(updates), {"mu": updates, "nu": updates}


class _StateDtypeDrift(gradtx.GradientTransformation):
    name = "state_dtype_drift"

    def init(self, params):
        return {"mu": jax.tree_util.tree_map(jnp.zeros_like, params)}

    def update(self, updates, state, params=None, **extra):
        f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
        mu = jax.tree_util.tree_map(lambda m, g: 0.9 * f32(m) + f32(g), state["mu"], updates)
        out = jax.tree_util.tree_map(lambda m, g: (-0.1 * m).astype(g.dtype), mu, updates)
        return out, {"mu": mu}


class _WrongUpdateDtype(gradtx.GradientTransformation):
    name = "wrong_update_dtype"

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        return jax.tree_util.tree_map(lambda g: -0.1 * g.astype(jnp.float32), updates), state


class _OverflowsFloat16(gradtx.GradientTransformation):
    name = "overflows_float16"

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        return jax.tree_util.tree_map(lambda g: g * 1e5, updates), state


class _FailsOnShapeDtypeStruct(gradtx.GradientTransformation):
    name = "fails_on_abstract"

    def init(self, params):
        return {"mu": jax.tree_util.tree_map(lambda p: jnp.asarray(np.zeros_like(p)), params)}

    def update(self, updates, state, params=None, **extra):
        return _sgd(updates), state


class _LosesSharding(gradtx.GradientTransformation):
    name = "loses_sharding"

    def init(self, params):  # zeros(shape) instead of zeros_like(p): placed on one device
        return {"mu": jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, p.dtype), params)}

    def update(self, updates, state, params=None, **extra):
        mu = jax.tree_util.tree_map(lambda m, g: 0.9 * m + g, state["mu"], updates)
        return _sgd(mu), {"mu": mu}


class _DropsNoneLeaves(gradtx.GradientTransformation):
    name = "drops_none_leaves"

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        check = gradtx.sgd(0.1)  # let gradtx validate the trees ...
        u, _ = check.update(updates, check.init(params), params)

        def drop(t):  # ... then lose the None leaves of dicts
            if isinstance(t, dict):
                return {k: drop(v) for k, v in t.items() if v is not None}
            return t

        return drop(u), state


class _BareMomentum(gradtx.GradientTransformation):
    """Zips gradients with its state with ``jax.tree.map``: a mismatch is jax's anonymous error."""

    name = "bare_momentum"

    def init(self, params):
        return {"mu": jax.tree_util.tree_map(jnp.zeros_like, params)}

    def update(self, updates, state, params=None, **extra):
        mu = jax.tree_util.tree_map(lambda m, g: 0.9 * m + g, state["mu"], updates)
        return _sgd(mu), {"mu": mu}


class _IgnoresMismatch(gradtx.GradientTransformation):
    name = "ignores_mismatch"

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        return _sgd(updates), state  # never compares updates with params


class _CrashesOnExtras(gradtx.GradientTransformation):
    name = "crashes_on_extras"

    def init(self, params):
        return ()

    def update(self, updates, state, params=None):  # no **extra
        return _sgd(updates), state


class _UncheckedRequirement(gradtx.GradientTransformation):
    name = "unchecked_requirement"
    requires = ("loss",)

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        loss = extra["loss"]  # a bare KeyError when missing
        return jax.tree_util.tree_map(lambda g: -loss * g, updates), state


def _host_negate(x):
    return np.negative(x)


class _CallbackWithoutVmap(gradtx.GradientTransformation):
    name = "callback_without_vmap"

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        def neg(g):
            return jax.pure_callback(_host_negate, jax.ShapeDtypeStruct(g.shape, g.dtype), g)

        return jax.tree_util.tree_map(neg, updates), state


def _host_center(x):
    return (x - x.mean()).astype(x.dtype)  # sees the whole batch under vmap


class _BatchLeak(gradtx.GradientTransformation):
    name = "batch_leak"

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        def center(g):
            out = jax.ShapeDtypeStruct(g.shape, g.dtype)
            return jax.pure_callback(_host_center, out, g, vmap_method="broadcast_all")

        return jax.tree_util.tree_map(center, updates), state


class _ImplicitPromotion(gradtx.GradientTransformation):
    """Multiplies by a float32 constant and casts back: fine by default, not under strict."""

    name = "implicit_promotion"

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        scale = jnp.float32(-0.1)
        return jax.tree_util.tree_map(lambda g: (scale * g).astype(g.dtype), updates), state


class _NarrowSlots(gradtx.GradientTransformation):
    """Keeps its momentum in float16 whatever the params: stable, but narrower than bfloat16."""

    name = "narrow_slots"

    def init(self, params):
        return {"mu": jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, jnp.float16), params)}

    def update(self, updates, state, params=None, **extra):
        mu = jax.tree_util.tree_map(
            lambda m, g: (0.9 * m.astype(jnp.float32) + g.astype(jnp.float32)).astype(m.dtype),
            state["mu"],
            updates,
        )
        out = jax.tree_util.tree_map(lambda m, g: (-0.1 * m).astype(g.dtype), mu, updates)
        return out, {"mu": mu}


BAD = [
    # (transformation, checks to run, kwargs, failing check, its tier, message pattern)
    (
        _RetracesEveryStep(),
        ["jit"],
        {},
        "jit",
        REQUIRED,
        r"update retraced at step 2 \(traced 2 times\): the tree structure of the one to step 2",
    ),
    (
        _HyperInStaticData(0.1),
        ["jit"],
        {},
        "jit.hyperparameters",
        ADVISORY,
        r"changing a hyperparameter value retraced update: the tree structure .*lr=0\.05",
    ),
    (
        _HyperAsPythonNumber(),
        ["jit"],
        {},
        "jit.hyperparameters",
        ADVISORY,
        r"init and update under jax.jit with the transformation as a jit argument raised "
        r"ConcretizationTypeError",
    ),
    (
        _CountWeakType(),
        ["jit"],
        {},
        "jit",
        REQUIRED,
        r"update retraced at step 2 .*at \['count'\], the state given to step 1 is weak int32\[\] "
        r"but the one to step 2 is int32\[\]",
    ),
    (
        _CountWeakType(),
        ["stability"],
        {},
        "stability",
        REQUIRED,
        r"at \['count'\], the state from init is weak int32\[\] but the state after one update "
        r"is int32\[\]",
    ),
    (
        _StateGrows(),
        ["stability"],
        {},
        "stability",
        REQUIRED,
        r"the tree structure of the state after one update differs from the state from init: "
        r"unexpected \['nu'\]",
    ),
    (
        _StateDtypeDrift(),
        ["dtypes"],
        {},
        "dtypes.float16",
        REQUIRED,
        r"with float16 params, at \['mu'\]\['b'\], the state from init is float16\[8\] but the "
        r"state after update 1 is float32\[8\]",
    ),
    (
        _WrongUpdateDtype(),
        ["dtypes"],
        {},
        "dtypes.float16",
        REQUIRED,
        r"update 1 at \['b'\] is float32\[8\] for a float16 param; updates must come back in",
    ),
    (
        _NarrowSlots(),
        ["dtypes"],
        {},
        "dtypes.policy",
        ADVISORY,
        r"with bfloat16 params, the state leaf \['mu'\]\['b'\] has dtype float16; a state slot "
        r"should keep the param dtype \(bfloat16\) or be wider",
    ),
    (
        _OverflowsFloat16(),
        ["dtypes"],
        {},
        "dtypes.finite",
        ADVISORY,
        r"finite float16 gradients gave a non-finite value in update 1 at \['b'\]",
    ),
    (
        _ImplicitPromotion(),
        ["strict_promotion"],
        {},
        "strict_promotion",
        ADVISORY,
        r"tracing init and update with float16 params under strict promotion raised "
        r"TypePromotionError",
    ),
    (
        _FailsOnShapeDtypeStruct(),
        ["abstract_init"],
        {},
        "abstract_init",
        REQUIRED,
        r"jax.eval_shape\(tx.init, <ShapeDtypeStruct params>\) raised TracerArrayConversionError",
    ),
    (
        _LosesSharding(),
        ["sharding"],
        {},
        "sharding.auto",
        REQUIRED,
        r"after eager init, the state leaf \['mu'\]\['b'\] \[8\] has sharding "
        r"SingleDeviceSharding on \{CpuDevice\(id=0\)\} but its param has "
        r"NamedSharding\(P\('kit',\)\) over mesh \{'kit': 8\}",
    ),
    (
        _DropsNoneLeaves(),
        ["structure"],
        {},
        "structure",
        REQUIRED,
        r"on the structure zoo: the tree structure of the updates differs from the gradients: "
        r"missing \['kit_none'\]",
    ),
    (
        _BareMomentum(),
        ["structure"],
        {},
        "structure.errors",
        ADVISORY,
        r"update with an unexpected gradient key raised ValueError, but its message does not name "
        r"the transformation 'bare_momentum'",
    ),
    (
        _IgnoresMismatch(),
        ["structure"],
        {},
        "structure.errors",
        ADVISORY,
        r"update with an unexpected gradient key did not raise",
    ),
    (
        _CrashesOnExtras(),
        ["extra_args"],
        {},
        "extra_args",
        ADVISORY,
        r"update with unknown keyword arguments added raised TypeError: .*unexpected keyword",
    ),
    (
        _UncheckedRequirement(),
        ["extra_args"],
        {"extra_args": {"loss": jnp.float32(1.0)}},
        "extra_args",
        ADVISORY,
        r"update without the required argument 'loss' raised KeyError whose message does not "
        r"name the transformation 'unchecked_requirement'",
    ),
    (
        _CallbackWithoutVmap(),
        ["vmap"],
        {},
        "vmap.params",
        REQUIRED,
        r"jax.vmap over a batch of params and gradients raised NotImplementedError",
    ),
    (
        _BatchLeak(),
        ["vmap"],
        {},
        "vmap.params",
        REQUIRED,
        r"vmapped over params vs separate runs: at \[0\]\['b'\] values differ",
    ),
]


@pytest.mark.parametrize(
    "tx, checks, kwargs, check, tier, pattern",
    BAD,
    ids=[f"{b[0].name}-{b[3]}" for b in BAD],
)
def test_bad_transformation_is_caught_by_its_tier(tx, checks, kwargs, check, tier, pattern):
    assert tier_of(check) == tier
    if tier == ADVISORY:  # by default: recorded, the run goes on
        report = check_transformation(tx, checks=checks, **kwargs)
        assert check in report.misses, str(report)
        assert re.search(pattern, report.misses[check]), report.misses[check]
        assert check not in report.passed
        assert f"MISSED   advisory {check}: " in str(report)
        assert str(report).startswith(f"check_transformation({tx.name}): required checks passed")
    with pytest.raises(CheckFailure) as info:  # a required failure raises whatever strict says
        check_transformation(tx, checks=checks, strict=tier == ADVISORY, **kwargs)
    assert (info.value.check, info.value.tier) == (check, tier), str(info.value)
    assert re.search(pattern, info.value.reason), info.value.reason
    assert str(info.value).startswith(f"{tx.name} failed {tier} check {check!r}: ")


def test_every_check_has_a_bad_transformation():
    caught = {b[3].split(".")[0] for b in BAD}
    assert caught == set(CHECKS)
    assert {b[4] for b in BAD} == {REQUIRED, ADVISORY}


# --- transformations from elsewhere: the required tier by default ---------------------------------


class MomentumState(NamedTuple):
    mu: Any


class PlainMomentum(NamedTuple):
    """SGD with momentum as a third party writes it: a NamedTuple, ``jax.tree.map``, no gradtx."""

    learning_rate: float = 0.1
    momentum: float = 0.9

    def init(self, params):
        return MomentumState(jax.tree.map(jnp.zeros_like, params))

    def update(self, updates, state, params=None):
        mu = jax.tree.map(lambda m, g: self.momentum * m + g, state.mu, updates)
        return jax.tree.map(lambda m: -self.learning_rate * m, mu), MomentumState(mu)


def test_plain_namedtuple_transformation_passes_the_required_tier():
    tx = PlainMomentum()
    report = check_transformation(tx, name="plain_momentum")
    assert set(CHECKS) - {"extra_args"} <= set(report.passed), str(report)
    assert all(tier_of(c) == REQUIRED for c in report.passed if c not in TIERS)
    # advisory: jax.tree.map's anonymous structure error, and no **extra in update
    assert set(report.misses) == {"structure.errors", "extra_args"}, str(report)
    assert "does not name the transformation 'plain_momentum'" in report.misses["structure.errors"]
    assert "unexpected keyword argument 'kit_unknown_value'" in report.misses["extra_args"]
    assert "jit.hyperparameters" in report.passed  # a NamedTuple of floats is a jit argument
    assert "vmap.hyperparameters" in report.passed
    # the plain update really is SGD with momentum (NumPy float64 oracle, rtol 1e-6)
    p = {"w": jnp.asarray([1.0, -2.0])}
    g = {"w": jnp.asarray([0.5, 0.25])}
    state = tx.init(p)
    u1, state = tx.update(g, state)
    u2, state = tx.update(g, state)
    np.testing.assert_allclose(np.asarray(u2["w"]), -0.1 * 1.9 * np.array([0.5, 0.25]), rtol=1e-6)
    with pytest.raises(CheckFailure, match="plain_momentum failed advisory check"):
        check_transformation(tx, checks=["structure"], strict=True, name="plain_momentum")


OPTAX = {
    "adam": (lambda: optax.adam(1e-3), {"strict_promotion", "structure.errors"}),
    "sgd_momentum": (lambda: optax.sgd(0.1, momentum=0.9), {"structure.errors"}),
    "chain_clip_adamw": (
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
        {"strict_promotion", "structure.errors"},
    ),
}


@pytest.mark.parametrize("make, misses", OPTAX.values(), ids=OPTAX.keys())
def test_optax_passes_the_required_tier(make, misses):
    tx = make()
    report = check_transformation(tx, name="optax")
    assert set(CHECKS) - {"strict_promotion"} <= set(report.passed) | set(report.misses)
    assert set(report.misses) == misses, str(report)  # optax 0.2.8
    assert "name the transformation 'optax'" in report.misses["structure.errors"]
    assert "not a pytree of numeric leaves" in report.skipped["jit.hyperparameters"]
    assert jax.config.jax_numpy_dtype_promotion == "strict"  # the suite's setting, restored


# --- the parts of the kit used alone --------------------------------------------------------------


def test_structure_check_on_a_user_tree_only():
    params = {"a": [jnp.ones(2), None], "b": ()}
    report = check_structure(gradtx.adam(1e-3), params, zoo=False)
    assert "structure" in report.passed
    assert "zoo=False" in report.skipped["structure.errors"]


def test_params_default_and_explicit_dtypes():
    report = check_transformation(
        gradtx.adam(1e-3), default_params(), checks=["dtypes"], dtypes=["bfloat16"]
    )
    parts = ["extra_args.declared", "dtypes.bfloat16", "dtypes.policy", "dtypes.finite", "dtypes"]
    assert list(report.passed) == parts


def test_explicit_mesh_argument():
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    params = {"w": jnp.ones((4, 8)), "v": jnp.ones(3)}
    report = check_sharding(gradtx.adamw(1e-3), params, mesh=mesh)
    assert "{'a': 2, 'b': 4}" in report.passed["sharding"]


def test_float64_is_scoped():
    check_transformation(gradtx.sgd(0.1), checks=["dtypes"], dtypes=["float64"])
    assert not jax.config.jax_enable_x64
    assert jnp.zeros(1).dtype == jnp.float32


@dataclasses.dataclass
class _Unhashable:
    """A third-party transformation that is not hashable (a non-frozen dataclass)."""

    lr: float = 0.1

    def init(self, params):
        return ()

    def update(self, updates, state, params=None, **extra):
        return jax.tree_util.tree_map(lambda g: -self.lr * g, updates), state


def test_jitted_checks_accept_an_unhashable_transformation():
    # the jitted structure and dtype runs close over the transformation instead of hashing it
    # as a static argument
    with pytest.raises(TypeError):
        hash(_Unhashable())
    report = check_transformation(_Unhashable(), checks=["dtypes", "structure"])
    assert {"structure", "dtypes.float32", "dtypes.float64"} <= set(report.passed)
