"""What every named optimizer does with a NaN or an Inf in a gradient (docs/nan_inf.md).

The contract: nothing is masked. A non-finite gradient element propagates into the update and
into the state of its own leaf -- at that element for element-wise rules, over the whole leaf
for rules that reduce over a leaf (trust ratios, Adafactor's RMS clipping) and over every leaf
for global reductions (``clip_by_global_norm``). Every other leaf, and the step count, stay
finite. Inf follows IEEE arithmetic through each rule, so some rules turn it into a finite
value (the sign of Inf is 1); the tables below record each optimizer's outcome.
"""

from __future__ import annotations

import inspect
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
from gradtx._core.tree import flatten, path_str

PARAMS = {
    "a": jnp.asarray([0.5, 1.0, 1.5, 2.0]),
    "m": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
    "c": jnp.asarray(0.3),
}
BAD_INDEX = 1  # the element of leaf "a" that gets the non-finite gradient


def _grads(bad: float, at: int | None = BAD_INDEX):
    a = np.asarray([0.1, 0.2, -0.2, 0.3], np.float32)
    if at is not None:
        a[at] = bad
    return {"a": jnp.asarray(a), "m": jnp.full((3, 4), 0.1), "c": jnp.asarray(0.2)}


def named_optimizers() -> list[str]:
    """Public functions returning a :class:`gradtx.Optimizer`, but the ``optimizer`` builder."""
    out = []
    for name in dir(gradtx):
        obj = getattr(gradtx, name)
        if name.startswith("_") or not inspect.isfunction(obj) or name == "optimizer":
            continue
        if name.startswith("scale_by_"):  # optax's update-only forms of named optimizers
            continue
        if typing.get_type_hints(obj).get("return") is gradtx.Optimizer:
            out.append(name)
    return sorted(out)


def _make(name: str) -> gradtx.Optimizer:
    fn = getattr(gradtx, name)
    lr = inspect.signature(fn).parameters.get("learning_rate")
    return fn() if lr is None or lr.default is not inspect.Parameter.empty else fn(1e-3)


# Extra arguments of ``update`` an optimizer declares (``requires``).
EXTRA = {
    "polyak_sgd": {"value": 1.0},
    "sophia": {"obj_fn": lambda p: sum(jnp.sum(x * x) for x in jax.tree.leaves(p))},
}


# Extent of the non-finite values in leaf "a" after the first step: "element" (only the bad
# element), "leaf" (all of "a") or None (all finite). Columns: update, param-shaped state slots.
# The last column: whether the update of "a" is non-finite again at the next, finite, step.
NAN = {
    "adamaxw": ("element", "element", True),
    "adan": (
        "element",
        {"mu": "element", "v": None, "nu": "element", "prev_grad": "element"},
        True,
    ),
    "ademamix": ("element", "element", True),
    # ADOPT's first step only records ν (no update); the NaN waits in ν
    "adopt": (None, {"mu": None, "nu": "element"}, True),
    "dadapt_adamw": ("element", "element", True),  # and its global numerator (SPREAD)
    "dog": ("leaf", {"init_params": None}, True),  # global gradient norms (SPREAD)
    "dowg": ("leaf", {"init_params": None}, True),
    "fromage": ("leaf", None, False),  # ‖g‖ is NaN for the leaf; no state
    "noisy_sgd": ("element", None, False),
    "novograd": ("leaf", "leaf", True),  # the per-leaf ν = EMA of ‖g‖²
    "optimistic_adam": ("element", "element", True),
    "optimistic_adam_v2": ("element", "element", True),
    "optimistic_gradient_descent": ("element", "element", True),
    "polyak_sgd": ("leaf", None, False),  # the step size reads ‖g‖ of the tree (SPREAD)
    "prodigy": (
        "element",
        {"exp_avg": "element", "exp_avg_sq": "element", "grad_sum": "element", "params0": None},
        True,
    ),
    # a NaN sign product compares false: the step size stays; the NaN is in the last update
    "rprop": ("element", {"step_sizes": None, "prev_updates": "element"}, False),
    "signum": ("element", "element", True),
    "sm3": ("element", "element", True),
    # the Hessian estimate reads the (finite) params, not the gradient
    "sophia": ("element", {"mu": "element", "nu": None}, True),
    "adabelief": ("element", "element", True),
    "adadelta": ("element", "element", True),
    "adafactor": ("leaf", "element", True),  # RMS clipping reads the whole leaf
    "adagrad": ("element", "element", True),
    "adam": ("element", "element", True),
    "adamax": ("element", "element", True),
    "adamw": ("element", "element", True),
    "amsgrad": ("element", "element", True),
    "lamb": ("leaf", "element", True),  # the trust ratio ‖θ‖/‖u‖ is NaN for the leaf
    "lars": ("leaf", "leaf", True),  # trust ratio before momentum: the momentum gets it all
    "lion": ("element", "element", True),
    "nadam": ("element", "element", True),
    "nadamw": ("element", "element", True),
    "radam": ("element", "element", True),
    "rmsprop": ("element", "element", True),
    "sgd": ("element", None, False),  # no state: the next step is clean
    "sign_sgd": ("element", None, False),  # sign(NaN) is NaN; no state
    "yogi": ("element", "element", True),
}

