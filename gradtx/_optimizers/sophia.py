"""Sophia: an EMA of gradients divided by a clipped estimate of the Hessian's diagonal.

Returns an :class:`~gradtx.Optimizer`; ``describe()`` says which knobs it turns. Arguments and
their order are ``optax.contrib.sophia``'s.
"""

from __future__ import annotations

from typing import Any

from .._direction.momentum import Ema
from .._stages.hessian import hutchinson_estimator_diag_hessian
from .._stages.sophia import SophiaKnobs, SophiaScale
from .._stages.weight_decay import AddDecayedWeights
from ..schedules._learning_rate import ScaleByLearningRate
from .builder import Optimizer, naming
from .common import Schedule, all_true

__all__ = ["sophia"]

#: optax's default estimator (Hutchinson's, first key ``PRNGKey(0)``), as gradtx's.
DEFAULT_ESTIMATOR = hutchinson_estimator_diag_hessian()


def sophia(
    learning_rate: Schedule,
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    weight_decay_mask: Any = None,
    gamma: float = 0.01,
    clip_threshold: float | None = 1.0,
    update_interval: int = 10,
    hessian_diagonal_fn: Any = DEFAULT_ESTIMATOR,
    mu_dtype: Any = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
) -> Optimizer:
    r"""Sophia: momentum divided by a clipped, periodically refreshed diagonal curvature.

    With :math:`\hat h_t` the estimate of the Hessian's diagonal from ``hessian_diagonal_fn``
    (Hutchinson's by default) and :math:`k` the ``update_interval``:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        u_t = \operatorname{clip}\!\left(\frac{m_t/(1-\beta_1^t)}{\max(\gamma\,h_{t-1},\ \epsilon)},
        \ -\rho,\ \rho\right),

    .. math::
        \theta_t = \theta_{t-1} - \eta_t\left(u_t + \lambda\,\theta_{t-1}\right), \qquad
        h_t = \begin{cases} \beta_2 h_{t-1} + (1-\beta_2)\,\hat h_t & t \equiv 1 \pmod k \\
        h_{t-1} & \text{otherwise} \end{cases}

    with :math:`h_0 = 0` (so the first ``k`` steps are :math:`\pm\rho` steps in the sign of
    :math:`m`), ρ the ``clip_threshold`` and :math:`\hat h_t` estimated at :math:`\theta_{t-1}`
    (the params the gradient was taken at). ``update`` needs the estimator's arguments: for the
    default, ``obj_fn`` (``obj_fn(params) -> scalar``, the loss on this step's batch), declared
    in ``requires``; the estimate costs one Hessian-vector product every ``k`` steps (under
    ``lax.cond``: not computed on the other steps).

    Knobs: g = EMA (debiased), σ = max(γ·h, ε) with the ratio clipped to ±ρ (Sophia), after =
    decoupled weight decay, η = ``learning_rate``. Equals ``optax.contrib.sophia`` (same
    arguments and order; tested, with its Hutchinson draws).

    Warning:
      The paper and its PyTorch code do not bias-correct :math:`m_t` and use the estimate of a
      refresh step in that same step; optax (and gradtx) divide by :math:`1-\beta_1^t` and
      use it from the next step. Per step, the effective decay of :math:`h` is
      :math:`1 - (1-\beta_2)/k` (0.999 for the defaults). The paper's ρ is gradtx's
      ``gamma`` (its clipping threshold is 1): ``gamma`` scales the curvature,
      ``clip_threshold`` the largest step per coordinate (in units of η).

    Args:
      learning_rate: η, a float or a schedule of the step count.
      b1: decay of the momentum, in [0, 1).
      b2: decay of the curvature's EMA (per refresh), in [0, 1).
      eps: floor of :math:`\gamma h` (keeps the division finite).
      weight_decay: λ, decoupled (multiplied by η).
      weight_decay_mask: which leaves to decay (a tree of bools or a function of the params).
      gamma: γ, the scale of the curvature (larger: smaller, less often clipped steps).
      clip_threshold: ρ, the bound of each coordinate of :math:`u_t`; ``None``: no clipping.
      update_interval: k, steps between estimates of the Hessian's diagonal (an int >= 1).
      hessian_diagonal_fn: the estimator, a transformation
        ``update(grads, state, params, **extra) -> (ĥ, state)``:
        :func:`hutchinson_estimator_diag_hessian` (Sophia-H, the default),
        :func:`gnb_estimator_diag_hessian` (Sophia-G) or an optax one.
      mu_dtype: the dtype ``m`` is stored in; ``None``: the param's dtype.
      verbose: print the win rate (the fraction of coordinates not clipped; the authors aim
        for 0.1–0.5) every ``print_win_rate_every_n_steps`` steps.
      print_win_rate_every_n_steps: see ``verbose`` (an int >= 1 with ``verbose``).

    Returns:
      An :class:`~gradtx.Optimizer`; its state has ``knobs.count``, ``knobs.mu``,
      ``knobs.nu`` (the curvature :math:`h`) and ``knobs.hessian_fn_state``.

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> loss = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 4.0]) * p["w"] ** 2)
      >>> tx = gradtx.sophia(0.1, weight_decay=0.0)
      >>> params = {"w": jnp.array([1.0, 1.0])}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jax.grad(loss)(params), state, params, obj_fn=loss)
      >>> [round(x, 6) for x in updates["w"].tolist()]  # h = 0 at first: −η·sign(m), clipped
      [-0.1, -0.1]
      >>> [round(x, 6) for x in state.knobs.nu["w"].tolist()]  # (1 − β2)·diag H, exact here
      [0.01, 0.04]
      >>> tx.describe()["sigma"].endswith("(Sophia)")
      True

    References:
      Liu, Li, Hall, Liang and Ma, *Sophia: A Scalable Stochastic Second-order Optimizer for
      Language Model Pre-training*, ICLR 2024. https://arxiv.org/abs/2305.14342
    """
    with naming("sophia", decay="b1"):
        knobs = SophiaKnobs(
            Ema(b1, True, mu_dtype),
            SophiaScale(b2, eps, gamma, clip_threshold),
            update_interval=update_interval,
            hessian_diagonal_fn=hessian_diagonal_fn,
            verbose=verbose,
            print_win_rate_every_n_steps=print_win_rate_every_n_steps,
        )
        stages = (
            knobs,
            AddDecayedWeights(weight_decay, all_true(weight_decay_mask)),
            ScaleByLearningRate(learning_rate),
        )
    return Optimizer(stages, (), "sophia")
