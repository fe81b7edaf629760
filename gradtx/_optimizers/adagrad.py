"""Adagrad, RMSProp and Adadelta: the named optimizers of the lecture's σ knobs.

Every function returns an :class:`~gradtx.Optimizer`; ``describe()`` says which knobs it turns.
Argument names follow optax. In the rules, ``g_t`` is the gradient, ``t`` the 1-based step,
``η_t`` the (scheduled) learning rate, ``θ`` the parameters.
"""

from __future__ import annotations

from typing import Any

from .._direction.momentum import Momentum
from .._scale.rms import AdagradScale, RMSPropScale
from .._scale.variants import AdadeltaScale
from .builder import Optimizer, naming, optimizer
from .common import Schedule, decayed_weights

__all__ = ["adagrad", "rmsprop", "adadelta"]


def adagrad(
    learning_rate: Schedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    average: bool = False,
) -> Optimizer:
    r"""Adagrad: divide by the root of the sum of all past squared gradients.

    .. math::
        s_t = s_{t-1} + g_t^2, \quad s_0 = a_0, \qquad
        \theta_t = \theta_{t-1} - \eta_t\, g_t / (\sqrt{s_t} + \epsilon)

    With ``average=True``, the lecture's form :math:`\sigma_t = \sqrt{s_t/t} + \epsilon`, the
    root *mean* square, which with a constant η can burst (see the lecture lab).

    Knobs: g = none, σ = Adagrad, η = ``learning_rate``.

    Warning:
      ``eps`` is outside the root as in ``torch.optim.Adagrad`` (which defaults to
      ``initial_accumulator_value=0, eps=1e-10``); ``optax.adagrad`` puts it inside. The defaults
      here are optax's.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adagrad(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'none (identity)'
      >>> tx.describe()["sigma"]
      'AdagradScale(...): σ = √(Σ g²) + ε (Adagrad)'

    References:
      Duchi, Hazan & Singer, JMLR 2011.
    """
    with naming("adagrad"):
        scale = AdagradScale(initial_accumulator_value, eps, average)
        return optimizer(None, scale, learning_rate, name="adagrad")


def rmsprop(
    learning_rate: Schedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> Optimizer:
    r"""RMSProp, optionally centred and with momentum on the scaled gradient.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2, \quad
        \sigma_t = \sqrt{v_t - \bar g_t^2} + \epsilon, \quad
        m_t = \mu m_{t-1} + g_t/\sigma_t, \quad \theta_t = \theta_{t-1} - \eta_t m_t

    (:math:`\bar g_t` the EMA of gradients when ``centered``, else 0; without momentum
    :math:`m_t = g_t/\sigma_t`). With ``eps_in_sqrt`` (the default, as optax) the root is
    :math:`\sqrt{v_t - \bar g_t^2 + \epsilon}` instead.

    Knobs: σ = RMSProp first, then g = momentum (``scale_first``), η = ``learning_rate``.
    Equals ``optax.rmsprop`` (same arguments) and, with ``eps_in_sqrt=False``,
    ``torch.optim.RMSprop(alpha=decay, ...)``.

    Args:
      learning_rate: η, a float or a schedule of the step count.
      decay: α, the decay of the EMA of squared gradients.
      eps: ε, added inside the root (``eps_in_sqrt=True``) or to the root.
      initial_scale: ``v_0``.
      eps_in_sqrt: where ε goes (optax's default ``True``; PyTorch's place is ``False``).
      centered: subtract the square of the EMA of gradients (Graves' centred RMSProp).
      momentum: μ of the momentum on the scaled gradient, or ``None`` for none (``0.0`` keeps a
        buffer, as optax, so μ may be traced).
      nesterov: Nesterov momentum.
      bias_correction: divide the EMAs by ``1 - α^t`` (optax's meaning).

    Warning:
      The default ``eps_in_sqrt=True`` is optax's; ``torch.optim.RMSprop`` adds ε outside the
      root (pass ``eps_in_sqrt=False``). PyTorch's default ``alpha`` is 0.99, optax's (and this)
      0.9. optax applies η before the momentum; the two agree for a constant η.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.rmsprop(0.01, centered=True)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'none (identity)'
      >>> tx.describe()["sigma"]
      'RMSPropScale(...): σ = √(EMA of g²) + ε (RMSProp)'

    References:
      Tieleman & Hinton, Coursera lecture 6.5, 2012. Graves, 2013 (centred).
    """
    with naming("rmsprop"):
        scale = RMSPropScale(decay, eps, initial_scale, centered, eps_in_sqrt, bias_correction)
        direction = Momentum(momentum, nesterov) if momentum is not None else None
        return optimizer(direction, scale, learning_rate, scale_first=True, name="rmsprop")


def adadelta(
    learning_rate: Schedule | None = None,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
) -> Optimizer:
    r"""Adadelta: units-correct steps from the ratio of RMS updates to RMS gradients.

    .. math::
        v_t = \rho v_{t-1} + (1-\rho)(g_t + \lambda\theta)^2, \quad
        d_t = \frac{\sqrt{x_{t-1}+\epsilon}}{\sqrt{v_t+\epsilon}} (g_t + \lambda\theta), \quad
        x_t = \rho x_{t-1} + (1-\rho) d_t^2, \quad \theta_t = \theta_{t-1} - \eta_t d_t

    Knobs: before = L2 weight decay (coupled, as in ``torch.optim.Adadelta`` and
    ``optax.adadelta``), σ = Adadelta, η = ``learning_rate`` (1 in the paper).

    Args:
      learning_rate: η, a float or a schedule; ``None`` means η = 1.
      rho: ρ, the decay of both EMAs.
      eps: ε inside both roots.
      weight_decay: λ of the coupled L2 decay (0: none; may be traced).
      weight_decay_mask: which leaves to decay (a tree of bools or a function of params).

    Warning:
      ``optax.adadelta(learning_rate=None)`` (its default) leaves out the learning-rate stage
      and with it the sign flip, so it *ascends*; here ``None`` is η = 1 and descends.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adadelta()
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'none (identity)'
      >>> tx.describe()["sigma"]
      'AdadeltaScale(...): σ = √(EMA g² + ε) / √(EMA Δ² + ε) (Adadelta)'

    References:
      Zeiler, *ADADELTA: An Adaptive Learning Rate Method*, 2012.
    """
    with naming("adadelta"):
        before = decayed_weights(weight_decay, weight_decay_mask)
        lr = 1.0 if learning_rate is None else learning_rate
        return optimizer(None, AdadeltaScale(rho, eps), lr, before=before, name="adadelta")
