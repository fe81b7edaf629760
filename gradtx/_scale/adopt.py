"""ADOPT's σ: the root of the *previous* second moment, applied to the gradient first and
clipped (Taniguchi et al. 2024)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Scale
from .._core.numerics import abs_sq, safe_sqrt
from .._core.struct import hyper
from .common import moment_full, scaled_sq

__all__ = ["AdoptScale"]


class AdoptScale(Scale):
    r"""ADOPT's σ: the gradient divided by the root of the second moment *before* it.

    .. math::
        u_t = \operatorname{clip}\!\left(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},
        \, -c_t, c_t\right), \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    for ``t ≥ 2``; at the first step :math:`u_1 = 0` and :math:`v_1 = g_1^2` (ADOPT makes no
    move at its first step, it only measures :math:`v`). :math:`c_t` is ``clip_value`` at the
    step count (0 at the first step); ``None`` does not clip. Run before the direction
    (``scale_first=True``): the momentum averages the normalised gradients, so :math:`v_t`
    does not enter the step that :math:`g_t` takes, which is ADOPT's fix of Adam's
    non-convergence.

    ``nu`` is stored in float32 for float16 params (see :mod:`gradtx._scale.common`).

    References:
      Taniguchi et al., *ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate*,
      NeurIPS 2024. https://arxiv.org/abs/2411.02853
    """

    elementwise = True

    slots = ("nu",)
    needs_step = True
    summary = "σ = max(√v_{t−1}, ε) before the direction, clip(g/σ, ±c_t) (ADOPT)"
    b2: float = hyper(0.9999, "unit")
    eps: float = hyper(1e-6, "nonnegative")
    clip_value: Any = hyper(None, "nonnegative")

    def init_leaf(self, param: jax.Array) -> dict:
        return {"nu": moment_full(param)}

    def step(self, g, m, slots, param, ctx: Context):
        first = ctx.step == 0
        prev = slots["nu"]
        u = m / jnp.maximum(safe_sqrt(prev), self.eps)
        if self.clip_value is not None:
            u = jnp.clip(u, -self.clip_value, self.clip_value)
        u = jnp.where(first, jnp.zeros_like(u), u)
        nu = jnp.where(first, abs_sq(g), self.b2 * prev + scaled_sq(1 - self.b2, g))
        return u, {"nu": nu}
