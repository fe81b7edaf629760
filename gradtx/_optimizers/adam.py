"""Adam and its family: AdamW, NAdam, NAdamW, Adamax, AMSGrad.

Every function returns an :class:`~gradtx.Optimizer`; ``describe()`` says which knobs it turns.
Argument names follow optax, so switching is a change of import. In the rules, ``g_t`` is the
gradient, ``t`` the 1-based step, ``η_t`` the (scheduled) learning rate, ``θ`` the parameters.
"""

from __future__ import annotations

from typing import Any

from .._direction.momentum import Ema, NesterovEma
from .._scale.adam import AdamaxScale, AdamScale, AmsgradScale
from .._scale.optax_forms import OptaxAmsgradScale
from .builder import Optimizer, naming, optimizer
from .common import Schedule, decayed_weights

__all__ = ["adam", "adamw", "nadam", "nadamw", "adamax", "amsgrad"]


def adam_direction(b1: float, nesterov: bool, mu_dtype: Any = None) -> Any:
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
        direction = adam_direction(b1, nesterov, mu_dtype)
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
            adam_direction(b1, nesterov, mu_dtype),
            AdamScale(b2, eps, eps_root),
            learning_rate,
            after=decayed_weights(weight_decay, mask),
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