INF = {
    "adamaxw": ("element", "element", True),
    "adan": (
        "element",
        {"mu": "element", "v": None, "nu": "element", "prev_grad": "element"},
        True,
    ),
    "ademamix": ("element", "element", True),
    # ν = ∞ at the element: then m/√ν = 0, the element is frozen
    "adopt": (None, {"mu": None, "nu": "element"}, False),
    "dadapt_adamw": ("element", "element", True),
    "dog": ("element", {"init_params": None}, False),  # ∑‖g‖² = ∞: every step size is 0
    "dowg": ("element", {"init_params": None}, False),
    "fromage": ("element", None, False),  # ‖g‖ = ∞: g/‖g‖ is 0 but at the element (∞/∞)
    "noisy_sgd": ("element", None, False),
    "novograd": ("element", "element", True),
    "optimistic_adam": ("element", "element", True),
    "optimistic_adam_v2": ("element", "element", True),
    "optimistic_gradient_descent": ("element", "element", True),
    "polyak_sgd": ("element", None, False),  # step size (f - f*)/‖g‖² = 0: others zero
    # the Inf reaches the global estimate d: every leaf's update is non-finite (SPREAD)
    "prodigy": (
        "leaf",
        {"exp_avg": "element", "exp_avg_sq": "element", "grad_sum": "element", "params0": None},
        True,
    ),
    # only the sign of g is used: the first step is finite, and so is what it stores
    "rprop": (None, {"step_sizes": None, "prev_updates": None}, False),
    "signum": (None, "element", False),  # sign(m) with m = ∞ is finite
    "sm3": ("element", "element", True),
    "sophia": (None, {"mu": "element", "nu": None}, False),  # m/max(γh, ε) = ∞ is clipped to 1
    "adabelief": ("element", "element", True),
    "adadelta": ("element", "element", True),
    "adafactor": ("leaf", "element", False),  # then g/√∞ = 0: the element is frozen
    "adagrad": ("element", "element", False),  # ∞/∞ = NaN, then g/√∞ = 0: frozen
    "adam": ("element", "element", True),  # m and v both ∞: ∞/∞ = NaN for good
    "adamax": ("element", "element", True),
    "adamw": ("element", "element", True),
    "amsgrad": ("element", "element", True),
    "lamb": ("leaf", "element", True),
    "lars": ("element", "element", True),  # ‖u‖ = ∞: ratio 0, the rest of "a" is zeroed
    "lion": (None, "element", False),  # sign(∞) = 1: a finite step, m = ∞ keeps it at ±1
    "nadam": ("element", "element", True),
    "nadamw": ("element", "element", True),
    "radam": ("element", "element", True),
    "rmsprop": ("element", "element", False),  # like adagrad
    "sgd": ("element", None, False),
    "sign_sgd": (None, None, False),  # sign(∞) = 1
    "yogi": ("element", "element", True),
}


