"""The g knob from signs: Lion's interpolated sign and signSGD's sign of the gradient.

Written for one array, as the momentum knobs (:mod:`gradtx._direction.momentum`); Lion keeps
its momentum in the same stored-dtype slot ``mu``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Direction
from .._core.struct import hyper, static
from .momentum import _StoredDtype

__all__ = ["Lion", "Sign"]

_LION_MODES = ("hard", "smooth", "refined")


class Lion(_StoredDtype):
    r"""The sign of an interpolation between momentum and gradient (Lion).

    .. math::
        x_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        d_t = \operatorname{sign}(x_t), \qquad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    Attributes:
      b1: β1, the interpolation weight of the momentum in ``x_t``.
      b2: β2, the decay of ``m``.
      dtype: the dtype ``m`` is stored in (optax's ``mu_dtype``); ``None``: the param's dtype.
      mode: ``"hard"`` (the paper's sign), ``"smooth"`` (:math:`d_t = \tanh(\beta x_t)`) or
        ``"refined"`` (:math:`d_t = x_t` where :math:`|x_t| < 1`, else its sign), as in
        ``optax.scale_by_lion``.
      smooth_beta: β of the ``"smooth"`` mode.

    References:
      Chen et al., *Symbolic Discovery of Optimization Algorithms*, 2023.
      https://arxiv.org/abs/2302.06675
    """

    elementwise = True

    slots = ("mu",)
    summary = "sign(β1·m + (1−β1)·g), m = β2·m + (1−β2)·g"
    b1: float = hyper(0.9, "unit")
    b2: float = hyper(0.99, "unit")
    dtype: Any = static(None)
    mode: str = static("hard")
    smooth_beta: float = hyper(1.0, "any")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in _LION_MODES:
            raise ValueError(
                f"gradtx.{self.name}: mode must be one of {list(_LION_MODES)}, got {self.mode!r}"
            )

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        m = slots["mu"]
        x = self.b1 * m + (1 - self.b1) * g
        if self.mode == "smooth":
            d = jnp.tanh(self.smooth_beta * x)
        elif self.mode == "refined":
            d = jnp.where(jnp.abs(x) < 1, x, jnp.sign(x))
        else:
            d = jnp.sign(x)
        return d, {"mu": self.b2 * m + (1 - self.b2) * g}


class Sign(Direction):
    r"""The sign of the gradient, :math:`d_t = \operatorname{sign}(g_t)` (signSGD).

    References:
      Bernstein et al., *signSGD: Compressed Optimisation for Non-Convex Problems*, ICML 2018.
    """

    elementwise = True

    summary = "sign(g)"

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        return jnp.sign(g), {}
