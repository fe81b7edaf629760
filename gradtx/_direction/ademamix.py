"""AdEMAMix's g knob: a fast, bias-corrected EMA plus α times a slow, uncorrected one."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.numerics import one_minus_pow
from .._core.struct import hyper, static
from .momentum import _StoredDtype

__all__ = ["AdEMAMixMomentum"]


class AdEMAMixMomentum(_StoredDtype):
    r"""The mixture of two EMAs of the gradient: a fast one and a slow one (AdEMAMix).

    .. math::
        m^{(1)}_t = \beta_1 m^{(1)}_{t-1} + (1-\beta_1) g_t, \qquad
        m^{(2)}_t = \beta_3 m^{(2)}_{t-1} + (1-\beta_3) g_t,

    .. math::
        d_t = \frac{m^{(1)}_t}{1-\beta_1^t} + \alpha\, m^{(2)}_t

    The slow EMA is not bias-corrected (it fills slowly on purpose). β3 and α may be
    schedules of the step count (the paper warms both up; see :func:`gradtx.ademamix`).

    Attributes:
      b1: β1, the fast EMA's decay.
      b3: β3, the slow EMA's decay (a float or a schedule).
      alpha: α, the weight of the slow EMA (a float or a schedule).
      dtype: the dtype both EMAs are stored in (optax's ``mu_dtype``); ``None``: the param's.

    References:
      Pagliardini, Ablin & Grangier, *The AdEMAMix Optimizer: Better, Faster, Older*, 2024.
      https://arxiv.org/abs/2409.03137
    """

    elementwise = True

    slots = ("m1", "m2")
    needs_step = True
    summary = "m1/(1−β1^t) + α·m2, m1 = EMA(β1) of g, m2 = EMA(β3) of g (AdEMAMix)"
    b1: float = hyper(0.9, "unit")
    b3: Any = hyper(0.9999, "unit")
    alpha: Any = hyper(5.0, "nonnegative")
    dtype: Any = static(None)

    def init_leaf(self, param: jax.Array) -> dict[str, jax.Array]:
        mu = super().init_leaf(param)["mu"]
        return {"m1": mu, "m2": jnp.zeros_like(mu)}

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        m1 = self.b1 * slots["m1"] + (1 - self.b1) * g
        m2 = self.b3 * slots["m2"] + (1 - self.b3) * g
        return m1 / one_minus_pow(self.b1, ctx.t) + self.alpha * m2, {"m1": m1, "m2": m2}
