"""gradtx: composable, pure gradient transformations for JAX, built from the three knobs.

``θ ← θ − η_t · m_t / σ_t``: a direction g (momentum), a per-parameter scale σ and a schedule η.
"""

from . import schedules as schedules
from ._adafactor import FactoredScale as FactoredScale
from ._alias import adadelta as adadelta
from ._alias import adagrad as adagrad
from ._alias import adam as adam
from ._alias import adamax as adamax
from ._alias import adamw as adamw
from ._alias import amsgrad as amsgrad
from ._alias import nadam as nadam
from ._alias import nadamw as nadamw
from ._alias import rmsprop as rmsprop
from ._alias import sgd as sgd
from ._alias import sign_sgd as sign_sgd
from ._alias_more import adabelief as adabelief
from ._alias_more import adafactor as adafactor
from ._alias_more import lamb as lamb
from ._alias_more import lars as lars
from ._alias_more import lion as lion
from ._alias_more import radam as radam
from ._alias_more import yogi as yogi
from ._base import Context as Context
from ._base import GradientTransformation as GradientTransformation
from ._base import Stage as Stage
from ._base import apply_updates as apply_updates
from ._chain import Chain as Chain
from ._chain import chain as chain
from ._checkpoint import register_flax_serialization as register_flax_serialization
from ._checkpoint import register_if_flax_loaded as _register_if_flax_loaded
from ._clipping import adaptive_grad_clip as adaptive_grad_clip
from ._clipping import clip as clip
from ._clipping import clip_by_block_rms as clip_by_block_rms
from ._clipping import clip_by_global_norm as clip_by_global_norm
from ._clipping import global_norm as global_norm
from ._decay import add_decayed_weights as add_decayed_weights
from ._decay import scale_by_trust_ratio as scale_by_trust_ratio
from ._direction import Ema as Ema
from ._direction import Lion as Lion
from ._direction import Momentum as Momentum
from ._direction import NesterovEma as NesterovEma
from ._direction import Sign as Sign
from ._eta import identity as identity
from ._eta import scale as scale
from ._eta import scale_by_learning_rate as scale_by_learning_rate
from ._eta import scale_by_schedule as scale_by_schedule
from ._eta import set_to_zero as set_to_zero
from ._inspect import current_learning_rate as current_learning_rate
from ._inspect import hyperparams as hyperparams
from ._knobs import Direction as Direction
from ._knobs import Knobs as Knobs
from ._knobs import Scale as Scale
from ._optax_names import ema as ema
from ._optax_names import scale_by_adadelta as scale_by_adadelta
from ._optax_names import scale_by_adam as scale_by_adam
from ._optax_names import scale_by_adamax as scale_by_adamax
from ._optax_names import scale_by_amsgrad as scale_by_amsgrad
from ._optax_names import scale_by_belief as scale_by_belief
from ._optax_names import scale_by_factored_rms as scale_by_factored_rms
from ._optax_names import scale_by_lion as scale_by_lion
from ._optax_names import scale_by_radam as scale_by_radam
from ._optax_names import scale_by_rms as scale_by_rms
from ._optax_names import scale_by_rss as scale_by_rss
from ._optax_names import scale_by_sign as scale_by_sign
from ._optax_names import scale_by_stddev as scale_by_stddev
from ._optax_names import scale_by_yogi as scale_by_yogi
from ._optax_names import trace as trace
from ._optimizer import Optimizer as Optimizer
from ._optimizer import optimizer as optimizer
from ._packing import DEFAULT_THRESHOLD as DEFAULT_THRESHOLD
from ._packing import Layout as Layout
from ._packing import Packed as Packed
from ._packing import pack as pack
from ._packing import unpack as unpack
from ._packing_serialization import register_if_flax_loaded as _register_packed_if_flax_loaded
from ._scale import AdagradScale as AdagradScale
from ._scale import AdamaxScale as AdamaxScale
from ._scale import AdamScale as AdamScale
from ._scale import AmsgradScale as AmsgradScale
from ._scale import RMSPropScale as RMSPropScale
from ._scale_variants import AdaBeliefScale as AdaBeliefScale
from ._scale_variants import AdadeltaScale as AdadeltaScale
from ._scale_variants import RAdamScale as RAdamScale
from ._scale_variants import YogiScale as YogiScale
from ._state import State as State
from ._struct import hyper as hyper
from ._struct import static as static
from ._tree import TransformError as TransformError

# optax's schedule names at the top level, as optax has them (the same objects):
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

__version__ = "0.1.0"

_register_if_flax_loaded()  # State with flax.serialization, if flax is imported already
_register_packed_if_flax_loaded()  # and Packed
