"""What every named optimizer does with a NaN or an Inf in a gradient (docs/nan_inf.md).

The contract: nothing is masked. A non-finite gradient element propagates into the update and
into the state of its own leaf -- at that element for element-wise rules, over the whole leaf
for rules that reduce over a leaf (trust ratios, Adafactor's RMS clipping, Muon's and SOAP's
matrix rules: see ``MATRIX``) and over every leaf for global reductions
(``clip_by_global_norm``, L-BFGS's inner products and line search). Every other leaf, and the
step count, stay finite, except where ``SPREAD`` lists the tree statistics and leaves a global
rule reaches. Inf follows IEEE arithmetic through each rule, so some rules turn it into a finite
value (the sign of Inf is 1); the tables below record each optimizer's outcome.

The optimizers are ``helpers.named_optimizer_names()``: a new one fails here until it has its
rows, and the lecture lab's own discovery must find the same set.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import named_optimizer_names

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


def _make(name: str) -> gradtx.Optimizer:
    fn = getattr(gradtx, name)
    lr = inspect.signature(fn).parameters.get("learning_rate")
    return fn() if lr is None or lr.default is not inspect.Parameter.empty else fn(1e-3)


def _loss(params):
    return sum(jnp.sum(x * x) for x in jax.tree.leaves(params))


# Extra arguments of ``update`` an optimizer declares (``requires``), given the gradient.
EXTRA = {
    "polyak_sgd": lambda g: {"value": 1.0},
    "sophia": lambda g: {"obj_fn": _loss},
    # L-BFGS's line search: f(θ), the gradient (the one with the bad element) and f
    "lbfgs": lambda g: {"value": _loss(PARAMS), "grad": g, "value_fn": _loss},
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
    # the line search's slope <g, d> is NaN, so is its step size: every leaf (SPREAD); the
    # stored gradient brings the NaN into the next curvature pair
    "lbfgs": ("leaf", {"params": None, "updates": "element", "grad": "element"}, True),
    "muon": ("element", "element", True),  # "a" is a vector: AdamW's (matrices: MATRIX)
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
    # the first call only builds the preconditioners (update 0, moments untouched), and a
    # vector has none: the bad first gradient of "a" is dropped (a matrix's is not: MATRIX)
    "soap": (None, {"mu": None, "nu": None}, False),
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
    "lbfgs": ("leaf", {"params": None, "updates": "element", "grad": "element"}, True),  # as NaN
    "muon": ("element", "element", True),
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
    "soap": (None, {"mu": None, "nu": None}, False),
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


KNOBS_TABLE = Path(__file__).resolve().parents[1] / "examples" / "lecture_lab" / "knobs_table.py"


def test_every_named_optimizer_has_a_defined_behaviour():
    names = sorted(named_optimizer_names())
    assert names == sorted(NAN) == sorted(INF), (
        "add the new optimizer to NAN and INF here and to docs/nan_inf.md: "
        f"{sorted(set(names) ^ set(NAN) | set(names) ^ set(INF))}"
    )


def test_the_lecture_lab_finds_the_same_named_optimizers():
    # The lab runs without tests/ on its path, so it keeps its own discovery (public functions
    # returning an Optimizer); helpers' (the family modules' __all__) is the source of truth.
    spec = importlib.util.spec_from_file_location("knobs_table_discovery", KNOBS_TABLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found, named = set(module.named_optimizers()), named_optimizer_names()
    assert found == named, (
        f"only the lab: {sorted(found - named)}, only helpers: {sorted(named - found)}"
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
    # L-BFGS: one step size from the line search along the whole tree; the non-finite trial
    # points leave its diagnostics non-finite, and the next curvature pair holds the bad element
    **{
        ("lbfgs", bad): (
            {
                ".scale_by_zoom_linesearch.info.decrease_error",
                ".scale_by_zoom_linesearch.info.curvature_error",
            },
            False,
            False,
        )
        for bad in ("nan", "inf")
    },
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
    extra = EXTRA.get(name, lambda g: {})
    grads = _grads(bad)
    updates, state = tx.update(grads, tx.init(PARAMS), PARAMS, **extra(grads))

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

    grads = _grads(0.0, at=None)
    updates2, _ = tx.update(grads, state, PARAMS, **extra(grads))
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


# The matrix rules, with the bad element at M_BAD of the matrix leaf "m": Muon orthogonalises
# its momentum (Newton-Schulz mixes every element of the matrix); SOAP's preconditioners
# L = ∑ G Gᵀ and R = ∑ Gᵀ G take the element's row and column ("cross"), their eigenbases and
# the moments rotated by them all of it ("leaf"). (name, finite calls before) -> (the first
# update of "m", the extent in each state slot of "m"); every later update of "m" is
# non-finite, and every other leaf, its state and the count stay finite.
M_BAD = (1, 2)
MATRIX = {
    ("muon", 0): ("leaf", {".muon.mu": "element"}),
    # the first call's update is 0, but the bases it takes are non-finite: so is every update
    ("soap", 0): (
        None,
        {".soap.mu": None, ".soap.nu": None, ".soap.l": "cross", ".soap.r": "cross"}
        | {".soap.q_l": "leaf", ".soap.q_r": "leaf"},
    ),
    ("soap", 1): (
        "leaf",
        {".soap.mu": "leaf", ".soap.nu": "leaf", ".soap.l": "cross", ".soap.r": "cross"}
        | {".soap.q_l": None, ".soap.q_r": None},
    ),
}


def _extent_in_m(slot: str, x) -> str | None:
    bad = ~np.isfinite(np.asarray(x, np.float64))
    if not bad.any() or bad.all():
        return "leaf" if bad.any() else None
    if bad.shape == PARAMS["m"].shape:
        assert bad.sum() == 1 and bad[M_BAD], bad
        return "element"
    k = M_BAD[{"l": 0, "r": 1}[slot]]  # L is rows × rows, R columns × columns
    cross = np.zeros_like(bad)
    cross[k, :] = cross[:, k] = True
    assert (bad == cross).all(), (slot, bad)
    return "cross"


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name, warm", sorted(MATRIX), ids=lambda x: str(x))
def test_non_finite_gradient_in_a_matrix(name, warm, bad):
    first, slots = MATRIX[name, warm]
    tx = _make(name)
    clean = _grads(0.0, at=None)
    state = tx.init(PARAMS)
    for _ in range(warm):
        _, state = tx.update(clean, state, PARAMS)
    grads = dict(clean, m=clean["m"].at[M_BAD].set(bad))
    updates, state = tx.update(grads, state, PARAMS)
    assert _extent(updates["m"]) == first
    seen = {}
    for path, x in flatten(state)[0]:
        p = path_str(path)
        if x is None:
            continue
        if p.endswith("['m']"):
            slot = p.removesuffix("['m']")
            seen[slot] = _extent_in_m(slot.rsplit(".", 1)[-1], x)
        else:
            assert np.isfinite(np.asarray(x, np.float64)).all(), p
    assert seen == slots
    for _ in range(2):
        updates, state = tx.update(clean, state, PARAMS)
        assert _extent(updates["m"]) == "leaf"
        for leaf in ("a", "c"):
            assert np.isfinite(np.asarray(updates[leaf])).all(), leaf


def test_nan_under_jit_is_the_same():
    tx = gradtx.adam(1e-3)
    step = jax.jit(lambda g, s: tx.update(g, s, PARAMS))
    updates, state = step(_grads(np.nan), tx.init(PARAMS))
    assert _extent(updates["a"]) == "element"
    assert _extent(state.knobs.mu["a"]) == "element"
    assert int(state.knobs.count) == 1
