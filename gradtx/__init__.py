"""gradtx: composable, pure gradient transformations for JAX, built from the three knobs.

``θ ← θ − η_t · m_t / σ_t``: a direction g (momentum), a per-parameter scale σ and a schedule η.
"""

from . import schedules as schedules

# _core: the protocol, Stage and Context, named State, chains, the knob bases, packed data
from ._core.chain import Chain as Chain
from ._core.chain import chain as chain
from ._core.context import Context as Context
from ._core.knobs import Direction as Direction
from ._core.knobs import Knobs as Knobs
from ._core.knobs import Scale as Scale
from ._core.packed import Layout as Layout
from ._core.packed import Packed as Packed
from ._core.packed import unpack as unpack
from ._core.stage import Stage as Stage
from ._core.state import State as State
from ._core.struct import hyper as hyper
from ._core.struct import static as static
from ._core.transformation import GradientTransformation as GradientTransformation
from ._core.transformation import apply_updates as apply_updates
from ._core.tree import TransformError as TransformError

# g, direction
from ._direction.ademamix import AdEMAMixMomentum as AdEMAMixMomentum
from ._direction.adopt import AdoptMomentum as AdoptMomentum
from ._direction.momentum import Ema as Ema
from ._direction.momentum import Momentum as Momentum
from ._direction.momentum import NesterovEma as NesterovEma
from ._direction.optimistic import OptimisticGradient as OptimisticGradient
from ._direction.sign import Lion as Lion
from ._direction.sign import Sign as Sign

# checkpoints (importing this registers State and Packed with flax.serialization as soon
# as flax is in use; see gradtx/_core/flax_hook.py)
from ._interop.checkpoint import register_flax_serialization as register_flax_serialization

# named optimizers, the builder, optax's scale_by_* names, inspection
from ._optimizers.adafactor import adafactor as adafactor
from ._optimizers.adagrad import adadelta as adadelta
from ._optimizers.adagrad import adagrad as adagrad
from ._optimizers.adagrad import rmsprop as rmsprop
from ._optimizers.adam import adam as adam
from ._optimizers.adam import adamax as adamax
from ._optimizers.adam import adamw as adamw
from ._optimizers.adam import amsgrad as amsgrad
from ._optimizers.adam import nadam as nadam
from ._optimizers.adam import nadamw as nadamw
from ._optimizers.adam_variants import adabelief as adabelief
from ._optimizers.adam_variants import radam as radam
from ._optimizers.adam_variants import yogi as yogi
from ._optimizers.adamaxw import adamaxw as adamaxw
from ._optimizers.adan import adan as adan
from ._optimizers.ademamix import ademamix as ademamix
from ._optimizers.ademamix import scale_by_ademamix as scale_by_ademamix
from ._optimizers.adopt import adopt as adopt
from ._optimizers.adopt import scale_by_adopt as scale_by_adopt
from ._optimizers.builder import Optimizer as Optimizer
from ._optimizers.builder import optimizer as optimizer
from ._optimizers.dadapt import dadapt_adamw as dadapt_adamw
from ._optimizers.fromage import fromage as fromage
from ._optimizers.hyperparams import current_learning_rate as current_learning_rate
from ._optimizers.hyperparams import hyperparams as hyperparams
from ._optimizers.lbfgs import lbfgs as lbfgs
from ._optimizers.lion import lion as lion
from ._optimizers.lr_free import dog as dog
from ._optimizers.lr_free import dowg as dowg
from ._optimizers.muon import muon as muon
from ._optimizers.muon import scale_by_muon as scale_by_muon
from ._optimizers.novograd import novograd as novograd
from ._optimizers.optax_names import ema as ema
from ._optimizers.optax_names import scale_by_adadelta as scale_by_adadelta
from ._optimizers.optax_names import scale_by_adam as scale_by_adam
from ._optimizers.optax_names import scale_by_adamax as scale_by_adamax
from ._optimizers.optax_names import scale_by_amsgrad as scale_by_amsgrad
from ._optimizers.optax_names import scale_by_belief as scale_by_belief
from ._optimizers.optax_names import scale_by_factored_rms as scale_by_factored_rms
from ._optimizers.optax_names import scale_by_lion as scale_by_lion
from ._optimizers.optax_names import scale_by_radam as scale_by_radam
from ._optimizers.optax_names import scale_by_rms as scale_by_rms
from ._optimizers.optax_names import scale_by_rss as scale_by_rss
from ._optimizers.optax_names import scale_by_sign as scale_by_sign
from ._optimizers.optax_names import scale_by_stddev as scale_by_stddev
from ._optimizers.optax_names import scale_by_yogi as scale_by_yogi
from ._optimizers.optax_names import trace as trace
from ._optimizers.optax_names_extra import scale_by_adan as scale_by_adan
from ._optimizers.optax_names_extra import scale_by_novograd as scale_by_novograd
from ._optimizers.optax_names_extra import (
    scale_by_optimistic_gradient as scale_by_optimistic_gradient,
)
from ._optimizers.optax_names_extra import scale_by_rprop as scale_by_rprop
from ._optimizers.optax_names_extra import scale_by_sm3 as scale_by_sm3
from ._optimizers.optimistic import optimistic_adam as optimistic_adam
from ._optimizers.optimistic import optimistic_adam_v2 as optimistic_adam_v2
from ._optimizers.optimistic import optimistic_gradient_descent as optimistic_gradient_descent
from ._optimizers.prodigy import prodigy as prodigy
from ._optimizers.schedule_free import schedule_free as schedule_free
from ._optimizers.schedule_free import schedule_free_adamw as schedule_free_adamw
from ._optimizers.schedule_free import schedule_free_eval_params as schedule_free_eval_params
from ._optimizers.schedule_free import schedule_free_sgd as schedule_free_sgd
from ._optimizers.sgd import sgd as sgd
from ._optimizers.sgd import sign_sgd as sign_sgd
from ._optimizers.sgd_variants import noisy_sgd as noisy_sgd
from ._optimizers.sgd_variants import polyak_sgd as polyak_sgd
from ._optimizers.sign_family import rprop as rprop
from ._optimizers.sign_family import signum as signum
from ._optimizers.sm3 import sm3 as sm3
from ._optimizers.soap import soap as soap
from ._optimizers.sophia import sophia as sophia
from ._optimizers.trust_ratio import lamb as lamb
from ._optimizers.trust_ratio import lars as lars

