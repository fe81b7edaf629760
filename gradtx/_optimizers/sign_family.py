"""Optimizers that step by the sign of a direction: Signum (sign of momentum) and Rprop (sign
of the gradient, with a step size per parameter)."""

from __future__ import annotations

from typing import Any

from .._direction.momentum import Ema
from .._direction.sign import Sign
from .._scale.rprop import RpropScale
from .builder import Optimizer, naming, optimizer
from .common import Schedule
from .optax_names import scale_by_sign

__all__ = ["signum", "rprop"]


def signum(learning_rate: Schedule, beta: float = 0.9, accumulator_dtype: Any = None) -> Optimizer:
    r"""Signum: the sign of an EMA of gradients.

    .. math::
        m_t = \beta\, m_{t-1} + (1-\beta)\, g_t, \qquad
        \theta_t = \theta_{t-1} - \eta_t \operatorname{sign}(m_t)

    Knobs: g = EMA (not debiased: the sign does not see the correction), σ = 1, after =
    :func:`gradtx.scale_by_sign`, η = ``learning_rate``. Equals ``optax.signum`` (same
    arguments, in optax's order). The paper's Signum uses the undamped momentum
    :math:`m_t = \beta m_{t-1} + g_t`, whose sign is the same.

    Args:
      learning_rate: η, a float or a schedule of the step count.
      beta: β, the decay of the EMA.
      accumulator_dtype: the dtype ``m`` is stored in; ``None``: the param's dtype.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.signum(0.01)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -3.0])}, tx.init(params), params)
      >>> [round(x, 6) for x in updates["w"].tolist()]  # −η·sign(m), m = (1−β)·g
      [-0.01, 0.01]

    References:
      Bernstein, Wang, Azizzadenesheli & Anandkumar, *signSGD: Compressed Optimisation for
      Non-Convex Problems*, ICML 2018. https://arxiv.org/abs/1802.04434
    """
    with naming("signum", decay="beta"):
        direction = Ema(beta, False, accumulator_dtype)
        return optimizer(direction, None, learning_rate, after=(scale_by_sign(),), name="signum")


def rprop(
    learning_rate: float,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> Optimizer:
    r"""Rprop (iRprop⁻): a step of size :math:`\Delta_t` per parameter against the gradient's sign.

    .. math::
        \Delta_t = \operatorname{clip}(\eta^{\pm}\Delta_{t-1}, \Delta_{\min}, \Delta_{\max}),
        \qquad \theta_t = \theta_{t-1} - \Delta_t \operatorname{sign}(g_t)

    with :math:`\eta^+` while :math:`g_t g_{t-1} > 0` and :math:`\eta^-` when the sign flips;
    after a flip the step is skipped (:math:`g_t` counts as 0, so the next step keeps
    :math:`\Delta`). :math:`\Delta_0` = ``learning_rate``. Knobs: g = :class:`~gradtx.Sign`,
    σ = :class:`~gradtx.RpropScale` (σ = 1/Δ), η = 1 (the step sizes are σ's). Same arguments
    as ``optax.rprop``, in optax's order; equals ``torch.optim.Rprop``.

    Warning:
      ``optax.rprop`` (0.2.8) returns the previous step's update, 0 at the first step (optax
      PR #1725); gradtx's updates are the current ones, as torch's. The step sizes agree with
      optax's (tested). See :class:`~gradtx.RpropScale` for torch's clipping at
      :math:`g_t g_{t-1} = 0`.

    Args:
      learning_rate: :math:`\Delta_0`, the initial step size of every parameter.
      eta_minus: η⁻, the factor on a sign flip.
      eta_plus: η⁺, the factor while the sign holds.
      min_step_size: :math:`\Delta_{\min}`.
      max_step_size: :math:`\Delta_{\max}`.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.rprop(0.1)
      >>> params = {"w": jnp.array([0.0])}
      >>> state = tx.init(params)
      >>> steps = []
      >>> for g in (1.0, 1.0, -1.0, -1.0):
      ...     u, state = tx.update({"w": jnp.array([g])}, state, params)
      ...     steps.append(round(float(u["w"][0]), 4) + 0.0)  # + 0.0: no "-0.0"
      >>> steps  # Δ grows by 1.2, a flip halves it and skips the step
      [-0.1, -0.12, 0.0, 0.06]

    References:
      Riedmiller & Braun, *A direct adaptive method for faster backpropagation learning: the
      RPROP algorithm*, 1993. Igel & Hüsken, *Empirical evaluation of the improved Rprop
      learning algorithms*, Neurocomputing 2003.
    """
    with naming("rprop"):
        scale = RpropScale(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)
        return optimizer(Sign(), scale, 1.0, name="rprop")
