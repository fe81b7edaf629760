"""LAMB and LARS: layer-wise trust ratios on top of Adam and of heavy-ball momentum."""

from __future__ import annotations

from typing import Any

from .._direction.momentum import Ema, Momentum
from .._scale.adam import AdamScale
from .._stages.trust_ratio import ScaleByTrustRatio
from .._stages.weight_decay import AddDecayedWeights
from .builder import Optimizer, naming, optimizer
from .common import Schedule, all_true

__all__ = ["lamb", "lars"]


def lamb(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    mask: Any = None,
) -> Optimizer:
    r"""LAMB: AdamW's update rescaled per layer by the trust ratio ‖θ‖/‖u‖.

    .. math::
        u_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon} + \lambda\theta,
        \qquad \theta_t = \theta_{t-1} - \eta_t \frac{\lVert\theta\rVert}{\lVert u_t\rVert} u_t

    (ratio 1 when either norm is 0). Knobs: g = EMA (debiased), σ = Adam, after = weight decay
    and trust ratio, η = ``learning_rate``. Equals ``optax.lamb``.

    Warning:
      ``mask`` excludes a leaf from the trust ratio as well as from the weight decay (as
      TensorFlow Addons' LAMB does by default); ``optax.lamb``'s mask only selects the decayed
      leaves. Without a mask the two agree.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.lamb(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'Ema(...): EMA of gradients m = β1·m + (1−β1)·g'
      >>> tx.describe()["sigma"]
      'AdamScale(...): σ = √(v̂) + ε, v = EMA of g² (Adam)'

    References:
      You et al., *Large Batch Optimization for Deep Learning*, ICLR 2020.
    """
    with naming("lamb", decay="b1"):
        after = (AddDecayedWeights(weight_decay, mask), ScaleByTrustRatio(mask=mask))
        return optimizer(
            Ema(b1), AdamScale(b2, eps, eps_root), learning_rate, after=after, name="lamb"
        )


def lars(
    learning_rate: Schedule,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: Any = True,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> Optimizer:
    r"""LARS: SGD with momentum on layer-wise trust-ratio–scaled, L2-decayed gradients.

    .. math::
        u_t = g_t + \lambda\theta, \quad
        \tilde u_t = c\,\frac{\lVert\theta\rVert}{\lVert u_t\rVert + \epsilon} u_t, \quad
        m_t = \mu m_{t-1} + \tilde u_t, \quad \theta_t = \theta_{t-1} - \eta_t m_t

    Knobs: before = weight decay and trust ratio, g = momentum, σ = 1, η = ``learning_rate``.

    Args:
      learning_rate: η, a float or a schedule of the step count.
      weight_decay: λ of the L2 term added before the trust ratio.
      weight_decay_mask: which leaves to decay: ``True`` (all, optax's default), a tree of
        bools or a function of params.
      trust_coefficient: c.
      eps: ε in the denominator of the trust ratio.
      trust_ratio_mask: which leaves get the trust ratio (``True``: all).
      momentum: μ (``0.0`` keeps a buffer; may be traced).
      nesterov: Nesterov momentum.

    Warning:
      ``optax.lars`` applies the learning rate before the momentum; the two agree for a
      constant learning rate and differ under a schedule (the paper puts η inside).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.lars(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'Momentum(...): heavy-ball momentum m = μ·m + g'
      >>> tx.describe()["sigma"]
      'none (identity)'

    References:
      You, Gitman & Ginsburg, *Large Batch Training of Convolutional Networks*, 2017.
    """
    with naming("lars"):
        before = (
            AddDecayedWeights(weight_decay, all_true(weight_decay_mask)),
            ScaleByTrustRatio(0.0, trust_coefficient, eps, all_true(trust_ratio_mask)),
        )
        direction = Momentum(momentum, nesterov)
        return optimizer(direction, None, learning_rate, before=before, name="lars")
