"""Adan: Adam's EMA plus an EMA of gradient differences (Nesterov momentum estimation)."""

from __future__ import annotations

from typing import Any

from .._direction.momentum import Ema
from .._scale.adan import AdanScale
from .builder import Optimizer, naming, optimizer
from .common import Schedule, decayed_weights

__all__ = ["adan"]


def adan(
    learning_rate: Schedule,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Any = None,
) -> Optimizer:
    r"""Adan: the adaptive Nesterov momentum algorithm, with decoupled weight decay.

    With :math:`\Delta_t = g_t - g_{t-1}` (:math:`\Delta_1 = 0`) and decays β1, β2, β3:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \Delta_t, \quad
        n_t = \beta_3 n_{t-1} + (1-\beta_3) (g_t + \beta_2 \Delta_t)^2,

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left(
        \frac{\hat m_t + \beta_2 \hat v_t}{\sqrt{\hat n_t + \epsilon_{root}} + \epsilon}
        + \lambda\,\theta_{t-1}\right)

    where hats are bias corrections :math:`x/(1-\beta^t)`. Knobs: g = EMA (debiased), σ =
    :class:`~gradtx.AdanScale` (which adds the difference term), after = decoupled weight decay,
    η = ``learning_rate``. Same arguments as ``optax.adan``, in optax's order.

    Warning:
      - **The difference is weighed by** ``b2`` (0.92 at the default), as in the paper (its
        :math:`1-\beta_2` with :math:`\beta_2 = 0.08`) and the authors' code. optax 0.2.8
        uses ``1 - b2`` (0.08; optax PR #1715), so the two agree only at ``b2 = 0.5``.
      - The weight decay is decoupled and multiplied by η (optax's form, the authors'
        ``no_prox=True``); the paper's default is the proximal step
        :math:`\theta_t = (\theta_{t-1} - \eta_t u_t) / (1 + \eta_t\lambda)`.
      - The betas are decays (optax's and the code's convention), the paper's
        :math:`1 - \beta_k`.

    Args:
      learning_rate: η, a float or a schedule of the step count.
      b1: β1, the decay of the EMA of gradients.
      b2: β2, the decay of the EMA of gradient differences and the weight of the difference.
      b3: β3, the decay of the EMA of the squared term.
      eps: ε outside the root.
      eps_root: ε inside the root.
      weight_decay: λ, decoupled and multiplied by η.
      mask: which leaves to decay (a tree of bools or a function of params); ``None``: all.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adan(1e-2)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> [round(x, 4) for x in updates["w"].tolist()]  # −η·sign(g) at the first step
      [-0.01, 0.01]
      >>> sorted(state.knobs)
      ['count', 'mu', 'nu', 'prev_grad', 'v']

    References:
      Xie, Zhou, Li, Lin & Yan, *Adan: Adaptive Nesterov Momentum Algorithm for Faster
      Optimizing Deep Models*, 2022 (Algorithm 1). https://arxiv.org/abs/2208.06677
    """
    with naming("adan", decay="b1"):
        return optimizer(
            Ema(b1),
            AdanScale(b2, b3, eps, eps_root),
            learning_rate,
            after=decayed_weights(weight_decay, mask),
            name="adan",
        )
