"""The η knob, step size over time: a constant factor or a learning rate that may be scheduled."""

from __future__ import annotations

from typing import Any

import jax

from ._base import Context, Stage
from ._struct import hyper, static

__all__ = ["ConstantScale", "ScaleByLearningRate", "scale", "scale_by_learning_rate"]


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


def scale(step_size: float) -> ConstantScale:
    """Multiplies updates by ``step_size`` (no sign flip)."""
    return ConstantScale(step_size)


def scale_by_learning_rate(learning_rate: Any, *, flip_sign: bool = True) -> ScaleByLearningRate:
    """Scales by ``-learning_rate`` (a float or a schedule of the step count).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_learning_rate(gradtx.schedules.linear(1.0, 0.0, 10))
      >>> u, s = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
      >>> u["w"].tolist()
      [-1.0, -1.0]
    """
    return ScaleByLearningRate(learning_rate, flip_sign)
