"""Bad input fails early with a message naming the transformation and, for trees, the leaf."""

import re

import jax.numpy as jnp
import pytest

import gradtx


def _tree(**shapes):
    return {k: jnp.ones(s, jnp.float32) for k, s in shapes.items()}


PARAMS = _tree(w=(3,), b=(2,))


# --- hyperparameters given as Python numbers: rejected at construction ------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: gradtx.adam(-1e-3),
            r"gradtx\.adam .*learning_rate must be finite and >= 0, got -0\.001",
        ),
        (lambda: gradtx.adam(float("nan")), r"gradtx\.adam .*learning_rate .*got nan"),
        (
            lambda: gradtx.sgd(-0.1, momentum=0.9),
            r"gradtx\.sgd .*learning_rate must be finite and >= 0",
        ),
        (lambda: gradtx.adam(1e-3, b1=1.0), r"gradtx\.adam .*b1 must be in \[0, 1\), got 1\.0"),
        (lambda: gradtx.adam(1e-3, b1=-0.1), r"gradtx\.adam .*must be in \[0, 1\), got -0\.1"),
        (lambda: gradtx.adam(1e-3, b2=1.0), r"gradtx\.adam .*b2 must be in \[0, 1\), got 1\.0"),
        (lambda: gradtx.adam(1e-3, b2=float("nan")), r"gradtx\.adam .*b2 .*got nan"),
        (lambda: gradtx.adam(1e-3, eps=-1e-8), r"gradtx\.adam .*eps must be >= 0, got -1e-08"),
        (lambda: gradtx.adamw(1e-3, weight_decay=-0.1), r"gradtx\.adamw .*weight_decay must be"),
        (lambda: gradtx.nadam(1e-3, b2=1.5), r"gradtx\.nadam .*b2 must be in \[0, 1\)"),
        (lambda: gradtx.sgd(0.1, momentum=1.5), r"gradtx\.sgd .*momentum must be in \[0, 1\]"),
        (lambda: gradtx.rmsprop(0.1, decay=1.0), r"gradtx\.rmsprop .*decay must be in \[0, 1\)"),
        (lambda: gradtx.lion(1e-4, b2=2.0), r"gradtx\.lion\b.*b2 must be in \[0, 1\)"),
        (lambda: gradtx.adagrad(0.1, eps=-1.0), r"gradtx\.adagrad .*eps must be >= 0"),
        (
            lambda: gradtx.adam(float("inf")),
            r"gradtx\.adam .*learning_rate must be a finite number",
        ),
        (
            lambda: gradtx.adam(jnp.float32(-1.0)),
            r"gradtx\.adam .*learning_rate must be finite and >= 0",
        ),
    ],
    ids=[
        "lr_negative",
        "lr_nan",
        "sgd_lr_negative",
        "b1_one",
        "b1_negative",
        "b2_one",
        "b2_nan",
        "eps_negative",
        "weight_decay_negative",
        "nadam_b2",
        "momentum_above_one",
        "rmsprop_decay_one",
        "lion_b2",
        "adagrad_eps",
        "lr_inf",
        "lr_jax_scalar_negative",
    ],
)
def test_bad_hyperparameters_rejected_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_knob_hyperparameter_names_the_knob():
    with pytest.raises(ValueError, match=r"gradtx\.adam_scale: b2 must be in \[0, 1\)"):
        gradtx.AdamScale(b2=1.0)


# --- trees that do not match ------------------------------------------------------------------


def _adam_state():
    return gradtx.adam(1e-3).init(PARAMS)


