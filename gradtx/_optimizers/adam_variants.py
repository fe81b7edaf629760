"""AdaBelief, Yogi and RAdam: Adam's direction with another σ knob.

Every function returns an :class:`~gradtx.Optimizer`; ``describe()`` says which knobs it turns.
Argument names follow optax. In the rules, ``g_t`` is the gradient, ``t`` the 1-based step,
``η_t`` the (scheduled) learning rate, ``θ`` the parameters.
"""

from __future__ import annotations

from .._direction.momentum import Ema, NesterovEma
from .._scale.variants import AdaBeliefScale, RAdamScale, YogiScale
from .builder import Optimizer, naming, optimizer
from .common import Schedule

__all__ = ["adabelief", "yogi", "radam"]


def adabelief(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
) -> Optimizer:
    r"""AdaBelief: Adam whose σ tracks the variance of the gradient around its EMA.

    .. math::
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon_{root}, \qquad
        \theta_t = \theta_{t-1} - \eta_t \frac{m_t/(1-\beta_1^t)}{\sqrt{s_t/(1-\beta_2^t)}+\epsilon}

    Knobs: g = EMA (debiased; NAdam's Nesterov EMA if ``nesterov``), σ = AdaBelief, η =
    ``learning_rate``. Equals ``optax.adabelief`` (same arguments).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adabelief(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'Ema(...): EMA of gradients m = β1·m + (1−β1)·g'
      >>> tx.describe()["sigma"]
      'AdaBeliefScale(...): σ = √(EMA of (g − m)²) + ε (AdaBelief)'

    References:
      Zhuang et al., NeurIPS 2020. https://arxiv.org/abs/2010.07468
    """
    with naming("adabelief", decay="b1"):
        direction = NesterovEma(b1) if nesterov else Ema(b1)
        scale = AdaBeliefScale(b2, eps, eps_root)
        return optimizer(direction, scale, learning_rate, name="adabelief")


def yogi(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    *,
    initial_accumulator_value: float = 1e-6,
) -> Optimizer:
    r"""Yogi: Adam with an additive, sign-controlled second-moment update.

    .. math::
        v_t = v_{t-1} - (1-\beta_2)\operatorname{sign}(v_{t-1} - g_t^2) g_t^2, \qquad
        \theta_t = \theta_{t-1} - \eta_t \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)}+\epsilon}

    Knobs: g = EMA (debiased), σ = Yogi, η = ``learning_rate``.

    ``initial_accumulator_value`` (keyword-only; not an argument of ``optax.yogi``) is ``v_0``.

    Warning:
      ``optax.yogi`` starts ``m`` at ``initial_accumulator_value`` (1e-6) too; here ``m_0 = 0``
      as in the paper. ``gradtx.scale_by_yogi`` follows optax.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.yogi(1e-2)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'Ema(...): EMA of gradients m = β1·m + (1−β1)·g'
      >>> tx.describe()["sigma"]
      'YogiScale(...): σ = √(v̂) + ε, v −= (1−β2)·sign(v − g²)·g² (Yogi)'

    References:
      Zaheer et al., *Adaptive Methods for Nonconvex Optimization*, NeurIPS 2018.
    """
    with naming("yogi", decay="b1"):
        scale = YogiScale(b2, eps, 0.0, initial_accumulator_value)
        return optimizer(Ema(b1), scale, learning_rate, name="yogi")


def radam(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
) -> Optimizer:
    r"""RAdam: Adam with the variance of its adaptive rate rectified; SGD with momentum early.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t
        \begin{cases} r_t\, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)
        & \rho_t > \text{threshold} \\ \hat m_t & \text{otherwise} \end{cases}

    with :math:`\rho_t, r_t` as in :class:`~gradtx.RAdamScale`. Knobs: g = EMA (debiased;
    NAdam's Nesterov EMA if ``nesterov``), σ = rectified Adam, η = ``learning_rate``.

    Warning:
      ``torch.optim.RAdam`` places ε as ``√(1-β2^t)/(√v_t + ε)``; differences are O(ε/√v̂).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.radam(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'Ema(...): EMA of gradients m = β1·m + (1−β1)·g'
      >>> tx.describe()["sigma"]
      'RAdamScale(...): σ = √(v̂)/r_t + ε once ρ_t > threshold, else 1 (RAdam)'

    References:
      Liu et al., ICLR 2020. https://arxiv.org/abs/1908.03265
    """
    with naming("radam", decay="b1"):
        scale = RAdamScale(b2, eps, eps_root, threshold)
        direction = NesterovEma(b1) if nesterov else Ema(b1)
        return optimizer(direction, scale, learning_rate, name="radam")
