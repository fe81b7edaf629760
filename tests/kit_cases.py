"""The table of every public transformation, shared by tests/test_conformance.py and
tools/run_kit.py (so it imports neither pytest nor hypothesis).

``FACTORIES`` maps every public name that is, or returns, a :class:`gradtx.GradientTransformation`
to a list of ``(variant id, factory)``; :func:`discover` finds those names in the public API, so a
new one without an entry fails ``test_every_public_transformation_has_an_entry``.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gradtx
from gradtx import GradientTransformation
from gradtx.testing import default_params

__all__ = ["FACTORIES", "KIT_ARGS", "NOT_TRANSFORMATIONS", "CASES", "discover", "decay_mask"]


def decay_mask(params: Any) -> Any:
    return jax.tree_util.tree_map(lambda p: np.ndim(p) >= 2, params)


SCHEDULE = gradtx.schedules.linear(1e-2, 1e-3, 10)
BF16 = jnp.bfloat16

#: Public name -> list of (variant id, factory); ``None`` for an abstract base class.
FACTORIES: dict[str, list[tuple[str, Callable[[], Any]]] | None] = {
    # named optimizers
    "sgd": [
        ("sgd", lambda: gradtx.sgd(0.1)),
        ("sgd_nesterov", lambda: gradtx.sgd(0.1, momentum=0.9, nesterov=True)),
    ],
    "sign_sgd": [("sign_sgd", lambda: gradtx.sign_sgd(0.1))],
    "adagrad": [
        ("adagrad", lambda: gradtx.adagrad(0.1)),
        ("adagrad_average", lambda: gradtx.adagrad(0.1, average=True)),
    ],
    "rmsprop": [
        ("rmsprop", lambda: gradtx.rmsprop(0.01)),
        ("rmsprop_centered_momentum", lambda: gradtx.rmsprop(0.01, centered=True, momentum=0.9)),
    ],
    "adadelta": [("adadelta_weight_decay", lambda: gradtx.adadelta(weight_decay=0.01))],
    "adam": [
        ("adam", lambda: gradtx.adam(1e-3)),
        ("adam_scheduled", lambda: gradtx.adam(SCHEDULE)),
    ],
    "adamw": [("adamw_masked", lambda: gradtx.adamw(1e-3, weight_decay=0.01, mask=decay_mask))],
    "nadam": [("nadam", lambda: gradtx.nadam(1e-3))],
    "nadamw": [("nadamw", lambda: gradtx.nadamw(1e-3))],
    "adamax": [("adamax", lambda: gradtx.adamax(1e-3))],
    "amsgrad": [("amsgrad", lambda: gradtx.amsgrad(1e-3))],
    "adabelief": [("adabelief", lambda: gradtx.adabelief(1e-3))],
    "yogi": [("yogi", lambda: gradtx.yogi(1e-3))],
    "radam": [("radam", lambda: gradtx.radam(1e-3))],
    "lion": [("lion", lambda: gradtx.lion(1e-4))],
    # issue 13: Muon (its stage alone too), ADOPT, AdEMAMix, the cautious wrapper
    "muon": [("muon", lambda: gradtx.muon(0.02, weight_decay=0.01))],
    "scale_by_muon": [("scale_by_muon", lambda: gradtx.scale_by_muon())],
    "orthogonalize": [
        (
            "orthogonalize_consistent_rms",
            lambda: gradtx.orthogonalize(scaling="consistent_rms", consistent_rms=0.2),
        )
    ],
    "adopt": [("adopt", lambda: gradtx.adopt(1e-3))],
    "scale_by_adopt": [("scale_by_adopt", lambda: gradtx.scale_by_adopt(nesterov=True))],
    "ademamix": [
        (
            "ademamix_warmups",
            lambda: gradtx.ademamix(1e-3, alpha_warmup_steps=5, b3_warmup_steps=5),
        )
    ],
    "scale_by_ademamix": [("scale_by_ademamix", lambda: gradtx.scale_by_ademamix())],
    "cautious": [
        ("cautious_adamw", lambda: gradtx.cautious(gradtx.adamw(1e-3, weight_decay=0.01)))
    ],
    "lamb": [("lamb", lambda: gradtx.lamb(1e-3, weight_decay=0.01))],
    "lars": [("lars", lambda: gradtx.lars(0.1, weight_decay=1e-4))],
    "adafactor": [
        ("adafactor", lambda: gradtx.adafactor()),
        (
            "adafactor_factored_momentum",
            lambda: gradtx.adafactor(  # momentum in the param dtype: optax's default float32
                SCHEDULE,  # would be narrower than float64 params (an advisory policy miss)
                min_dim_size_to_factor=2,
                momentum=0.9,
                dtype_momentum=None,
                weight_decay_rate=1e-3,
            ),
        ),
    ],
    # optax's remaining named optimizers (tests/test_optax_remaining*.py)
    "adamaxw": [
        ("adamaxw_masked", lambda: gradtx.adamaxw(1e-3, weight_decay=0.01, mask=decay_mask))
    ],
    "adan": [("adan", lambda: gradtx.adan(SCHEDULE, weight_decay=0.01))],
    "novograd": [("novograd", lambda: gradtx.novograd(1e-3, weight_decay=0.01))],
    "optimistic_gradient_descent": [
        ("optimistic_gradient_descent", lambda: gradtx.optimistic_gradient_descent(0.1))
    ],
    "optimistic_adam": [("optimistic_adam", lambda: gradtx.optimistic_adam(1e-3))],
    "optimistic_adam_v2": [("optimistic_adam_v2", lambda: gradtx.optimistic_adam_v2(SCHEDULE))],
    "signum": [("signum", lambda: gradtx.signum(1e-3))],
    "rprop": [("rprop", lambda: gradtx.rprop(1e-3))],
    "sm3": [("sm3", lambda: gradtx.sm3(0.1))],
    "fromage": [("fromage_scheduled", lambda: gradtx.fromage(SCHEDULE))],
    "noisy_sgd": [("noisy_sgd", lambda: gradtx.noisy_sgd(0.1, key=0))],
    "polyak_sgd": [("polyak_sgd", lambda: gradtx.polyak_sgd())],
    # stages and combinators
    "clip": [("clip", lambda: gradtx.clip(1.0))],
    "clip_by_global_norm": [("clip_by_global_norm", lambda: gradtx.clip_by_global_norm(1.0))],
    "clip_by_block_rms": [("clip_by_block_rms", lambda: gradtx.clip_by_block_rms(1.0))],
    "adaptive_grad_clip": [("adaptive_grad_clip", lambda: gradtx.adaptive_grad_clip(0.01))],
    # wrappers (the new ones around sgd with momentum: a stateful inner, cheaper to compile
    # than adam across the kit's dtypes; adam inside each is tested in its own file)
    "masked": [
        ("masked_adam", lambda: gradtx.masked(gradtx.adam(1e-3), decay_mask)),
    ],
    "freeze": [("freeze", lambda: gradtx.freeze(decay_mask))],
    "partition": [
        (
            "partition",
            lambda: gradtx.partition(
                {"matrix": gradtx.adamw(1e-3), "other": gradtx.sgd(0.1, momentum=0.9)},
                lambda p: jax.tree_util.tree_map(
                    lambda x: "matrix" if np.ndim(x) >= 2 else "other", p
                ),
            ),
        )
    ],
    "multi_transform": [
        (
            "multi_transform",
            lambda: gradtx.multi_transform(
                {True: gradtx.adam(1e-3), False: gradtx.set_to_zero()}, decay_mask
            ),
        )
    ],
    "MultiSteps": [
        (
            "multi_steps",
            lambda: gradtx.MultiSteps(gradtx.adam(1e-3), 2, accumulator_dtype=None),
        ),
        (
            "multi_steps_in_place",
            lambda: gradtx.MultiSteps(
                gradtx.adam(SCHEDULE), 2, accumulator_dtype=None, in_place=True
            ),
        ),
    ],
    "apply_if_finite": [
        ("apply_if_finite", lambda: gradtx.apply_if_finite(gradtx.adam(1e-3), 2)),
    ],
    "live": [
        ("live_adamw", lambda: gradtx.live(gradtx.adamw(SCHEDULE, weight_decay=0.01))),
    ],
    "inject_hyperparams": [
        (
            "inject_hyperparams_adamw",
            lambda: gradtx.inject_hyperparams(gradtx.adamw)(SCHEDULE, weight_decay=0.01),
        ),
    ],
    "groups": [
        (
            "groups_no_decay_frozen",
            lambda: gradtx.groups(
                gradtx.adamw(SCHEDULE, weight_decay=0.01),
                [
                    gradtx.group("no_decay", r"^b$", weight_decay=0.0, lr_mult=2.0),
                    gradtx.group("frozen", r"^s$", frozen=True),
                ],
            ),
        ),
    ],
    "reduce_on_plateau": [
        (
            "reduce_on_plateau",
            lambda: gradtx.reduce_on_plateau(0.5, 1, cooldown=1, accumulation_size=2),
        )
    ],
    # lookahead's params are a (fast, slow) pair and its gradients the fast half only: the kit
    # runs on it through a view in tests/test_plateau_lookahead.py
    "lookahead": None,
    "ema_params": [
        ("ema_params", lambda: gradtx.ema_params(gradtx.sgd(0.1, momentum=0.9))),
        (
            "ema_params_debias",
            lambda: gradtx.ema_params(gradtx.sgd(0.1), 0.9, debias=True, start=1, every=2),
        ),
    ],
    "schedule_free": [
        (
            "schedule_free_adam",
            lambda: gradtx.schedule_free(gradtx.adam(SCHEDULE, b1=0.0), 1e-2),
        )
    ],
    "schedule_free_sgd": [
        (
            "schedule_free_sgd",
            lambda: gradtx.schedule_free_sgd(0.1, warmup_steps=3, weight_decay=1e-3),
        )
    ],
    "schedule_free_adamw": [
        (
            "schedule_free_adamw",
            lambda: gradtx.schedule_free_adamw(1e-3, warmup_steps=3, weight_decay=1e-2),
        )
    ],
    "skip_nonfinite": [
        ("skip_nonfinite", lambda: gradtx.skip_nonfinite(gradtx.sgd(0.1, momentum=0.9), 2)),
        (
            "skip_nonfinite_in_place",
            lambda: gradtx.skip_nonfinite(gradtx.adamw(1e-3, weight_decay=0.01), 2, in_place=True),
        ),
    ],
    "with_state_dtypes": [
        (
            "state_dtypes_bf16",
            lambda: gradtx.with_state_dtypes(gradtx.adamw(1e-3), {"mu": BF16, "nu": BF16}),
        ),
        (
            "state_dtypes_stochastic",
            lambda: gradtx.with_state_dtypes(
                gradtx.adam(SCHEDULE), {"nu": BF16}, rounding="stochastic"
            ),
        ),
        (
            # blocks of 4 and no size threshold: the kit's small leaves are quantised, padded
            "state_dtypes_int8",
            lambda: gradtx.with_state_dtypes(
                gradtx.adamw(1e-3),
                {
                    "mu": gradtx.int8_blocks(4, min_size=0),
                    "nu": gradtx.int8_blocks(4, signed=False, min_size=0),
                },
            ),
        ),
        (
            "state_dtypes_int8_stochastic",
            lambda: gradtx.with_state_dtypes(
                gradtx.adam(SCHEDULE),
                {"mu": gradtx.int8_blocks(3, min_size=0), "nu": gradtx.int8_blocks(signed=False)},
                rounding="stochastic",
            ),
        ),
    ],
    "round_params": [
        ("round_params_stochastic", lambda: gradtx.round_params(gradtx.sgd(0.1, momentum=0.9))),
        (
            "round_params_kahan",
            lambda: gradtx.round_params(gradtx.adam(SCHEDULE), rounding="kahan"),
        ),
    ],
    "RoundParams": [("RoundParams_class", lambda: gradtx.RoundParams(gradtx.sgd(0.1), "kahan"))],
    "skip_spikes": [
        (
            "skip_spikes",
            # window 3, warmup 1, k 0.5: the guard is armed and skips within the kit's few steps
            lambda: gradtx.skip_spikes(gradtx.sgd(0.1, momentum=0.9), window=3, k=0.5, warmup=1),
        ),
        (
            "skip_spikes_loss",
            lambda: gradtx.skip_spikes(gradtx.sgd(0.1), window=4, warmup=1, metric="loss"),
        ),
    ],
    "dynamic_loss_scale": [
        ("dynamic_loss_scale", lambda: gradtx.dynamic_loss_scale(gradtx.sgd(0.1, momentum=0.9)))
    ],
    "EmaParams": [("EmaParams_class", lambda: gradtx.EmaParams(gradtx.sgd(0.1), decay=0.9))],
    "WithStateDtypes": [
        ("WithStateDtypes_class", lambda: gradtx.WithStateDtypes(gradtx.adam(1e-3), {"nu": BF16}))
    ],
    # ZeRO-1 over the axis the kit's sharding check names "kit" (its params are sharded over
    # it there, so the slots follow them); the one-device mesh is used where the kit's params
    # are on no mesh (every other check)
    "shard_state": [
        (
            "shard_state_adamw",
            lambda: gradtx.shard_state(
                gradtx.adamw(1e-3, weight_decay=0.01),
                "kit",
                mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("kit",)),
            ),
        )
    ],
    "ShardState": [
        (
            "ShardState_class",
            lambda: gradtx.ShardState(
                gradtx.sgd(0.1, momentum=0.9),
                "kit",
                jax.sharding.Mesh(np.array(jax.devices()[:1]), ("kit",)),
            ),
        )
    ],
    # offload_state works on CPU (pinned_host exists there), but the kit's sharding rule
    # compares memory kinds (gradtx/testing/_checks_sharding.py `_same`) and the slots are on
    # pinned_host on purpose: tests/test_offload.py runs every other check, strict, and checks
    # the placement over the devices itself
    "offload_state": None,
    "OffloadState": None,
    "SwaParams": [("SwaParams_class", lambda: gradtx.SwaParams(gradtx.sgd(0.1), start=2))],
    "swa_params": [
        ("swa_params", lambda: gradtx.swa_params(gradtx.sgd(0.1, 0.9), start=1, every=2))
    ],
    "add_decayed_weights": [
        ("add_decayed_weights", lambda: gradtx.add_decayed_weights(1e-4, decay_mask))
    ],
    "scale_by_trust_ratio": [("scale_by_trust_ratio", lambda: gradtx.scale_by_trust_ratio())],
    "scale_by_polyak": [("scale_by_polyak", lambda: gradtx.scale_by_polyak())],
    "add_noise": [("add_noise", lambda: gradtx.add_noise(0.01, 0.55, key=0))],
    "scale": [("scale", lambda: gradtx.scale(0.5))],
    "scale_by_learning_rate": [
        ("scale_by_learning_rate", lambda: gradtx.scale_by_learning_rate(SCHEDULE))
    ],
    "chain": [
        (
            "chain",
            lambda: gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(1e-3)),
        )
    ],
    "optimizer": [
        (
            "optimizer",
            lambda: gradtx.optimizer(
                gradtx.Ema(0.9),
                gradtx.RMSPropScale(0.99),
                1e-3,
                before=(gradtx.clip(1.0),),
                name="custom",
            ),
        )
    ],
    # optax's names (gradtx/_optimizers/optax_names.py, gradtx/schedules/_learning_rate.py),
    # each with its defaults
    "scale_by_adam": [("scale_by_adam", lambda: gradtx.scale_by_adam())],
    "scale_by_adamax": [("scale_by_adamax", lambda: gradtx.scale_by_adamax())],
    "scale_by_amsgrad": [("scale_by_amsgrad", lambda: gradtx.scale_by_amsgrad())],
    "scale_by_belief": [("scale_by_belief", lambda: gradtx.scale_by_belief())],
    "scale_by_yogi": [("scale_by_yogi", lambda: gradtx.scale_by_yogi())],
    "scale_by_radam": [("scale_by_radam", lambda: gradtx.scale_by_radam())],
    "scale_by_rms": [("scale_by_rms", lambda: gradtx.scale_by_rms())],
    "scale_by_stddev": [("scale_by_stddev", lambda: gradtx.scale_by_stddev())],
    "scale_by_rss": [("scale_by_rss", lambda: gradtx.scale_by_rss())],
    "scale_by_adadelta": [("scale_by_adadelta", lambda: gradtx.scale_by_adadelta())],
    "scale_by_lion": [("scale_by_lion", lambda: gradtx.scale_by_lion())],
    "scale_by_sign": [("scale_by_sign", lambda: gradtx.scale_by_sign())],
    "scale_by_factored_rms": [
        ("scale_by_factored_rms", lambda: gradtx.scale_by_factored_rms(min_dim_size_to_factor=2))
    ],
    "scale_by_schedule": [("scale_by_schedule", lambda: gradtx.scale_by_schedule(SCHEDULE))],
    "trace": [("trace", lambda: gradtx.trace(0.9))],
    "ema": [("ema", lambda: gradtx.ema(0.9))],
    "scale_by_adan": [("scale_by_adan", lambda: gradtx.scale_by_adan())],
    "scale_by_novograd": [("scale_by_novograd", lambda: gradtx.scale_by_novograd())],
    "scale_by_optimistic_gradient": [
        ("scale_by_optimistic_gradient", lambda: gradtx.scale_by_optimistic_gradient())
    ],
    "scale_by_rprop": [("scale_by_rprop", lambda: gradtx.scale_by_rprop(1e-3))],
    "scale_by_sm3": [("scale_by_sm3", lambda: gradtx.scale_by_sm3())],
    "identity": [("identity", lambda: gradtx.identity())],
    "set_to_zero": [("set_to_zero", lambda: gradtx.set_to_zero())],
    # public classes
    "Chain": [("Chain", lambda: gradtx.Chain((gradtx.scale(0.5), gradtx.sgd(0.1))))],
    "Knobs": [("Knobs", lambda: gradtx.Knobs(gradtx.Momentum(0.9), gradtx.AdagradScale()))],
    "Optimizer": [
        (
            "Optimizer",
            lambda: gradtx.Optimizer(
                (gradtx.Knobs(gradtx.Ema(0.9), gradtx.AdamScale()), gradtx.scale(-1e-3)),
                (),
                "optimizer_class",
            ),
        )
    ],
    "GradientTransformation": None,  # abstract base
    "Stage": None,  # abstract base
    # L-BFGS and the line searches (gradtx/_optimizers/lbfgs.py, gradtx/_stages/); they need
    # value_fn (KIT_ARGS), and compute value and grad from it
    "lbfgs": [("lbfgs", lambda: gradtx.lbfgs())],
    "scale_by_lbfgs": [("scale_by_lbfgs", lambda: gradtx.scale_by_lbfgs(memory_size=3))],
    "scale_by_zoom_linesearch": [
        ("scale_by_zoom_linesearch", lambda: gradtx.scale_by_zoom_linesearch(8, 2.0))
    ],
    "scale_by_backtracking_linesearch": [
        (
            "scale_by_backtracking_linesearch",
            lambda: gradtx.scale_by_backtracking_linesearch(8, store_grad=True),
        )
    ],
    # optax's remaining transforms, DoG and the learning-rate-free optimizers (issue 13)
    "centralize": [("centralize", lambda: gradtx.centralize())],
    "normalize_by_update_norm": [
        ("normalize_by_update_norm", lambda: gradtx.normalize_by_update_norm(-1.0))
    ],
    "apply_every": [("apply_every", lambda: gradtx.apply_every(2))],
    "scale_by_distance_over_gradients": [
        (  # init_params in the param dtype: optax's float32 is narrower than float64 params
            "scale_by_distance_over_gradients",
            lambda: gradtx.scale_by_distance_over_gradients(param_dtype=None),
        )
    ],
    "scale_by_dog": [("scale_by_dog", lambda: gradtx.scale_by_dog(("heuristic", 1e-4)))],
    "scale_by_dowg": [("scale_by_dowg", lambda: gradtx.scale_by_dowg())],
    "dog": [
        ("dog", lambda: gradtx.dog()),
        (
            "dog_first_step_decay",
            lambda: gradtx.dog(
                SCHEDULE, ("learning_rate", 1e-2), weight_decay=1e-4, mask=decay_mask
            ),
        ),
    ],
    "dowg": [("dowg", lambda: gradtx.dowg(weight_decay=1e-4))],
    "prodigy": [
        ("prodigy", lambda: gradtx.prodigy()),
        (
            "prodigy_scheduled_safeguard",
            lambda: gradtx.prodigy(SCHEDULE, weight_decay=1e-2, safeguard_warmup=True),
        ),
    ],
    "dadapt_adamw": [("dadapt_adamw", lambda: gradtx.dadapt_adamw(weight_decay=1e-2))],
    # SAM, Sophia and its estimators, SOAP (issue 13); Sophia's need obj_fn (KIT_ARGS)
    "sam": [
        (
            "sam",
            lambda: gradtx.sam(
                gradtx.sgd(0.1, momentum=0.9),
                gradtx.chain(gradtx.normalize_by_update_norm(), gradtx.sgd(0.05)),
            ),
        ),
        (
            "sam_opaque",
            lambda: gradtx.sam(gradtx.sgd(0.1, momentum=0.9), gradtx.sgd(0.05), 3, False, True),
        ),
    ],
    "sophia": [("sophia", lambda: gradtx.sophia(1e-3, update_interval=2))],
    "hutchinson_estimator_diag_hessian": [
        ("hutchinson_estimator_diag_hessian", lambda: gradtx.hutchinson_estimator_diag_hessian())
    ],
    "gnb_estimator_diag_hessian": [
        ("gnb_estimator_diag_hessian", lambda: gradtx.gnb_estimator_diag_hessian(4.0))
    ],
    "soap": [("soap", lambda: gradtx.soap(1e-3, precondition_frequency=2, weight_decay=0.01))],
}

#: Public functions whose return annotation does not say what they return (``Any`` or none),
#: checked here by hand: none returns a transformation.
NOT_TRANSFORMATIONS = {
    "apply_updates",
    "current_learning_rate",
    "eval_params",
    "schedule_free_eval_params",
    "plot_diagnostics",
    "hyper",
    "pack_like",
    "packed_loss",
    "set_hyperparams",
    "set_schedule_multipliers",
    "static",
    "unpack",
}


def _returns(fn: Any) -> Any:
    try:
        return typing.get_type_hints(fn).get("return", Any)
    except Exception:  # noqa: BLE001  (an annotation that does not resolve says nothing)
        return Any


def _is_tx_type(t: Any) -> bool | None:
    """True/False for a type that is/is not a transformation, None when it does not say."""
    if t is Any:
        return None
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):  # Optional[X], X | None, ...
        verdicts = [_is_tx_type(a) for a in typing.get_args(t) if a is not type(None)]
        return None if None in verdicts else any(verdicts)
    if origin is collections.abc.Callable:  # a factory of transformations (inject_hyperparams)
        args = typing.get_args(t)
        return _is_tx_type(args[-1]) if args else None
    t = origin or t  # dict[str, Any] -> dict
    return inspect.isclass(t) and issubclass(t, GradientTransformation)


def discover() -> tuple[set[str], set[str]]:
    """(public names that are transformations or make them, public functions that do not say)."""
    found, unclear = set(), set()
    for name in dir(gradtx):
        if name.startswith("_"):
            continue
        obj = getattr(gradtx, name)
        if inspect.ismodule(obj):
            continue
        if inspect.isclass(obj):
            if issubclass(obj, GradientTransformation):
                found.add(name)
        elif callable(obj):
            verdict = _is_tx_type(_returns(obj))
            if verdict:
                found.add(name)
            elif verdict is None:
                unclear.add(name)
    return found, unclear


#: Every (variant id, factory) of FACTORIES, abstract bases left out.
#: Variant id -> the keyword arguments of ``check_transformation`` it needs.
def kit_objective(params: Any) -> jax.Array:
    """``½‖params‖²`` of any tree (in float32): the ``value_fn`` of the line searches' cases."""
    leaves = jax.tree_util.tree_leaves(params)
    return 0.5 * sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves), jnp.float32(0))


