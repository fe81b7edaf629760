"""SM3: Adagrad with one accumulator per row, column, ... (memory-efficient adaptive steps)."""

from __future__ import annotations

from .._direction.momentum import Ema
from .._scale.sm3 import SM3Scale
from .builder import Optimizer, naming, optimizer
from .common import Schedule

__all__ = ["sm3"]


def sm3(learning_rate: Schedule, momentum: float = 0.9) -> Optimizer:
    r"""SM3-II with momentum: Adagrad whose accumulator is covered by rows, columns, ...

    For an array with axes :math:`1..k` and a slice :math:`r` along each axis (for a vector,
    every entry alone), with :math:`\mu_0 = 0`:

    .. math::
        \nu_t(i) = \min_{r \ni i} \mu_{t-1}(r) + g_t(i)^2, \quad
        \mu_t(r) = \max_{i \in r} \nu_t(i),

    .. math::
        m_t = \beta\, m_{t-1} + (1-\beta)\, \frac{g_t}{\sqrt{\nu_t + \epsilon}}, \qquad
        \theta_t = \theta_{t-1} - \eta_t\, m_t

    (:math:`g/\sqrt\nu = 0` where :math:`\nu = 0`; ε = 1e-8). An :math:`n \times m` matrix
    keeps :math:`n + m` statistics. Knobs (σ first): σ = :class:`~gradtx.SM3Scale`, g = EMA
    (β = ``momentum``, not debiased), η = ``learning_rate``. Equals ``optax.sm3`` (same
    arguments); η may also be a schedule here.

    Args:
      learning_rate: η.
      momentum: β, the decay of the EMA of scaled gradients.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.sm3(0.1)
      >>> params = {"w": jnp.zeros((3, 4))}
      >>> state = tx.init(params)
      >>> state.knobs.nu["w"].shape  # 3 + 4 statistics, not 12
      (7,)

    References:
      Anil, Gupta, Koren & Singer, *Memory-Efficient Adaptive Optimization*, NeurIPS 2019.
      https://arxiv.org/abs/1901.11150
    """
    with naming("sm3", decay="momentum"):
        direction = Ema(momentum, False)
        return optimizer(direction, SM3Scale(), learning_rate, scale_first=True, name="sm3")
