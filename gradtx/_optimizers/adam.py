"""Named optimizers, each one composition of knobs: SGD, Adagrad, RMSProp, Adadelta, the Adams.

Every function returns an :class:`~gradtx.Optimizer`; ``describe()`` says which knobs it turns.
Argument names follow optax, so switching is a change of import. In the rules, ``g_t`` is the
gradient, ``t`` the 1-based step, ``η_t`` the (scheduled) learning rate, ``θ`` the parameters.
"""

from __future__ import annotations

from typing import Any

from ._decay import AddDecayedWeights
from ._direction import Ema, Momentum, NesterovEma, Sign
from ._optimizer import Optimizer, naming, optimizer
from ._scale import AdagradScale, AdamaxScale, AdamScale, AmsgradScale, RMSPropScale
from ._scale_optax import OptaxAmsgradScale
from ._scale_variants import AdadeltaScale

__all__ = [
    "sgd",
    "sign_sgd",
    "adagrad",
    "rmsprop",
    "adadelta",
    "adam",
    "adamw",
    "nadam",
    "nadamw",
    "adamax",
    "amsgrad",
]

Schedule = Any  # a float or a function of the step count


def _all_true(mask: Any) -> Any:
    """optax's ``mask=True`` (every leaf) as gradtx's ``None``."""
    return None if mask is True else mask


def _decay(weight_decay: float, mask: Any) -> tuple:
    return (AddDecayedWeights(weight_decay, _all_true(mask)),)


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
        before = _decay(weight_decay, weight_decay_mask)
        lr = 1.0 if learning_rate is None else learning_rate
        return optimizer(None, AdadeltaScale(rho, eps), lr, before=before, name="adadelta")


def _adam_direction(b1: float, nesterov: bool, mu_dtype: Any = None) -> Any:
    return NesterovEma(b1, mu_dtype) if nesterov else Ema(b1, True, mu_dtype)