@pytest.mark.parametrize(
    "call, match",
    [
        # updates has a leaf params does not
        (
            lambda tx: tx.update(_tree(w=(3,), b=(2,), c=(1,)), _adam_state(), PARAMS),
            r"gradtx\.adam .*does not match .*\['c'\]",
        ),
        # updates lacks a leaf of params
        (
            lambda tx: tx.update(_tree(w=(3,)), _adam_state(), PARAMS),
            r"gradtx\.adam .*does not match .*\['b'\]",
        ),
        # same keys, a different shape
        (
            lambda tx: tx.update(_tree(w=(3,), b=(4,)), _adam_state(), PARAMS),
            r"gradtx\.adam .*at \['b'\], .*shape \(2,\) but updates has shape \(4,\)",
        ),
        # state from init on another tree (no params given)
        (
            lambda tx: tx.update(PARAMS, tx.init(_tree(w=(3,), c=(2,)))),
            r"gradtx\.adam .*state\.mu does not match .*missing \['b'\]; unexpected \['c'\]",
        ),
        # state of another optimizer
        (
            lambda tx: tx.update(PARAMS, gradtx.sgd(0.1, momentum=0.9).init(PARAMS), PARAMS),
            r"gradtx\.adam: state was built by sgd\(Momentum\), not by this optimizer",
        ),
        # a state with the wrong number of stages
        (
            lambda tx: tx.update(PARAMS, _adam_state()[0], PARAMS),
            r"gradtx\.adam .*state has 3 entries for 2 stages",
        ),
    ],
    ids=["extra_leaf", "missing_leaf", "shape", "state_tree", "foreign_state", "stages"],
)
def test_mismatched_trees_name_optimizer_and_leaf(call, match):
    with pytest.raises(gradtx.TransformError, match=match):
        call(gradtx.adam(1e-3))


def test_shape_mismatch_of_state_names_leaf():
    # Without params only the state tells the shapes: checked before the rule runs (F05).
    with pytest.raises(
        gradtx.TransformError,
        match=re.escape("gradtx.adam (knobs): state.mu at ['b'] has shape (2,)"),
    ):
        gradtx.adam(1e-3).update(_tree(w=(3,), b=(4,)), _adam_state())


def test_missing_params_named():
    tx = gradtx.adamw(1e-3, weight_decay=0.1)
    with pytest.raises(ValueError, match=r"gradtx\.adamw .*update needs params"):
        tx.update(PARAMS, tx.init(PARAMS))


def test_apply_updates_mismatch_names_leaf():
    with pytest.raises(ValueError, match=r"apply_updates: .*\['b'\]"):
        gradtx.apply_updates(PARAMS, _tree(w=(3,)))


# --- leaves that are not floating point -------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8], ids=["int32", "bool", "u8"])
def test_non_float_params_rejected_at_init(dtype):
    params = {"w": jnp.ones(3, jnp.float32), "step": {"n": jnp.zeros(2, dtype)}}
    with pytest.raises(TypeError, match=r"gradtx\.adam .*params leaf at \['step'\]\['n'\]"):
        gradtx.adam(1e-3).init(params)


def test_non_float_updates_rejected():
    tx = gradtx.sgd(0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"gradtx\.sgd .*updates leaf at \['w'\] has dtype int32"):
        tx.update({"w": jnp.ones(3, jnp.int32), "b": jnp.ones(2)}, tx.init(PARAMS), PARAMS)


def test_non_array_leaf_rejected():
    with pytest.raises(TypeError, match=r"gradtx\.adam .*\['lr'\] is str"):
        gradtx.adam(1e-3).init({"w": jnp.ones(3), "lr": "fast"})


def test_integer_leaf_rejected():
    # complex leaves are accepted as in optax (issue #9); integer ones are not
    with pytest.raises(TypeError, match=r"\['z'\] has dtype int32"):
        gradtx.adam(1e-3).init({"z": jnp.ones(3, jnp.int32)})


# --- composition ----------------------------------------------------------------------------


def test_chain_rejects_non_transformation():
    with pytest.raises(TypeError, match=r"gradtx\.chain: stage 1 is float"):
        gradtx.chain(gradtx.clip(1.0), 0.1)


def test_knobs_reject_wrong_kind():
    with pytest.raises(TypeError, match=r"gradtx\.knobs: scale must be a Scale knob"):
        gradtx.optimizer(gradtx.Ema(0.9), gradtx.Momentum(0.9), 1e-3)


def test_sgd_nesterov_needs_momentum():
    with pytest.raises(ValueError, match=r"^gradtx\.sgd: nesterov=True needs a momentum$"):
        gradtx.sgd(0.1, nesterov=True)
