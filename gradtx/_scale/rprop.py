"""Rprop's σ: a step size per parameter, grown while the gradient keeps its sign, shrunk when
it flips (iRprop⁻)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Scale
from .._core.struct import hyper

__all__ = ["RpropScale"]


class RpropScale(Scale):
    r"""Rprop's per-parameter step sizes :math:`\Delta_t` (iRprop⁻, as ``torch.optim.Rprop``).

    With :math:`s_t = g_t \cdot u_{t-1}` (the sign agreement with the previous step):

    .. math::
        \Delta_t = \begin{cases}
          \operatorname{clip}(\eta^+ \Delta_{t-1}, \Delta_{\min}, \Delta_{\max}) & s_t > 0 \\
          \operatorname{clip}(\eta^- \Delta_{t-1}, \Delta_{\min}, \Delta_{\max}) & s_t < 0 \\
          \Delta_{t-1} & s_t = 0
        \end{cases}, \qquad
        u_t = \begin{cases} 0 & s_t < 0 \\ \Delta_t\, d_t & \text{otherwise} \end{cases}

    where :math:`d_t` is the incoming direction (:class:`~gradtx.Sign`:
    :math:`\operatorname{sign}(g_t)`) and :math:`\Delta_0` is ``learning_rate``. After a sign
    flip the step is skipped and :math:`u_t = 0`, so the next step does not change
    :math:`\Delta` (iRprop⁻). The caller flips the sign of :math:`u_t` to descend.

    Slots: ``step_sizes`` (:math:`\Delta_t`) and ``prev_updates`` (:math:`u_t`), in the
    param's dtype, as optax names them.

    Warning:
      ``optax.scale_by_rprop`` (0.2.8) computes the same step sizes but returns the *previous*
      step's update (zero at the first step; optax PR #1725): gradtx returns the current one,
      as the paper and ``torch.optim.Rprop`` do. ``torch.optim.Rprop`` also clips
      :math:`\Delta` when :math:`s_t = 0`; the two differ only for a ``learning_rate`` outside
      ``[min_step_size, max_step_size]``.

    References:
      Riedmiller & Braun, *A direct adaptive method for faster backpropagation learning: the
      RPROP algorithm*, 1993. Igel & Hüsken, *Empirical evaluation of the improved Rprop
      learning algorithms*, Neurocomputing 2003 (iRprop⁻).
    """

    elementwise = True

    slots = ("step_sizes", "prev_updates")
    summary = "σ = 1/Δ, Δ ×η+ while sign(g) holds, ×η− and skip when it flips (Rprop)"
    learning_rate: float = hyper(1e-2, "positive")
    eta_minus: float = hyper(0.5, "nonnegative")
    eta_plus: float = hyper(1.2, "positive")
    min_step_size: float = hyper(1e-6, "nonnegative")
    max_step_size: float = hyper(50.0, "positive_or_inf")

    def init_leaf(self, param: jax.Array) -> dict:
        dtype = jnp.result_type(param)
        return {
            "step_sizes": jnp.full_like(param, self.learning_rate, dtype=dtype),
            "prev_updates": jnp.zeros_like(param, dtype=dtype),
        }

    def step(self, g, m, slots, param, ctx: Context):
        s = g * slots["prev_updates"]
        prev = slots["step_sizes"]
        factor = jnp.where(s > 0, self.eta_plus, self.eta_minus)
        changed = jnp.clip(factor * prev, self.min_step_size, self.max_step_size)
        sizes = jnp.where(s == 0, prev, changed)
        u = jnp.where(s < 0, jnp.zeros_like(m), sizes * m)
        return u, {"step_sizes": sizes, "prev_updates": u}