def adam(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> Optimizer:
    r"""Adam: momentum divided by the root of an EMA of squared gradients, both bias-corrected.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,

    .. math::
        \theta_t = \theta_{t-1} - \eta_t\,
        \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Knobs: g = EMA (debiased; NAdam's Nesterov EMA if ``nesterov``), σ = Adam, η =
    ``learning_rate``. Equals ``torch.optim.Adam`` (with ``eps_root=0``) and ``optax.adam``.

    Args:
      learning_rate: η, a float or a schedule of the step count.
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: added to the root (outside), for numerical stability.
      eps_root: added inside the root (useful when differentiating through the update).
      mu_dtype: the dtype the first moment ``m`` is stored in (e.g. ``jnp.bfloat16``);
        ``None``: the param's dtype.
      nesterov: use NAdam's Nesterov momentum (see :func:`nadam`).

    Returns:
      An :class:`~gradtx.Optimizer`; its state has ``knobs.count``, ``knobs.mu``, ``knobs.nu``.

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> tx = gradtx.adam(0.1)
      >>> state = tx.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = tx.update(grads, state, params)
      >>> [round(x, 4) for x in updates["w"].tolist()]  # the first Adam step is -η·sign(g)
      [-0.1, -0.1]

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
      https://arxiv.org/abs/1412.6980
    """
    name = "nadam" if nesterov else "adam"
    with naming(name, decay="b1"):
        direction = _adam_direction(b1, nesterov, mu_dtype)
        return optimizer(direction, AdamScale(b2, eps, eps_root), learning_rate, name=name)


def adamw(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: float = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
) -> Optimizer:
    r"""AdamW: Adam with decoupled weight decay.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left(
        \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon} + \lambda\,\theta_{t-1}
        \right)

    The decay λ is multiplied by the learning rate (as in ``torch.optim.AdamW`` and
    ``optax.adamw``), not by the paper's separate schedule multiplier. ``mask`` (a pytree of
    bools or a function of params) selects the leaves to decay.

    Knobs: g = EMA, σ = Adam, after = decoupled weight decay, η = ``learning_rate``.

    ``learning_rate``, ``b1``, ``b2``, ``eps``, ``eps_root`` and ``mu_dtype`` are as in
    :func:`adam`.

    Args:
      weight_decay: λ, multiplied by η.
      mask: which leaves to decay (a tree of bools or a function of params); ``None``: all.
      nesterov: use NAdam's Nesterov momentum (see :func:`nadamw`).

    Warning:
      The default ``weight_decay`` is optax's 1e-4; PyTorch's is 1e-2. The order of the
      positional arguments is optax's: ``mu_dtype`` comes before ``weight_decay``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adamw(1e-3, weight_decay=1e-2)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'Ema(...): EMA of gradients m = β1·m + (1−β1)·g'
      >>> tx.describe()["sigma"]
      'AdamScale(...): σ = √(v̂) + ε, v = EMA of g² (Adam)'

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    name = "nadamw" if nesterov else "adamw"
    with naming(name, decay="b1"):
        return optimizer(
            _adam_direction(b1, nesterov, mu_dtype),
            AdamScale(b2, eps, eps_root),
            learning_rate,
            after=_decay(weight_decay, mask),
            name=name,
        )


def nadam(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
) -> Optimizer:
    r"""NAdam: Adam with Nesterov momentum.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t\,
        \frac{\beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)}
        {\sqrt{v_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Knobs: g = Nesterov EMA, σ = Adam, η = ``learning_rate``. Equals ``optax.nadam`` and
    ``torch.optim.NAdam(momentum_decay=1e9)``. Arguments as in :func:`adam`
    (``nesterov=False`` gives :func:`adam`, as in optax).

    Warning:
      PyTorch's default ``momentum_decay=4e-3`` also warms β1 up (Dozat's μ_t schedule); gradtx
      keeps β1 constant, like optax. PyTorch's μ_t = β1·(1 − ½·0.96^(t·momentum_decay)) is β1
      only for a huge ``momentum_decay``; ``momentum_decay=0`` gives β1/2, not β1.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.nadam(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'NesterovEma(...): Nesterov EMA (NAdam) d = β1·m̂_{t+1} + (1−β1)·ĝ_t'
      >>> tx.describe()["sigma"]
      'AdamScale(...): σ = √(v̂) + ε, v = EMA of g² (Adam)'

    References:
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR 2016 workshop.
    """
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)


def nadamw(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: float = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = True,
) -> Optimizer:
    r"""NAdamW: :func:`nadam` with decoupled weight decay ``η_t λ θ`` as in :func:`adamw`.

    Knobs: g = Nesterov EMA, σ = Adam, after = decoupled weight decay, η = ``learning_rate``.
    Equals ``optax.nadamw`` and ``torch.optim.NAdam(decoupled_weight_decay=True,
    momentum_decay=1e9)`` (see :func:`nadam`'s Warning). Arguments as in :func:`adamw`.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.nadamw(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'NesterovEma(...): Nesterov EMA (NAdam) d = β1·m̂_{t+1} + (1−β1)·ĝ_t'
      >>> tx.describe()["sigma"]
      'AdamScale(...): σ = √(v̂) + ε, v = EMA of g² (Adam)'
    """
    return adamw(
        learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov=nesterov
    )


def adamax(
    learning_rate: Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Optimizer:
    r"""Adamax: Adam with an infinity norm in place of the second moment.

    .. math::
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \qquad
        \theta_t = \theta_{t-1} - \eta_t\, \frac{m_t / (1-\beta_1^t)}{u_t}

    Knobs: g = EMA (debiased), σ = Adamax, η = ``learning_rate``. Equals ``optax.adamax`` and
    ``torch.optim.Adamax`` (ε inside the maximum; the paper has no ε).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adamax(2e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'Ema(...): EMA of gradients m = β1·m + (1−β1)·g'
      >>> tx.describe()["sigma"]
      'AdamaxScale(...): σ = max(β2·u, |g| + ε) (Adamax)'

    References:
      Kingma & Ba, ICLR 2015, section 7.1.
    """
    with naming("adamax", decay="b1"):
        return optimizer(Ema(b1), AdamaxScale(b2, eps), learning_rate, name="adamax")


def amsgrad(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> Optimizer:
    r"""AMSGrad: Adam whose second moment never decreases.

    .. math::
        \tilde v_t = \max(\tilde v_{t-1}, v_t), \qquad
        \theta_t = \theta_{t-1} - \eta_t\,
        \frac{m_t/(1-\beta_1^t)}{\sqrt{\tilde v_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Knobs: g = EMA (debiased), σ = AMSGrad, η = ``learning_rate``. Equals
    ``torch.optim.Adam(amsgrad=True)``.

    ``learning_rate``, ``b1``, ``b2``, ``eps``, ``eps_root`` and ``mu_dtype`` are as in
    :func:`adam`.

    Args:
      bias_correction_mu: divide ``m_t`` by ``1 - β1^t``.
      bias_correction_nu: divide the maximum by ``1 - β2^t``; with ``False`` the rule is
        :math:`\tilde v_t / 1` and equals ``optax.amsgrad(..., bias_correction_nu=False)``.

    Warning:
      ``optax.amsgrad`` takes the maximum of the *bias-corrected* moments; see
      :class:`~gradtx.AmsgradScale`. ``gradtx.scale_by_amsgrad`` is optax's rule.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.amsgrad(1e-3)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, tx.init(params), params)
      >>> updates["w"].dtype
      dtype('float32')
      >>> tx.describe()["g"]
      'Ema(...): EMA of gradients m = β1·m + (1−β1)·g'
      >>> tx.describe()["sigma"]
      'AmsgradScale(...): σ = √(max_t v̂) + ε (AMSGrad)'

    References:
      Reddi, Kale & Kumar, *On the Convergence of Adam and Beyond*, ICLR 2018.
    """
    with naming("amsgrad", decay="b1"):
        if bias_correction_nu:
            scale: Any = AmsgradScale(b2, eps, eps_root)
        else:  # the maximum of raw moments, not debiased: torch's and optax's rules agree
            scale = OptaxAmsgradScale(b2, eps, eps_root, debias=False)
        direction = Ema(b1, bias_correction_mu, mu_dtype)
        return optimizer(direction, scale, learning_rate, name="amsgrad")
