"""ADOPT's g knob: an EMA without bias correction, with an optional Nesterov look-ahead."""

from __future__ import annotations

from typing import Any

import jax

from .._core.context import Context
from .._core.struct import hyper, static
from .momentum import _StoredDtype

__all__ = ["AdoptMomentum"]


class AdoptMomentum(_StoredDtype):
    r"""An EMA of the (scaled) gradient, not bias-corrected; Nesterov's look-ahead optional.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) u_t, \qquad
        d_t = m_t \quad\text{or}\quad d_t = \beta_1 m_t + (1-\beta_1) u_t \;\;(\text{Nesterov})

    ``u_t`` is the input: with :class:`~gradtx.AdoptScale` run first, ADOPT's clipped,
    normalised gradient (0 at the first step, so :math:`m_1 = 0`). optax's
    ``scale_by_adopt(nesterov=...)`` has the same two forms.

    Attributes:
      decay: β1.
      nesterov: use the look-ahead form.
      dtype: the dtype ``m`` is stored in (optax's ``mu_dtype``); ``None``: the param's dtype.

    References:
      Taniguchi et al., *ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate*,
      NeurIPS 2024. https://arxiv.org/abs/2411.02853
    """

    elementwise = True

    slots = ("mu",)
    summary = "EMA m = β1·m + (1−β1)·u, no bias correction (ADOPT)"
    decay: float = hyper(0.9, "unit_closed")
    nesterov: bool = static(False)
    dtype: Any = static(None)

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        b = self.decay
        m = b * slots["mu"] + (1 - b) * g
        return (b * m + (1 - b) * g if self.nesterov else m), {"mu": m}
