"""The η knob, step size over time: a constant factor or a learning rate that may be scheduled.

Also the two constant extremes under optax's names: :func:`identity` (η = 1, no sign flip) and
:func:`set_to_zero` (η = 0).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.stage import Stage
from .._core.struct import hyper, static

__all__ = [
    "ConstantScale",
    "ScaleByLearningRate",
    "ScaleBySchedule",
    "Identity",
    "SetToZero",
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "identity",
    "set_to_zero",
]


class ConstantScale(Stage):
    r"""Multiplies updates by a constant, :math:`u_t = c\, g_t`."""

    elementwise = True

    name = "scale"
    step_size: float = hyper(1.0, "any")

    def update_leaf(self, g: jax.Array, slots: dict, param: Any, ctx: Context):
        return self.step_size * g, slots


class ScaleByLearningRate(Stage):
    r"""Scales updates by the (scheduled) learning rate and flips the sign for descent.

    .. math::
        u_t = -\eta_t\, g_t \quad (\texttt{flip\_sign=True}), \qquad u_t = \eta_t\, g_t

    ``η_t`` is a float or a schedule, a function of the number of updates already applied
    (0 at the first update, as in optax and ``torch.optim.lr_scheduler.LambdaLR``). The state
    holds that ``count`` only when the learning rate is scheduled.
    """

    elementwise = True

    name = "learning_rate"
    learning_rate: Any = hyper(1e-3, "step_size")
    flip_sign: bool = static(True)

    def update_leaf(self, g: jax.Array, slots: dict, param: Any, ctx: Context):
        lr = -self.learning_rate if self.flip_sign else self.learning_rate
        return lr * g, slots

    def __repr__(self) -> str:
        return f"learning_rate({self.learning_rate!r})"


class ScaleBySchedule(Stage):
    r"""Multiplies updates by a schedule of the step count, :math:`u_t = s(\text{count})\, g_t`.

    ``count`` is the number of updates already applied (0 at the first), as in
    ``optax.scale_by_schedule``. No sign flip and no check of the schedule's values.
    """

    elementwise = True

    name = "scale_by_schedule"
    step_size_fn: Any = hyper(None, "any")

    def __post_init__(self) -> None:
        if not callable(self.step_size_fn):
            raise TypeError(
                f"gradtx.scale_by_schedule: step_size_fn must be a function of the step count, "
                f"got {type(self.step_size_fn).__name__}"
            )
        super().__post_init__()

    def update_leaf(self, g: jax.Array, slots: dict, param: Any, ctx: Context):
        return self.step_size_fn * g, slots


class Identity(Stage):
    """Passes updates through unchanged and keeps no state (optax's ``identity``)."""

    elementwise = True

    name = "identity"

    def update_leaf(self, g: jax.Array, slots: dict, param: Any, ctx: Context):
        return g, slots


class SetToZero(Stage):
    """Replaces every update by zeros of its shape and dtype (optax's ``set_to_zero``)."""

    elementwise = True

    name = "set_to_zero"

    def update_leaf(self, g: jax.Array, slots: dict, param: Any, ctx: Context):
        return jnp.zeros_like(g), slots


def scale(step_size: float) -> ConstantScale:
    r"""Multiplies updates by ``step_size`` (no sign flip).

    Args:
      step_size: the constant factor c in :math:`u_t = c\, g_t`.
    """
    return ConstantScale(step_size)


def scale_by_schedule(step_size_fn: Any) -> ScaleBySchedule:
    """Multiplies updates by ``step_size_fn(count)`` (no sign flip), as ``optax.scale_by_schedule``.

    Args:
      step_size_fn: a function of the number of updates already applied (0 at the first).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_schedule(lambda count: jnp.where(count > 0, 0.5, 1.0))
      >>> state = tx.init({"w": jnp.ones(2)})
      >>> u, state = tx.update({"w": jnp.ones(2)}, state)
      >>> u, state = tx.update({"w": jnp.ones(2)}, state)
      >>> u["w"].tolist()
      [0.5, 0.5]
    """
    return ScaleBySchedule(step_size_fn)


def identity() -> Identity:
    """The transformation that leaves updates unchanged (``optax.identity``)."""
    return Identity()


def set_to_zero() -> SetToZero:
    """The transformation that makes every update zero (``optax.set_to_zero``), e.g. to freeze
    the parameters of one branch of :func:`optax.multi_transform`."""
    return SetToZero()


def scale_by_learning_rate(
    learning_rate: Any = None, *, flip_sign: bool = True
) -> ScaleByLearningRate | Identity:
    """Scales by ``-learning_rate`` (a float or a schedule of the step count).

    Args:
      learning_rate: η, a float or a schedule; ``None`` gives :func:`identity` (as optax).
      flip_sign: multiply by ``-η`` (descent) instead of ``η``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_learning_rate(gradtx.schedules.linear(1.0, 0.0, 10))
      >>> u, s = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
      >>> u["w"].tolist()
      [-1.0, -1.0]
    """
    if learning_rate is None:
        return Identity()
    return ScaleByLearningRate(learning_rate, flip_sign)
