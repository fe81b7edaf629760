"""Schedules of the step count for η (or any hyperparameter). See docs/schedules.md.

Each schedule is a frozen, hashable dataclass pytree: ``schedule(count) -> float32``, with
``count`` the number of updates already applied (0 at the first update). Float values are
traced leaves, step counts and flags are static configuration. Every schedule has a class
(``WarmupCosineDecay``) and a lowercase factory (``warmup_cosine_decay``).

optax's names (``warmup_cosine_decay_schedule``, ...) work too, with optax's signatures; they
are listed in :data:`OPTAX_NAMES`.
"""

from ._base import Schedule as Schedule
from ._basic import Constant as Constant
from ._basic import Linear as Linear
from ._basic import constant as constant
from ._basic import linear as linear
from ._cyclic import CosineRestarts as CosineRestarts
from ._cyclic import CyclicTriangular as CyclicTriangular
from ._cyclic import OneCycle as OneCycle
from ._cyclic import cosine_restarts as cosine_restarts
from ._cyclic import cyclic_triangular as cyclic_triangular
from ._cyclic import one_cycle as one_cycle
from ._cyclic import sgdr as sgdr
from ._decay import CosineDecay as CosineDecay
from ._decay import ExponentialDecay as ExponentialDecay
from ._decay import PiecewiseConstant as PiecewiseConstant
from ._decay import Polynomial as Polynomial
from ._decay import cosine_decay as cosine_decay
from ._decay import exponential_decay as exponential_decay
from ._decay import piecewise_constant as piecewise_constant
from ._decay import polynomial as polynomial
from ._interpolate import PiecewiseInterpolate as PiecewiseInterpolate
from ._join import JoinSchedules as JoinSchedules
from ._join import join_schedules as join_schedules
from ._optax import OPTAX_NAMES as OPTAX_NAMES
from ._optax import constant_schedule as constant_schedule
from ._optax import cosine_decay_schedule as cosine_decay_schedule
from ._optax import cosine_onecycle_schedule as cosine_onecycle_schedule
from ._optax import linear_onecycle_schedule as linear_onecycle_schedule
from ._optax import linear_schedule as linear_schedule
from ._optax import piecewise_constant_schedule as piecewise_constant_schedule
from ._optax import piecewise_interpolate_schedule as piecewise_interpolate_schedule
from ._optax import polynomial_schedule as polynomial_schedule
from ._optax import sgdr_schedule as sgdr_schedule
from ._optax import warmup_constant_schedule as warmup_constant_schedule
from ._optax import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule
from ._optax import warmup_exponential_decay_schedule as warmup_exponential_decay_schedule
from ._warmup import InverseSqrt as InverseSqrt
from ._warmup import WarmupConstant as WarmupConstant
from ._warmup import WarmupCosineDecay as WarmupCosineDecay
from ._warmup import WarmupStableDecay as WarmupStableDecay
from ._warmup import inverse_sqrt as inverse_sqrt
from ._warmup import warmup_constant as warmup_constant
from ._warmup import warmup_cosine_decay as warmup_cosine_decay
from ._warmup import warmup_stable_decay as warmup_stable_decay
from ._warmup import wsd as wsd

__all__ = [
    # base
    "Schedule",
    # factories
    "constant",
    "linear",
    "polynomial",
    "exponential_decay",
    "piecewise_constant",
    "cosine_decay",
    "warmup_cosine_decay",
    "warmup_constant",
    "warmup_stable_decay",
    "wsd",
    "inverse_sqrt",
    "one_cycle",
    "cyclic_triangular",
    "cosine_restarts",
    "sgdr",
    "join_schedules",
    # optax's names (exponential_decay and join_schedules above are shared)
    "OPTAX_NAMES",
    "constant_schedule",
    "linear_schedule",
    "polynomial_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_constant_schedule",
    "warmup_exponential_decay_schedule",
    "sgdr_schedule",
    "cosine_onecycle_schedule",
    "linear_onecycle_schedule",
    # classes
    "Constant",
    "Linear",
    "Polynomial",
    "ExponentialDecay",
    "PiecewiseConstant",
    "CosineDecay",
    "WarmupCosineDecay",
    "WarmupConstant",
    "WarmupStableDecay",
    "InverseSqrt",
    "OneCycle",
    "CyclicTriangular",
    "CosineRestarts",
    "PiecewiseInterpolate",
    "JoinSchedules",
]
