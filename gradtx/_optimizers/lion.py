"""Lion: the sign of an interpolated momentum, with decoupled weight decay."""

from __future__ import annotations

from typing import Any

from .._direction.sign import Lion
from .._stages.weight_decay import AddDecayedWeights
from .builder import Optimizer, naming, optimizer
from .common import Schedule

__all__ = ["lion"]


def lion(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: float = 1e-3,
    mask: Any = None,
) -> Optimizer:
    r"""Lion: the sign of an interpolated momentum, with decoupled weight decay.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t\left(\operatorname{sign}(\beta_1 m_{t-1} +
        (1-\beta_1) g_t) + \lambda\theta_{t-1}\right), \quad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    Knobs: g = Lion sign momentum, σ = 1, after = weight decay, η = ``learning_rate``.
    Equals ``optax.lion`` (same arguments, in optax's order).

    Args:
      learning_rate: η, a float or a schedule of the step count.
      b1: β1, the weight of the momentum inside the sign.
      b2: β2, the decay of the momentum.
      mu_dtype: the dtype the momentum is stored in; ``None``: the param's dtype.
      weight_decay: λ, decoupled and multiplied by η (may be traced; 0 decays nothing).
      mask: which leaves to decay (a tree of bools or a function of params).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.lion(1e-4)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'Lion(...): sign(β1·m + (1−β1)·g), m = β2·m + (1−β2)·g'
      >>> tx.describe()["sigma"]
      'none (identity)'

    References:
      Chen et al., *Symbolic Discovery of Optimization Algorithms*, 2023.
    """
    with naming("lion"):
        after = (AddDecayedWeights(weight_decay, mask),)
        return optimizer(Lion(b1, b2, mu_dtype), None, learning_rate, after=after, name="lion")
