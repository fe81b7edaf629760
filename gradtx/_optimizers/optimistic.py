"""Optimistic methods for min-max games: gradient descent and Adam with a step against the
previous direction."""

from __future__ import annotations

from typing import Any

from .._direction.optimistic import OptimisticGradient
from .._scale.adam import AdamScale
from .adam import adam_direction
from .builder import Optimizer, naming, optimizer
from .common import Schedule
from .optax_names_extra import scale_by_optimistic_gradient

__all__ = ["optimistic_gradient_descent", "optimistic_adam", "optimistic_adam_v2"]


def optimistic_gradient_descent(
    learning_rate: Schedule, alpha: Schedule = 1.0, beta: Schedule = 1.0
) -> Optimizer:
    r"""Optimistic gradient descent (OGD): a gradient step plus a step against the last one.

    .. math::
        \theta_{t} = \theta_{t-1} - \eta_t \bigl((\alpha+\beta)\,g_t - \beta\,g_{t-1}\bigr),
        \qquad g_0 = g_1

    Knobs: g = :class:`~gradtx.OptimisticGradient`, σ = 1, η = ``learning_rate``. Equals
    ``optax.optimistic_gradient_descent`` (same arguments, in optax's order); α = β = 1 is the
    paper's OGD, :math:`\theta_t = \theta_{t-1} - \eta(2g_t - g_{t-1})`.

    Args:
      learning_rate: η, a float or a schedule of the step count.
      alpha: α, the weight of the current gradient (may be a schedule).
      beta: β, the weight of the negative momentum (may be a schedule).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.optimistic_gradient_descent(0.1)
      >>> params = {"w": jnp.array([1.0])}
      >>> state = tx.init(params)
      >>> u1, state = tx.update({"w": jnp.array([1.0])}, state, params)
      >>> u2, state = tx.update({"w": jnp.array([3.0])}, state, params)
      >>> [round(float(u1["w"][0]), 4), round(float(u2["w"][0]), 4)]  # −η·g₁, −η(2g₂ − g₁)
      [-0.1, -0.5]

    References:
      Mokhtari, Ozdaglar & Pattathil, *A Unified Analysis of Extra-gradient and Optimistic
      Gradient Methods for Saddle Point Problems: Proximal Point Approach*, AISTATS 2020.
      https://arxiv.org/abs/1901.08511
    """
    with naming("optimistic_gradient_descent"):
        direction = OptimisticGradient(alpha, beta)
        return optimizer(direction, None, learning_rate, name="optimistic_gradient_descent")


def _optimistic_adam(
    name: str, learning_rate, alpha, beta, b1, b2, eps, eps_root, mu_dtype, nesterov
) -> Optimizer:
    with naming(name, decay="b1"):
        after = (scale_by_optimistic_gradient(alpha, beta),)
        direction = adam_direction(b1, nesterov, mu_dtype)
        scale = AdamScale(b2, eps, eps_root)
        return optimizer(direction, scale, learning_rate, after=after, name=name)


def optimistic_adam(
    learning_rate: float,
    optimism: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
) -> Optimizer:
    r"""Optimistic Adam: Adam's step :math:`r_t`, plus ``optimism`` times its last change.

    .. math::
        r_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}, \qquad
        \theta_t = \theta_{t-1} - \eta\, r_t - o\,(r_t - r_{t-1}), \qquad r_0 = r_1

    with :math:`o` = ``optimism`` (``None``: η, the paper's :math:`2\eta r_t - \eta r_{t-1}`).
    Knobs: g = EMA (NAdam's Nesterov EMA with ``nesterov=True``, optax's default), σ = Adam,
    after = :func:`gradtx.scale_by_optimistic_gradient` with α = η, β = o, then a sign flip
    (η = 1): this is optax's composition, so η and o may also be schedules here (optax raises
    for a schedule; it deprecates this function for :func:`optimistic_adam_v2`). Equals
    ``optax.optimistic_adam`` (same arguments, in optax's order).

    Warning:
      ``nesterov=True`` by default, as optax; the paper's Optimistic Adam uses Adam's plain
      EMA (``nesterov=False``).

    Args:
      learning_rate: η.
      optimism: o, the weight of :math:`r_t - r_{t-1}`; ``None``: η.
      b1: β1, as in :func:`gradtx.adam`.
      b2: β2, as in :func:`gradtx.adam`.
      eps: ε, as in :func:`gradtx.adam`.
      eps_root: ε inside the root, as in :func:`gradtx.adam`.
      mu_dtype: the dtype of ``m``, as in :func:`gradtx.adam`.
      nesterov: use NAdam's Nesterov EMA for ``m``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.optimistic_adam(0.1, nesterov=False)
      >>> params = {"w": jnp.array([1.0])}
      >>> u, state = tx.update({"w": jnp.array([2.0])}, tx.init(params), params)
      >>> round(float(u["w"][0]), 4)  # r₁ = sign(g) and r₀ = r₁: −η·r₁
      -0.1

    References:
      Daskalakis, Ilyas, Syrgkanis & Zeng, *Training GANs with Optimism*, ICLR 2018
      (Algorithm 1). https://arxiv.org/abs/1711.00141
    """
    beta = learning_rate if optimism is None else optimism
    return _optimistic_adam(
        "optimistic_adam", 1.0, learning_rate, beta, b1, b2, eps, eps_root, mu_dtype, nesterov
    )


def optimistic_adam_v2(
    learning_rate: Schedule,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    nesterov: bool = True,
) -> Optimizer:
    r"""Optimistic Adam with a learning rate that may be scheduled (``optax.optimistic_adam_v2``).

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \bigl((\alpha+\beta)\,r_t - \beta\,r_{t-1}\bigr),
        \qquad r_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon},
        \quad r_0 = r_1

    Knobs: g = EMA (Nesterov's with ``nesterov=True``, optax's default), σ = Adam, after =
    :func:`gradtx.scale_by_optimistic_gradient` (α, β), η = ``learning_rate``. Equals
    ``optax.optimistic_adam_v2``; α = β = 1 is the paper's :math:`2 r_t - r_{t-1}`. Arguments
    after ``learning_rate`` are keyword-only, as in optax; see :func:`optimistic_adam`.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.optimistic_adam_v2(0.1)
      >>> tx.describe()["after"][0].split("(direction=")[1]
      'OptimisticGradient(alpha=1.0, beta=1.0), scale=None)'

    References:
      Daskalakis, Ilyas, Syrgkanis & Zeng, *Training GANs with Optimism*, ICLR 2018.
      https://arxiv.org/abs/1711.00141
    """
    return _optimistic_adam(
        "optimistic_adam_v2", learning_rate, alpha, beta, b1, b2, eps, eps_root, mu_dtype, nesterov
    )