def test_every_named_optimizer_has_a_defined_behaviour():
    names = named_optimizers()
    assert names == sorted(NAN) == sorted(INF), (
        "add the new optimizer to NAN and INF here and to docs/nan_inf.md: "
        f"{sorted(set(names) ^ set(NAN))}"
    )


def _extent(x) -> str | None:
    bad = ~np.isfinite(np.asarray(x, np.float64))
    if not bad.any():
        return None
    if bad.all():
        return "leaf"
    assert bad.sum() == 1 and bad.ravel()[BAD_INDEX], bad
    return "element"


def _slots_of_a(state):
    """(path, leaf) of every float state leaf, split into param-shaped slots of "a" and rest."""
    of_a, rest = [], []
    for path, x in flatten(state)[0]:
        if x is None:
            continue
        p = path_str(path)
        target = of_a if p.endswith("['a']") and np.shape(x) == PARAMS["a"].shape else rest
        target.append((p, x))
    return of_a, rest


# Optimizers whose state holds statistics of the whole tree (or of a whole leaf, stored as a
# scalar): (name, "nan"/"inf") -> (the state paths that end non-finite, whether the other
# leaves' first update is finite, whether their next update is finite).
SPREAD = {
    # a NaN numerator compares false in max(d, d̂): the estimate d stops growing, steps go on
    ("dadapt_adamw", "nan"): ({".dadapt_adamw.numerator_weighted"}, True, True),
    ("dadapt_adamw", "inf"): (
        {".dadapt_adamw.estim_lr", ".dadapt_adamw.numerator_weighted"},
        True,
        False,
    ),
    ("dog", "nan"): ({".scale_by_dog.sum_sq_norm_grads"}, False, False),
    ("dog", "inf"): ({".scale_by_dog.sum_sq_norm_grads"}, True, True),
    ("dowg", "nan"): ({".scale_by_dowg.weighted_sq_norm_grads"}, False, False),
    ("dowg", "inf"): ({".scale_by_dowg.weighted_sq_norm_grads"}, True, True),
    ("novograd", "nan"): ({".knobs.nu['a']"}, True, True),  # ν is one scalar per leaf
    ("novograd", "inf"): ({".knobs.nu['a']"}, True, True),
    ("polyak_sgd", "nan"): (set(), False, True),  # one step size from ‖g‖ of the whole tree
    ("prodigy", "nan"): ({".prodigy.numerator_weighted"}, True, True),  # as D-Adaptation
    ("prodigy", "inf"): ({".prodigy.estim_lr", ".prodigy.numerator_weighted"}, False, False),
}


def _matches(path: str, expected) -> str | None:
    if not isinstance(expected, dict):
        return expected
    slot = path.rsplit(".", 1)[-1].split("[", 1)[0]
    return expected[slot]


@pytest.mark.parametrize("bad, table", [(np.nan, NAN), (np.inf, INF)], ids=["nan", "inf"])
@pytest.mark.parametrize("name", sorted(NAN))
def test_non_finite_gradient(name, bad, table):
    update_extent, state_extent, persists = table[name]
    spread_slots, others_first, others_next = SPREAD.get(
        (name, "nan" if np.isnan(bad) else "inf"), (set(), True, True)
    )
    tx = _make(name)
    extra = EXTRA.get(name, {})
    updates, state = tx.update(_grads(bad), tx.init(PARAMS), PARAMS, **extra)

    assert _extent(updates["a"]) == update_extent
    for leaf in ("m", "c"):  # other leaves are untouched, unless a tree statistic spreads it
        assert np.isfinite(np.asarray(updates[leaf])).all() == others_first, leaf
    of_a, rest = _slots_of_a(state)
    for path, x in of_a:
        assert _extent(x) == _matches(path, state_extent), path
    assert state_extent is None or of_a, "a stateful optimizer keeps a slot for 'a'"
    for path, x in rest:  # other leaves' slots, the count and tree statistics
        finite = np.isfinite(np.asarray(x, np.float64)).all()
        assert finite == (path not in spread_slots), path

    updates2, _ = tx.update(_grads(0.0, at=None), state, PARAMS, **extra)
    assert (not np.isfinite(np.asarray(updates2["a"])).all()) == persists
    for leaf in ("m", "c"):
        assert np.isfinite(np.asarray(updates2[leaf])).all() == others_next, leaf


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_global_norm_clipping_spreads_to_every_leaf(bad):
    tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.sgd(0.1))
    updates, _ = tx.update(_grads(bad), tx.init(PARAMS), PARAMS)
    if np.isnan(bad):  # the norm is NaN: every element of every leaf
        for leaf in ("a", "m", "c"):
            assert np.isnan(np.asarray(updates[leaf])).all(), leaf
    else:  # the norm is ∞, the factor 0: the Inf element becomes NaN, every other element 0
        a = np.asarray(updates["a"])
        assert np.isnan(a[BAD_INDEX]) and (np.delete(a, BAD_INDEX) == 0).all()
        for leaf in ("m", "c"):
            assert (np.asarray(updates[leaf]) == 0).all(), leaf


