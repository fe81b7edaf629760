"""Adafactor: a factored second moment, update clipping and relative step sizes."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from .._direction.momentum import Ema
from .._scale.factored import FactoredScale
from .._stages.weight_decay import AddDecayedWeights
from .builder import Optimizer, naming, optimizer
from .common import Schedule

__all__ = ["adafactor"]


def adafactor(
    learning_rate: Schedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: float | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any = None,
) -> Optimizer:
    r"""Adafactor: a factored second moment, update clipping and relative step sizes.

    .. math::
        u_t = \frac{g_t}{\sqrt{\hat V_t}} \Big/ \max(1, \mathrm{RMS}/d) \cdot
        \max(\epsilon_2, \mathrm{RMS}(\theta)), \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) u_t, \quad
        \theta_t = \theta_{t-1} - \eta_t (m_t + \lambda\theta)

    (:math:`\hat V_t` and the factoring are in :class:`~gradtx.FactoredScale`; without
    ``momentum``, :math:`m_t = u_t`). ``learning_rate=None`` means η = 1: the step is relative
    to the parameters' RMS through ``multiply_by_parameter_scale``.

    Knobs: σ = factored RMS first, then g = EMA without debiasing (``scale_first``), after =
    weight decay, η = ``learning_rate``.

    Args:
      learning_rate: η, a float or a schedule; ``None`` means η = 1.
      min_dim_size_to_factor: factor only arrays whose two largest axes are at least this long.
      decay_rate: c in :math:`\hat\beta_{2,t} = 1 - t^{-c}`.
      decay_offset: steps subtracted from ``t`` in that rule.
      multiply_by_parameter_scale: scale the step by ``max(1e-3, RMS(θ))``.
      clipping_threshold: d of the update clipping, or ``None`` for none.
      momentum: β1 of an EMA of the updates, or ``None`` for none (no state).
      dtype_momentum: the dtype that EMA is stored in (optax's default float32).
      weight_decay_rate: λ, or ``None`` for no decay (``0.0`` keeps the stage; may be traced).
      eps: ε1 added to the squared gradient.
      factored: factor the second moment of large matrices at all.
      weight_decay_mask: which leaves to decay (a tree of bools or a function of params).

    Warning:
      optax applies η before the momentum and adds weight decay unscaled by η; here the decay
      is multiplied by η as in AdamW. They agree with a constant η and no weight decay.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adafactor()
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'none (identity)'
      >>> tx.describe()["sigma"]
      'FactoredScale(...): σ = √(factored EMA of g²), clipped by block RMS, × RMS(θ) (Adafactor)'

    References:
      Shazeer & Stern, ICML 2018. https://arxiv.org/abs/1804.04235
    """
    with naming("adafactor", decay="momentum"):
        scale = FactoredScale(
            decay_rate,
            decay_offset,
            eps,
            clipping_threshold,
            1e-3,
            min_dim_size_to_factor,
            factored,
            multiply_by_parameter_scale,
        )
        direction = Ema(momentum, False, dtype_momentum) if momentum is not None else None
        after: tuple = ()
        if weight_decay_rate is not None:
            after = (AddDecayedWeights(weight_decay_rate, weight_decay_mask),)
        lr = 1.0 if learning_rate is None else learning_rate
        return optimizer(direction, scale, lr, after=after, scale_first=True, name="adafactor")
