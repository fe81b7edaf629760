"""SGD (with heavy-ball or Nesterov momentum) and signSGD, named optimizers built from the knobs.

Every function returns an :class:`~gradtx.Optimizer`; ``describe()`` says which knobs it turns.
Argument names follow optax, so switching is a change of import. In the rules, ``g_t`` is the
gradient, ``t`` the 1-based step, ``η_t`` the (scheduled) learning rate, ``θ`` the parameters.
"""

from __future__ import annotations

from typing import Any

from .._direction.momentum import Momentum
from .._direction.sign import Sign
from .builder import Optimizer, naming, optimizer
from .common import Schedule

__all__ = ["sgd", "sign_sgd"]


def sgd(
    learning_rate: Schedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> Optimizer:
    r"""Stochastic gradient descent, optionally with heavy-ball or Nesterov momentum.

    .. math::
        m_t = \mu m_{t-1} + g_t, \qquad
        \theta_t = \theta_{t-1} - \eta_t\, (m_t \text{ or } g_t + \mu m_t)

    Knobs: g = momentum (none if ``momentum`` is ``None``), σ = 1, η = ``learning_rate``.
    Same as ``torch.optim.SGD(lr, momentum, nesterov=..., dampening=0)`` and ``optax.sgd``.

    Args:
      learning_rate: η, a float or a schedule of the step count.
      momentum: μ, or ``None`` for no momentum (and no state); ``0.0`` keeps a momentum
        buffer (as optax), so μ may be traced or swept.
      nesterov: use Nesterov's form (needs a momentum).
      accumulator_dtype: the dtype the momentum buffer is stored in; ``None``: the param's.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.sgd(0.1, momentum=0.9)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([1.0, 1.0])}, tx.init(params), params)
      >>> [round(x, 6) for x in updates["w"].tolist()]
      [-0.1, -0.1]

    References:
      Robbins & Monro, *A Stochastic Approximation Method*, 1951. Polyak 1964; Sutskever et al.,
      ICML 2013 (Nesterov momentum in deep learning).
    """
    if momentum is None and nesterov:
        raise ValueError("gradtx.sgd: nesterov=True needs a momentum")
    with naming("sgd"):
        direction = (
            Momentum(momentum, nesterov, accumulator_dtype) if momentum is not None else None
        )
        return optimizer(direction, None, learning_rate, name="sgd")


def sign_sgd(learning_rate: Schedule) -> Optimizer:
    r"""signSGD: :math:`\theta_t = \theta_{t-1} - \eta_t \operatorname{sign}(g_t)`.

    Knobs: g = sign, σ = 1, η = ``learning_rate``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.sign_sgd(0.01)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'Sign(...): sign(g)'
      >>> tx.describe()["sigma"]
      'none (identity)'

    References:
      Bernstein et al., *signSGD: Compressed Optimisation for Non-Convex Problems*, ICML 2018.
    """
    with naming("sign_sgd"):
        return optimizer(Sign(), None, learning_rate, name="sign_sgd")