# Stages, on leaf "a" with the bad element: the extent of NaN for a NaN gradient, and what an Inf
# gradient gives: "inf" (±∞ at the element, the rest as usual), "finite" (the stage turns it
# into a finite value) or "nan_rest_zero" (NaN at the element and the rest of the leaf 0).
STAGES = {
    "clip": (lambda: gradtx.clip(1.0), "element", "finite"),  # clip(∞) = max_delta
    "add_decayed_weights": (lambda: gradtx.add_decayed_weights(0.1), "element", "inf"),
    "scale": (lambda: gradtx.scale(0.5), "element", "inf"),
    "scale_by_learning_rate": (lambda: gradtx.scale_by_learning_rate(0.1), "element", "inf"),
    "clip_by_block_rms": (lambda: gradtx.clip_by_block_rms(1.0), "leaf", "nan_rest_zero"),
    "scale_by_trust_ratio": (lambda: gradtx.scale_by_trust_ratio(), "leaf", "nan_rest_zero"),
    # a NaN norm compares False: the unit is not clipped, only the NaN element is NaN
    "adaptive_grad_clip": (lambda: gradtx.adaptive_grad_clip(0.01), "element", "nan_rest_zero"),
}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_non_finite_gradient_through_a_stage(name):
    make, nan_extent, inf_outcome = STAGES[name]
    tx = make()
    updates, _ = tx.update(_grads(np.nan), tx.init(PARAMS), PARAMS)
    assert _extent(updates["a"]) == nan_extent
    updates, _ = tx.update(_grads(np.inf), tx.init(PARAMS), PARAMS)
    a = np.asarray(updates["a"])
    rest = np.delete(a, BAD_INDEX)
    if inf_outcome == "finite":
        assert np.isfinite(a).all()
    elif inf_outcome == "inf":
        assert np.isinf(a[BAD_INDEX]) and np.isfinite(rest).all() and (rest != 0).all()
    else:
        assert np.isnan(a[BAD_INDEX]) and (rest == 0).all()
    for leaf in ("m", "c"):
        assert np.isfinite(np.asarray(updates[leaf])).all(), leaf


def test_factored_adafactor_spreads_along_row_and_column():
    tx = gradtx.adafactor(min_dim_size_to_factor=2)
    grads = dict(_grads(0.0, at=None), m=jnp.full((3, 4), 0.1).at[1, 2].set(jnp.nan))
    updates, state = tx.update(grads, tx.init(PARAMS), PARAMS)
    row, col = np.asarray(state.knobs.v_row["m"]), np.asarray(state.knobs.v_col["m"])
    assert np.isnan(row).tolist() == [False, True, False]
    assert np.isnan(col).tolist() == [False, False, True, False]
    assert np.isnan(np.asarray(updates["m"])).all()
    assert np.isfinite(np.asarray(updates["a"])).all()


def test_nan_under_jit_is_the_same():
    tx = gradtx.adam(1e-3)
    step = jax.jit(lambda g, s: tx.update(g, s, PARAMS))
    updates, state = step(_grads(np.nan), tx.init(PARAMS))
    assert _extent(updates["a"]) == "element"
    assert _extent(state.knobs.mu["a"]) == "element"
    assert int(state.knobs.count) == 1
