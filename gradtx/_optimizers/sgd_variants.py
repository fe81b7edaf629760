"""SGD with a changed step: annealed gradient noise (noisy SGD) and Polyak's step size."""

from __future__ import annotations

from typing import Any

from .._stages.noise import add_noise
from .._stages.polyak import ScaleByPolyak
from .builder import Optimizer, naming, optimizer
from .common import Schedule

__all__ = ["noisy_sgd", "polyak_sgd"]


def noisy_sgd(
    learning_rate: Schedule,
    eta: float = 0.01,
    gamma: float = 0.55,
    key: Any = None,
    *,
    seed: int | None = None,
) -> Optimizer:
    r"""SGD on gradients with annealed Gaussian noise.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \bigl(g_t + \mathcal N(0, \sigma_t^2)\bigr), \qquad
        \sigma_t^2 = \frac{\eta}{t^{\gamma}}

    (``t`` 1-based, so :math:`\sigma_t^2 = \eta/(1+s)^\gamma` at step count s, as in the
    paper). Knobs: before = :func:`gradtx.add_noise`, g = gradient, σ = 1, η =
    ``learning_rate``. Equals ``optax.noisy_sgd`` (same arguments, in optax's order, and the
    same draws of the noise for float32 params).

    Args:
      learning_rate: η_t, a float or a schedule of the step count.
      eta: η, the variance of the noise at the first step.
      gamma: γ, the decay exponent of the variance.
      key: an int seed or a concrete ``jax.random.key``; ``None``: 0, as optax.
      seed: optax's deprecated spelling of an int ``key``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.noisy_sgd(0.1, eta=0.0)  # no noise: plain SGD
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> u, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> [round(x, 4) for x in u["w"].tolist()]
      [-0.05, 0.05]

    References:
      Neelakantan et al., *Adding Gradient Noise Improves Learning for Very Deep Networks*,
      2015. https://arxiv.org/abs/1511.06807
    """
    with naming("noisy_sgd"):
        before = (add_noise(eta, gamma, key, seed=seed),)
        return optimizer(None, None, learning_rate, before=before, name="noisy_sgd")


def polyak_sgd(
    max_learning_rate: float = 1.0,
    scaling: Schedule = 1.0,
    f_min: float = 0.0,
    eps: float = 0.0,
    variant: str = "sps",
) -> Optimizer:
    r"""SGD with Polyak's step size (SPS\ :sub:`max`); ``update`` needs ``value=loss``.

    .. math::
        \theta_t = \theta_{t-1} - s_t\, \gamma_t\, g_t, \qquad
        \gamma_t = \min\!\left(\frac{f(\theta_{t-1}) - f^\star}{\lVert g_t\rVert^2 + \epsilon},
        \gamma_{\max}\right)

    with :math:`f^\star` = ``f_min``, :math:`\gamma_{\max}` = ``max_learning_rate`` and the
    scaling :math:`s_t` = ``scaling`` (``"sps+"``: the gap's positive part). Knobs: before =
    :func:`gradtx.scale_by_polyak` (a global step from the loss), g = gradient, σ = 1, η =
    ``scaling``. Same arguments as ``optax.polyak_sgd``, in optax's order; equal for
    ``scaling=1``.

    Warning:
      ``optax.polyak_sgd`` scales the gradient by ``-scaling`` *before* computing the Polyak
      step, so its norm is that of :math:`s\,g` and its step
      :math:`s\min(\text{gap}/(s^2\lVert g\rVert^2+\epsilon), \gamma_{\max})`. gradtx follows
      optax's documented formula :math:`s\min(\text{gap}/(\lVert g\rVert^2+\epsilon),
      \gamma_{\max})`, the paper's with ``scaling`` as a learning-rate multiplier; the two
      agree at ``scaling=1``.

    Args:
      max_learning_rate: :math:`\gamma_{\max}`, the largest step.
      scaling: :math:`s_t`, a float or a schedule of the step count.
      f_min: :math:`f^\star`, a lower bound of the loss (0 for interpolating models).
      eps: ε in the denominator.
      variant: ``"sps"`` or ``"sps+"``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.polyak_sgd()
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> loss = float(jnp.sum(params["w"] ** 2))  # 5, gradient 2w, ‖g‖² = 20
      >>> u, state = tx.update({"w": 2 * params["w"]}, tx.init(params), params, value=loss)
      >>> u["w"].tolist()  # γ = 5/20, u = −γ·g
      [-0.5, -1.0]

    References:
      Loizou, Vaswani, Laradji & Lacoste-Julien, *Stochastic Polyak Step-size for SGD*,
      AISTATS 2021. https://arxiv.org/abs/2002.10542
    """
    with naming("polyak_sgd"):
        before = (ScaleByPolyak(f_min, max_learning_rate, eps, variant),)
        return optimizer(None, None, scaling, before=before, name="polyak_sgd")
