"""NovoGrad's σ: one second moment per layer (the EMA of the squared gradient norm of the
array), with the weight decay added to the normalised gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Scale
from .._core.numerics import abs_sq, real, safe_sqrt
from .._core.struct import hyper
from .factored import _stat_zeros

__all__ = ["NovogradScale"]


class NovogradScale(Scale):
    r"""NovoGrad's layer-wise σ: the root of an EMA of :math:`\lVert g_t\rVert^2` over the array.

    .. math::
        v_1 = \lVert g_1\rVert^2, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \lVert g_t\rVert^2, \qquad
        u_t = \frac{g_t}{\sqrt{v_t + \epsilon_{root}} + \epsilon} + \lambda\,\theta_{t-1}

    One scalar :math:`v` per array (slot ``nu``, float32 for float16 params). The decay
    :math:`\lambda\theta` is added to the normalised gradient, before the momentum (NovoGrad
    runs σ first, ``scale_first``); ``params`` are needed only when ``weight_decay`` is not 0.

    References:
      Ginsburg et al., *Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks*, 2019 (Algorithm 1). https://arxiv.org/abs/1905.11286
    """

    slots = ("nu",)
    needs_step = True
    summary = "σ = √(EMA of ‖g‖² per array) + ε, then + λθ (NovoGrad)"
    b2: float = hyper(0.25, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    eps_root: float = hyper(0.0, "nonnegative")
    weight_decay: float = hyper(0.0, "nonnegative")

    @property
    def needs_params(self) -> bool:  # type: ignore[override]
        wd = self.weight_decay
        return not (isinstance(wd, float) and wd == 0.0)

    def init_leaf(self, param: jax.Array) -> dict:
        return {"nu": _stat_zeros(param, (), None)}

    def step(self, g, m, slots, param, ctx: Context):
        norm_sq = jnp.sum(abs_sq(g))
        nu = jnp.where(real(ctx.t) == 1, norm_sq, self.b2 * slots["nu"] + (1 - self.b2) * norm_sq)
        u = m / (safe_sqrt(nu + self.eps_root) + self.eps)
        if param is not None and self.needs_params:
            u = u + self.weight_decay * param
        return u, {"nu": nu}
