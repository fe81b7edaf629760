"""The σ knob, per-parameter scale, from past gradient magnitudes: Adagrad, RMSProp, Adam.

Each knob keeps a statistic of ``g_t²`` (or ``|g_t|``) per parameter and returns ``m_t / σ_t``,
where ``m_t`` is the direction (the raw gradient when no direction knob is set). ``t = step + 1``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._base import Context, one_minus_pow
from ._knobs import Scale
from ._struct import hyper, static

__all__ = ["AdagradScale", "RMSPropScale", "AdamScale", "AmsgradScale", "AdamaxScale"]


class AdagradScale(Scale):
    r"""Adagrad: σ from the sum (or, the lecture's form, the mean) of all past squared gradients.

    .. math::
        s_t = s_{t-1} + g_t^2,\; s_0 = a_0, \qquad
        \sigma_t = \sqrt{s_t} + \epsilon \quad\text{or, with } \texttt{average}:\;
        \sigma_t = \sqrt{s_t / t} + \epsilon

    The lecture defines σ as the root *mean* square of past gradients with a constant η; the
    textbook form (default) divides by the root of the *sum*, which equals the lecture's form
    with the schedule ``η/√t``.

    Warning:
      ``eps`` is added outside the root, as in PyTorch (``torch.optim.Adagrad``). optax's
      ``scale_by_rss`` adds it inside (``g / sqrt(s + eps)``); the two agree when ``eps = 0``.

    References:
      Duchi, Hazan & Singer, *Adaptive Subgradient Methods for Online Learning and Stochastic
      Optimization*, JMLR 2011.
    """

    elementwise = True

    slots = ("sum_of_squares",)
    summary = "σ = √(Σ g²) + ε (Adagrad)"
    initial_accumulator_value: float = hyper(0.1, "nonnegative")
    eps: float = hyper(1e-7, "nonnegative")
    average: bool = static(False)

    @property
    def needs_step(self) -> bool:  # type: ignore[override]
        return self.average

    def init_leaf(self, param: jax.Array) -> dict:
        return {"sum_of_squares": jnp.full_like(param, self.initial_accumulator_value)}

    def describe(self) -> str:
        if self.average:
            return f"{self!r}: σ = √(Σ g² / t) + ε (Adagrad, root mean square)"
        return super().describe()

    def step(self, g, m, slots, param, ctx: Context):
        s = slots["sum_of_squares"] + g * g
        ms = s / ctx.t if self.average else s
        return m / (jnp.sqrt(ms) + self.eps), {"sum_of_squares": s}


class RMSPropScale(Scale):
    r"""RMSProp: σ from an exponential moving average of squared gradients, optionally centred.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2, \quad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \;\;\text{(centred)}, \quad
        \sigma_t = \sqrt{v_t - \bar g_t^2} + \epsilon

    (without centring, :math:`\bar g_t = 0`). ``v_0 = initial_scale``.

    Warning:
      ``eps`` is added outside the root as in ``torch.optim.RMSprop``; optax's ``rmsprop`` adds it
      inside (set ``eps_in_sqrt=True`` for that). PyTorch's default decay is 0.99, optax's 0.9.

    References:
      Tieleman & Hinton, *Lecture 6.5 - RMSProp*, COURSERA: Neural Networks for Machine
      Learning, 2012. Graves, *Generating Sequences With Recurrent Neural Networks*, 2013
      (centred).
    """

    elementwise = True

    summary = "σ = √(EMA of g²) + ε (RMSProp)"
    decay: float = hyper(0.9, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    initial_scale: float = hyper(0.0, "nonnegative")
    centered: bool = static(False)
    eps_in_sqrt: bool = static(False)

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("nu", "mg") if self.centered else ("nu",)

    def init_leaf(self, param: jax.Array) -> dict:
        out = {"nu": jnp.full_like(param, self.initial_scale)}
        if self.centered:
            out["mg"] = jnp.zeros_like(param)
        return out

    def step(self, g, m, slots, param, ctx: Context):
        a = self.decay
        nu = a * slots["nu"] + (1 - a) * g * g
        new = {"nu": nu}
        var = nu
        if self.centered:
            mg = a * slots["mg"] + (1 - a) * g
            new["mg"] = mg
            var = nu - mg * mg
        if self.eps_in_sqrt:
            return m / jnp.sqrt(var + self.eps), new
        return m / (jnp.sqrt(var) + self.eps), new


def _debiased(v: jax.Array, b: Any, t: Any) -> jax.Array:
    return v / one_minus_pow(b, t)


class AdamScale(Scale):
    r"""Adam's σ: the root of the bias-corrected EMA of squared gradients.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        \hat v_t = v_t / (1-\beta_2^t), \quad
        \sigma_t = \sqrt{\hat v_t + \epsilon_{root}} + \epsilon

    With the :class:`~gradtx.Ema` direction (debiased) this is Adam exactly as in the paper,
    ``torch.optim.Adam`` and ``optax.adam``.

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """

    elementwise = True

    slots = ("nu",)
    needs_step = True
    summary = "σ = √(v̂) + ε, v = EMA of g² (Adam)"
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    eps_root: float = hyper(0.0, "nonnegative")

    def step(self, g, m, slots, param, ctx: Context):
        nu = self.b2 * slots["nu"] + (1 - self.b2) * g * g
        sigma = jnp.sqrt(_debiased(nu, self.b2, ctx.t) + self.eps_root) + self.eps
        return m / sigma, {"nu": nu}


class AmsgradScale(Scale):
    r"""AMSGrad's σ: Adam's with a running maximum of the second moment, so σ never shrinks.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        \tilde v_t = \max(\tilde v_{t-1}, v_t), \quad
        \sigma_t = \sqrt{\tilde v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon

    Warning:
      The maximum is over the raw moment and bias-corrected afterwards, as in
      ``torch.optim.Adam(amsgrad=True)``. optax's ``amsgrad`` takes the maximum of the
      bias-corrected moments instead; the two differ during the first ~1/(1−β2) steps.

    References:
      Reddi, Kale & Kumar, *On the Convergence of Adam and Beyond*, ICLR 2018.
    """

    elementwise = True

    slots = ("nu", "nu_max")
    needs_step = True
    summary = "σ = √(max_t v̂) + ε (AMSGrad)"
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    eps_root: float = hyper(0.0, "nonnegative")

    def step(self, g, m, slots, param, ctx: Context):
        nu = self.b2 * slots["nu"] + (1 - self.b2) * g * g
        nu_max = jnp.maximum(slots["nu_max"], nu)
        sigma = jnp.sqrt(_debiased(nu_max, self.b2, ctx.t) + self.eps_root) + self.eps
        return m / sigma, {"nu": nu, "nu_max": nu_max}


class AdamaxScale(Scale):
    r"""Adamax's σ: an exponentially weighted infinity norm of past gradients.

    .. math::
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \qquad \sigma_t = u_t

    ``ε`` sits inside the maximum, as in ``torch.optim.Adamax`` and ``optax.adamax`` (the paper
    has no ε), so σ is never below ε.

    References:
      Kingma & Ba, *Adam*, ICLR 2015, section 7.1.
    """

    elementwise = True

    slots = ("nu",)
    summary = "σ = max(β2·u, |g| + ε) (Adamax)"
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-8, "nonnegative")

    def step(self, g, m, slots, param, ctx: Context):
        u = jnp.maximum(self.b2 * slots["nu"], jnp.abs(g) + self.eps)
        return m / u, {"nu": u}
