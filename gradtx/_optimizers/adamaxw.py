"""AdamaxW: Adamax with decoupled weight decay."""

from __future__ import annotations

from typing import Any

from .._direction.momentum import Ema
from .._scale.adam import AdamaxScale
from .builder import Optimizer, naming, optimizer
from .common import Schedule, decayed_weights

__all__ = ["adamaxw"]


def adamaxw(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    mask: Any = None,
) -> Optimizer:
    r"""AdamaxW: Adamax's infinity-norm scaling with decoupled weight decay.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon),

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left(\frac{m_t / (1-\beta_1^t)}{u_t}
        + \lambda\,\theta_{t-1}\right)

    Knobs: g = EMA (debiased), σ = Adamax, after = decoupled weight decay, η =
    ``learning_rate``. Equals ``optax.adamaxw`` (same arguments, in optax's order). The decay λ
    is multiplied by η, as in ``optax.adamaxw`` and ``torch.optim.AdamW`` (the paper uses a
    separate schedule multiplier); ε sits inside the maximum, as :func:`gradtx.adamax`.

    Args:
      learning_rate: η, a float or a schedule of the step count.
      b1: β1, the decay of the first moment.
      b2: β2, the decay of the infinity norm.
      eps: ε inside the maximum.
      weight_decay: λ, multiplied by η (may be a schedule).
      mask: which leaves to decay (a tree of bools or a function of params); ``None``: all.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adamaxw(1e-3, weight_decay=1e-2)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> [round(x, 6) for x in updates["w"].tolist()]  # −η(sign(g) + λθ) at the first step
      [-0.00101, 0.00102]
      >>> tx.describe()["sigma"]
      'AdamaxScale(...): σ = max(β2·u, |g| + ε) (Adamax)'

    References:
      Kingma & Ba, *Adam*, ICLR 2015, section 7.1 (Adamax). Loshchilov & Hutter, *Decoupled
      Weight Decay Regularization*, ICLR 2019. https://arxiv.org/abs/1711.05101
    """
    with naming("adamaxw", decay="b1"):
        return optimizer(
            Ema(b1),
            AdamaxScale(b2, eps),
            learning_rate,
            after=decayed_weights(weight_decay, mask),
            name="adamaxw",
        )