# building the packed layout
from ._packing.linen import PackedTrainState as PackedTrainState
from ._packing.nnx import PackedOptimizer as PackedOptimizer
from ._packing.pack import DEFAULT_THRESHOLD as DEFAULT_THRESHOLD
from ._packing.pack import pack as pack
from ._packing.report import PackReport as PackReport
from ._packing.report import pack_report as pack_report
from ._packing.wrap import pack_like as pack_like
from ._packing.wrap import packed_loss as packed_loss

# precision and scale: state dtypes, rounding of low-precision params, ZeRO-1, memory
from ._precision.dtypes import WithStateDtypes as WithStateDtypes
from ._precision.dtypes import with_state_dtypes as with_state_dtypes
from ._precision.memory import MemoryReport as MemoryReport
from ._precision.memory import memory_report as memory_report
from ._precision.offload import OffloadState as OffloadState
from ._precision.offload import memory_kinds as memory_kinds
from ._precision.offload import offload_state as offload_state
from ._precision.param_rounding import RoundParams as RoundParams
from ._precision.param_rounding import round_params as round_params
from ._precision.quantized import Int8Blocks as Int8Blocks
from ._precision.quantized import int8_blocks as int8_blocks
from ._precision.zero import ShardPlan as ShardPlan
from ._precision.zero import ShardState as ShardState
from ._precision.zero import shard_state as shard_state
from ._scale.adam import AdamaxScale as AdamaxScale

# σ, per-parameter scale
from ._scale.adam import AdamScale as AdamScale
from ._scale.adam import AmsgradScale as AmsgradScale
from ._scale.adan import AdanScale as AdanScale
from ._scale.adopt import AdoptScale as AdoptScale
from ._scale.factored import FactoredScale as FactoredScale
from ._scale.novograd import NovogradScale as NovogradScale
from ._scale.rms import AdagradScale as AdagradScale
from ._scale.rms import RMSPropScale as RMSPropScale
from ._scale.rprop import RpropScale as RpropScale
from ._scale.sm3 import SM3Scale as SM3Scale
from ._scale.variants import AdaBeliefScale as AdaBeliefScale
from ._scale.variants import AdadeltaScale as AdadeltaScale
from ._scale.variants import RAdamScale as RAdamScale
from ._scale.variants import YogiScale as YogiScale

