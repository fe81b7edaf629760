"""Named optimizers beyond the Adam core: AdaBelief, Yogi, RAdam, Lion, LAMB, LARS, Adafactor."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ._adafactor import FactoredScale
from ._decay import AddDecayedWeights, ScaleByTrustRatio
from ._direction import Ema, Lion, Momentum, NesterovEma
from ._optimizer import Optimizer, naming, optimizer
from ._scale import AdamScale
from ._scale_variants import AdaBeliefScale, RAdamScale, YogiScale

__all__ = ["adabelief", "yogi", "radam", "lion", "lamb", "lars", "adafactor"]

Schedule = Any


def _all_true(mask: Any) -> Any:
    """optax's ``mask=True`` (every leaf) as gradtx's ``None``."""
    return None if mask is True else mask


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
            AddDecayedWeights(weight_decay, _all_true(weight_decay_mask)),
            ScaleByTrustRatio(0.0, trust_coefficient, eps, _all_true(trust_ratio_mask)),
        )
        direction = Momentum(momentum, nesterov)
        return optimizer(direction, None, learning_rate, before=before, name="lars")


def adafactor(
    learning_rate: Schedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: float | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any = None,
) -> Optimizer:
    r"""Adafactor: a factored second moment, update clipping and relative step sizes.

    .. math::
        u_t = \frac{g_t}{\sqrt{\hat V_t}} \Big/ \max(1, \mathrm{RMS}/d) \cdot
        \max(\epsilon_2, \mathrm{RMS}(\theta)), \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) u_t, \quad
        \theta_t = \theta_{t-1} - \eta_t (m_t + \lambda\theta)

    (:math:`\hat V_t` and the factoring are in :class:`~gradtx.FactoredScale`; without
    ``momentum``, :math:`m_t = u_t`). ``learning_rate=None`` means η = 1: the step is relative
    to the parameters' RMS through ``multiply_by_parameter_scale``.

    Knobs: σ = factored RMS first, then g = EMA without debiasing (``scale_first``), after =
    weight decay, η = ``learning_rate``.

    Args:
      learning_rate: η, a float or a schedule; ``None`` means η = 1.
      min_dim_size_to_factor: factor only arrays whose two largest axes are at least this long.
      decay_rate: c in :math:`\hat\beta_{2,t} = 1 - t^{-c}`.
      decay_offset: steps subtracted from ``t`` in that rule.
      multiply_by_parameter_scale: scale the step by ``max(1e-3, RMS(θ))``.
      clipping_threshold: d of the update clipping, or ``None`` for none.
      momentum: β1 of an EMA of the updates, or ``None`` for none (no state).
      dtype_momentum: the dtype that EMA is stored in (optax's default float32).
      weight_decay_rate: λ, or ``None`` for no decay (``0.0`` keeps the stage; may be traced).
      eps: ε1 added to the squared gradient.
      factored: factor the second moment of large matrices at all.
      weight_decay_mask: which leaves to decay (a tree of bools or a function of params).

    Warning:
      optax applies η before the momentum and adds weight decay unscaled by η; here the decay
      is multiplied by η as in AdamW. They agree with a constant η and no weight decay.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adafactor()
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'none (identity)'
      >>> tx.describe()["sigma"]
      'FactoredScale(...): σ = √(factored EMA of g²), clipped by block RMS, × RMS(θ) (Adafactor)'

    References:
      Shazeer & Stern, ICML 2018. https://arxiv.org/abs/1804.04235
    """
    with naming("adafactor", decay="momentum"):
        scale = FactoredScale(
            decay_rate,
            decay_offset,
            eps,
            clipping_threshold,
            1e-3,
            min_dim_size_to_factor,
            factored,
            multiply_by_parameter_scale,
        )
        direction = Ema(momentum, False, dtype_momentum) if momentum is not None else None
        after: tuple = ()
        if weight_decay_rate is not None:
            after = (AddDecayedWeights(weight_decay_rate, weight_decay_mask),)
        lr = 1.0 if learning_rate is None else learning_rate
        return optimizer(direction, scale, lr, after=after, scale_first=True, name="adafactor")