def kit_grad_fn(params: Any, i: int) -> Any:
    """The gradient of :func:`kit_objective` at ``params``: SAM's ``grad_fn`` (opaque mode)."""
    return params


KIT_ARGS: dict[str, dict[str, Any]] = {
    "reduce_on_plateau": {"extra_args": {"value": np.float32(1.0)}},
    "skip_spikes_loss": {"extra_args": {"loss": np.float32(1.0)}},
    "polyak_sgd": {"extra_args": {"value": np.float32(1.0)}},
    "scale_by_polyak": {"extra_args": {"value": np.float32(1.0)}},
    **{
        case: {"extra_args": {"value_fn": kit_objective}}
        for case in (
            "lbfgs",
            "scale_by_zoom_linesearch",
            "scale_by_backtracking_linesearch",
        )
    },
    **{
        case: {"extra_args": {"obj_fn": kit_objective}}
        for case in ("sophia", "hutchinson_estimator_diag_hessian", "gnb_estimator_diag_hessian")
    },
    "sam_opaque": {"extra_args": {"grad_fn": kit_grad_fn}},
    # a square matrix: the default (8, 4) one makes SOAP's first L = (1 − β)·g gᵀ of rank 4,
    # whose null space has no preferred basis (the eigensolver picks one, and picks another
    # for another β: vmap over halved hyperparameters would compare two valid choices)
    "soap": {"params": {**default_params(), "w": default_params()["w"][:4]}},
}

CASES = [case for variants in FACTORIES.values() if variants for case in variants]