# stages before or after the knobs
from ._stages.apply_every import apply_every as apply_every
from ._stages.backtracking import (
    scale_by_backtracking_linesearch as scale_by_backtracking_linesearch,
)
from ._stages.clipping import adaptive_grad_clip as adaptive_grad_clip
from ._stages.clipping import clip as clip
from ._stages.clipping import clip_by_block_rms as clip_by_block_rms
from ._stages.clipping import clip_by_global_norm as clip_by_global_norm
from ._stages.clipping import global_norm as global_norm
from ._stages.dog import scale_by_distance_over_gradients as scale_by_distance_over_gradients
from ._stages.dog import scale_by_dog as scale_by_dog
from ._stages.dog import scale_by_dowg as scale_by_dowg
from ._stages.hessian import gnb_estimator_diag_hessian as gnb_estimator_diag_hessian
from ._stages.hessian import (
    hutchinson_estimator_diag_hessian as hutchinson_estimator_diag_hessian,
)
from ._stages.lbfgs import scale_by_lbfgs as scale_by_lbfgs
from ._stages.linesearch import value_and_grad_from_state as value_and_grad_from_state
from ._stages.noise import add_noise as add_noise
from ._stages.normalize import centralize as centralize
from ._stages.normalize import normalize_by_update_norm as normalize_by_update_norm
from ._stages.orthogonalize import orthogonalize as orthogonalize
from ._stages.per_example import per_example_global_norm_clip as per_example_global_norm_clip
from ._stages.per_example import per_example_layer_norm_clip as per_example_layer_norm_clip
from ._stages.polyak import scale_by_polyak as scale_by_polyak
from ._stages.trust_ratio import scale_by_trust_ratio as scale_by_trust_ratio
from ._stages.weight_decay import add_decayed_weights as add_decayed_weights
from ._stages.zoom import scale_by_zoom_linesearch as scale_by_zoom_linesearch

# wrappers around any transformation (optax's names and semantics)
from ._wrappers.accumulation import MultiSteps as MultiSteps
from ._wrappers.averages import EmaParams as EmaParams
from ._wrappers.averages import SwaParams as SwaParams
from ._wrappers.averages import ema_params as ema_params
from ._wrappers.averages import eval_params as eval_params
from ._wrappers.averages import swa_params as swa_params
from ._wrappers.cautious import cautious as cautious
from ._wrappers.counts import skip_counts as skip_counts
from ._wrappers.diagnostics import diagnostics as diagnostics
from ._wrappers.diagnostics import plot_diagnostics as plot_diagnostics
from ._wrappers.explain import explain as explain
from ._wrappers.finite import apply_if_finite as apply_if_finite
from ._wrappers.groups import group as group
from ._wrappers.groups import groups as groups
from ._wrappers.groups import no_decay as no_decay
from ._wrappers.guard import skip_nonfinite as skip_nonfinite
from ._wrappers.guard import skip_spikes as skip_spikes
from ._wrappers.inject import inject_hyperparams as inject_hyperparams
from ._wrappers.live import live as live
from ._wrappers.lookahead import LookaheadParams as LookaheadParams
from ._wrappers.lookahead import lookahead as lookahead
from ._wrappers.loss_scale import dynamic_loss_scale as dynamic_loss_scale
from ._wrappers.loss_scale import loss_scale_value as loss_scale_value
from ._wrappers.masking import freeze as freeze
from ._wrappers.masking import masked as masked
from ._wrappers.migrate import Migration as Migration
from ._wrappers.migrate import migrate as migrate
from ._wrappers.partition import multi_transform as multi_transform
from ._wrappers.partition import partition as partition
from ._wrappers.plateau import reduce_on_plateau as reduce_on_plateau
from ._wrappers.sam import sam as sam
from ._wrappers.setting import set_hyperparams as set_hyperparams
from ._wrappers.setting import set_schedule_multipliers as set_schedule_multipliers

# optax's schedule names at the top level, as optax has them (the same objects as in
# gradtx.schedules)
from .schedules import constant_schedule as constant_schedule
from .schedules import cosine_decay_schedule as cosine_decay_schedule
from .schedules import cosine_onecycle_schedule as cosine_onecycle_schedule
from .schedules import exponential_decay as exponential_decay
from .schedules import join_schedules as join_schedules
from .schedules import linear_onecycle_schedule as linear_onecycle_schedule
from .schedules import linear_schedule as linear_schedule
from .schedules import piecewise_constant_schedule as piecewise_constant_schedule
from .schedules import piecewise_interpolate_schedule as piecewise_interpolate_schedule
from .schedules import polynomial_schedule as polynomial_schedule
from .schedules import sgdr_schedule as sgdr_schedule
from .schedules import warmup_constant_schedule as warmup_constant_schedule
from .schedules import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule
from .schedules import warmup_exponential_decay_schedule as warmup_exponential_decay_schedule

# η, the learning rate as a stage (the schedules themselves: gradtx.schedules)
from .schedules._learning_rate import identity as identity
from .schedules._learning_rate import scale as scale
from .schedules._learning_rate import scale_by_learning_rate as scale_by_learning_rate
from .schedules._learning_rate import scale_by_schedule as scale_by_schedule
from .schedules._learning_rate import set_to_zero as set_to_zero

__version__ = "0.1.0"
