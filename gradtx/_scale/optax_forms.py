"""σ knobs with optax's exact rules where they differ from gradtx's own (PyTorch's) placement.

:class:`~gradtx.AdagradScale` and :class:`~gradtx.AmsgradScale` follow ``torch.optim``; the
optax-named transformations (``gradtx.scale_by_rss``, ``gradtx.scale_by_amsgrad``) must mean
what optax's do, so they are built from these. Same symbols as :mod:`gradtx._scale.adam`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Scale
from .._core.numerics import one_minus_pow
from .._core.struct import hyper, static

__all__ = ["RssScale", "OptaxAmsgradScale"]


def _abs_sq(g: jax.Array) -> jax.Array:
    return jnp.square(jnp.abs(g))


class RssScale(Scale):
    r"""optax's Adagrad σ: the root of the sum of squares with ε *inside*, and 0 where it is 0.

    .. math::
        s_t = s_{t-1} + |g_t|^2, \quad s_0 = a_0, \qquad
        u_t = \begin{cases} m_t / \sqrt{s_t + \epsilon} & s_t > 0 \\ 0 & s_t = 0 \end{cases}

    (``optax.scale_by_rss``; :class:`~gradtx.AdagradScale` puts ε outside the root, as
    ``torch.optim.Adagrad``.)
    """

    elementwise = True

    slots = ("sum_of_squares",)
    summary = "σ = √(Σ g² + ε), 0 where Σ g² = 0 (optax's Adagrad)"
    initial_accumulator_value: float = hyper(0.1, "nonnegative")
    eps: float = hyper(1e-7, "nonnegative")

    def init_leaf(self, param: jax.Array) -> dict:
        return {
            "sum_of_squares": jnp.full_like(
                param, self.initial_accumulator_value, dtype=jnp.result_type(param)
            )
        }

    def step(self, g, m, slots, param, ctx: Context):
        s = slots["sum_of_squares"] + _abs_sq(g)
        inv = jnp.where(s > 0, jax.lax.rsqrt(s + self.eps), 0.0)
        return m * inv, {"sum_of_squares": s}


class OptaxAmsgradScale(Scale):
    r"""optax's AMSGrad σ: the running maximum of the *bias-corrected* second moment.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) |g_t|^2, \quad
        \tilde v_t = \max(\tilde v_{t-1}, v_t / (1-\beta_2^t)), \quad
        \sigma_t = \sqrt{\tilde v_t + \epsilon_{root}} + \epsilon

    With ``debias=False`` the maximum is of the raw :math:`v_t`, which is also
    :class:`~gradtx.AmsgradScale` (PyTorch's rule) without its bias correction.
    """

    elementwise = True

    slots = ("nu", "nu_max")
    needs_step = True
    summary = "σ = √(max_t v̂_t) + ε (optax's AMSGrad)"
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    eps_root: float = hyper(0.0, "nonnegative")
    debias: bool = static(True)

    def step(self, g, m, slots, param, ctx: Context):
        nu = self.b2 * slots["nu"] + (1 - self.b2) * _abs_sq(g)
        eff = nu / one_minus_pow(self.b2, ctx.t) if self.debias else nu
        nu_max = jnp.maximum(slots["nu_max"], eff)
        return m / (jnp.sqrt(nu_max + self.eps_root) + self.eps), {"nu": nu, "nu_max": nu_max}
