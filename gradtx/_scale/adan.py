r"""Adan's σ: an EMA of the squared Nesterov gradient estimate, and its gradient-difference term.

Adan (Xie et al. 2022) moves along :math:`\hat m_t + \beta_2 \hat v_t`, where ``m`` is the
EMA of gradients (the :class:`~gradtx.Ema` direction) and ``v`` the EMA of gradient
differences, and divides by the root of an EMA of :math:`(g_t + \beta_2 (g_t - g_{t-1}))^2`.
Both statistics of the difference are kept here, so the direction knob stays Adam's EMA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Scale
from .._core.struct import hyper
from .common import debias, debiased_root, moment_full, scaled_sq

__all__ = ["AdanScale"]


class AdanScale(Scale):
    r"""Adan's σ, and its correction of the direction by the EMA of gradient differences.

    With the gradient difference :math:`\Delta_t = g_t - g_{t-1}` (:math:`\Delta_1 = 0`) and
    the incoming direction :math:`d_t` (Adam's debiased EMA :math:`\hat m_t`):

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\Delta_t, \quad
        n_t = \beta_3 n_{t-1} + (1-\beta_3)\,|g_t + \beta_2 \Delta_t|^2,

    .. math::
        \sigma_t = \sqrt{n_t/(1-\beta_3^t) + \epsilon_{root}} + \epsilon, \qquad
        u_t = \bigl(d_t + \beta_2\, v_t/(1-\beta_2^t)\bigr) / \sigma_t

    The betas are decays, as in optax and the authors' code (the paper's :math:`1-\beta_k`);
    the weight of the difference is the paper's :math:`1-\beta_2^{paper}`, i.e. ``b2``.

    Warning:
      ``optax.scale_by_adan`` (0.2.8) weighs the difference by ``1 - b2`` (0.08 at the
      default) where the paper and the authors' implementation use ``b2`` (0.92); see optax
      PR #1715. The two agree only at ``b2 = 0.5`` (tested).

    Slots: ``v`` (EMA of differences), ``nu`` (:math:`n_t`, float32 for float16 params) and
    ``prev_grad`` (:math:`g_{t-1}`).

    References:
      Xie et al., *Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
      Models*, 2022 (Algorithm 1). https://arxiv.org/abs/2208.06677
    """

    elementwise = True

    slots = ("v", "nu", "prev_grad")
    needs_step = True
    summary = "σ = √(n̂) + ε, n = EMA of (g + β2·Δg)²; adds β2·v̂, v = EMA of Δg (Adan)"
    b2: float = hyper(0.92, "unit")
    b3: float = hyper(0.99, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    eps_root: float = hyper(0.0, "nonnegative")

    def init_leaf(self, param: jax.Array) -> dict:
        zeros = jnp.zeros_like(param, dtype=jnp.result_type(param))
        return {"v": zeros, "nu": moment_full(param), "prev_grad": jnp.zeros_like(zeros)}

    def step(self, g, m, slots, param, ctx: Context):
        diff = jnp.where(ctx.t == 1, jnp.zeros_like(g), g - slots["prev_grad"])
        v = self.b2 * slots["v"] + (1 - self.b2) * diff
        nu = self.b3 * slots["nu"] + scaled_sq(1 - self.b3, g + self.b2 * diff)
        sigma = debiased_root(nu, self.b3, ctx.t, self.eps_root) + self.eps
        direction = m + self.b2 * v / debias(self.b2, ctx.t, v)
        return direction / sigma, {"v": v, "nu": nu, "prev_grad": g}
