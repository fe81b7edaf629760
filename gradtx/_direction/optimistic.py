"""The g knob of optimistic methods: the current gradient plus a step against the previous one."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Direction
from .._core.struct import hyper

__all__ = ["OptimisticGradient"]


class OptimisticGradient(Direction):
    r"""Generalised optimistic gradient: :math:`d_t = (\alpha+\beta)\,g_t - \beta\,g_{t-1}`.

    At the first step :math:`g_0 = g_1`, so :math:`d_1 = \alpha g_1` (as optax). With
    :math:`\alpha = \beta = 1` this is optimistic gradient descent,
    :math:`\theta_{t+1} = \theta_t - \eta(2g_t - g_{t-1})`, the one-call approximation of the
    extra-gradient method for min-max games.

    Attributes:
      alpha: α, the weight of the current gradient (may be a schedule).
      beta: β, the weight of the "negative momentum" :math:`g_t - g_{t-1}` (may be a schedule).

    Slot ``prev_grad`` (:math:`g_{t-1}`, optax's ``previous_gradient``).

    References:
      Mokhtari, Ozdaglar & Pattathil, *A Unified Analysis of Extra-gradient and Optimistic
      Gradient Methods for Saddle Point Problems: Proximal Point Approach*, AISTATS 2020.
      https://arxiv.org/abs/1901.08511
    """

    elementwise = True

    slots = ("prev_grad",)
    needs_step = True
    summary = "d = (α+β)·g − β·g_prev (optimistic gradient)"
    alpha: float = hyper(1.0, "any")
    beta: float = hyper(1.0, "any")

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        prev = jnp.where(ctx.t == 1, g, slots["prev_grad"])
        return (self.alpha + self.beta) * g - self.beta * prev, {"prev_grad": g}
