"""More σ knobs: AdaBelief, Yogi, Adadelta and RAdam's rectified scale.

Each returns ``m_t / σ_t`` from the direction ``m_t`` (debiased EMA for the Adam family) and
keeps its statistic per parameter. ``t = step + 1``. Complex parameters, float16 statistics
(stored in float32), overflow-safe squares and safe roots as described in
:mod:`gradtx._scale.common`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Scale
from .._core.numerics import one_minus_pow, real, safe_sqrt
from .._core.struct import hyper
from .common import debiased_root, moment_full, scaled_sq

__all__ = ["AdaBeliefScale", "YogiScale", "AdadeltaScale", "RAdamScale"]


class AdaBeliefScale(Scale):
    r"""AdaBelief's σ: the EMA of the squared *surprise* ``g_t − m_t`` instead of ``g_t²``.

    .. math::
        s_t = \beta_2 s_{t-1} + (1-\beta_2)|g_t - m_t|^2 + \epsilon_{root}, \quad
        \sigma_t = \sqrt{s_t / (1-\beta_2^t)} + \epsilon

    ``m_t`` is the direction knob's raw (not debiased) EMA, read from its ``mu`` slot. As in the
    paper and ``optax.adabelief``.

    References:
      Zhuang et al., *AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients*, NeurIPS 2020. https://arxiv.org/abs/2010.07468
    """

    elementwise = True

    slots = ("nu",)
    needs_step = True
    reads_direction = True
    summary = "σ = √(EMA of (g − m)²) + ε (AdaBelief)"
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-16, "nonnegative")
    eps_root: float = hyper(1e-16, "nonnegative")

    def step(self, g, m, slots, param, ctx: Context, direction=None):
        if direction is None or "mu" not in direction:
            raise TypeError(f"gradtx.{self.name} needs a direction knob with a 'mu' slot")
        err = g - direction["mu"]
        s = self.b2 * slots["nu"] + scaled_sq(1 - self.b2, err) + self.eps_root
        sigma = debiased_root(s, self.b2, ctx.t) + self.eps
        return m / sigma, {"nu": s}

    def init_leaf(self, param: jax.Array) -> dict:
        return {"nu": moment_full(param)}


class YogiScale(Scale):
    r"""Yogi's σ: an additive second-moment update that moves ``v`` towards ``g²`` slowly.

    .. math::
        v_t = v_{t-1} - (1-\beta_2)\,\operatorname{sign}(v_{t-1} - |g_t|^2)\, |g_t|^2, \quad
        \sigma_t = \sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon

    ``v_0 = initial_accumulator_value``. Bias correction as in ``optax.yogi``.

    Warning:
      optax also starts the first moment at ``initial_accumulator_value``; gradtx starts it at
      zero as in the paper (a difference of ``1e-6·β1^t``).

    References:
      Zaheer et al., *Adaptive Methods for Nonconvex Optimization*, NeurIPS 2018.
    """

    elementwise = True

    slots = ("nu",)
    needs_step = True
    summary = "σ = √(v̂) + ε, v −= (1−β2)·sign(v − g²)·g² (Yogi)"
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-3, "nonnegative")
    eps_root: float = hyper(0.0, "nonnegative")
    initial_accumulator_value: float = hyper(1e-6, "nonnegative")

    def init_leaf(self, param: jax.Array) -> dict:
        return {"nu": moment_full(param, self.initial_accumulator_value)}

    def step(self, g, m, slots, param, ctx: Context):
        c = 1 - self.b2
        h = scaled_sq(c, g)  # (1-β2)·g², formed without overflow
        # sign(v - g²) = sign((1-β2)·v - h): the same comparison without forming g².
        v = slots["nu"] - jnp.sign(c * slots["nu"] - h) * h
        sigma = debiased_root(v, self.b2, ctx.t, self.eps_root) + self.eps
        return m / sigma, {"nu": v}


class AdadeltaScale(Scale):
    r"""Adadelta: σ is the ratio of the RMS of past gradients to the RMS of past updates.

    .. math::
        v_t = \rho v_{t-1} + (1-\rho) |g_t|^2, \quad
        d_t = \frac{\sqrt{x_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, m_t, \quad
        x_t = \rho x_{t-1} + (1-\rho) |d_t|^2

    As in ``torch.optim.Adadelta`` and ``optax.adadelta`` (whose default learning rate is 1).

    References:
      Zeiler, *ADADELTA: An Adaptive Learning Rate Method*, 2012.
      https://arxiv.org/abs/1212.5701
    """

    elementwise = True

    slots = ("nu", "delta_nu")
    summary = "σ = √(EMA g² + ε) / √(EMA Δ² + ε) (Adadelta)"
    rho: float = hyper(0.9, "unit")
    eps: float = hyper(1e-6, "positive")

    def init_leaf(self, param: jax.Array) -> dict:
        return {"nu": moment_full(param), "delta_nu": moment_full(param)}

    def step(self, g, m, slots, param, ctx: Context):
        v = self.rho * slots["nu"] + scaled_sq(1 - self.rho, g)
        d = safe_sqrt(slots["delta_nu"] + self.eps) / safe_sqrt(v + self.eps) * m
        x = self.rho * slots["delta_nu"] + scaled_sq(1 - self.rho, d)
        return d, {"nu": v, "delta_nu": x}


class RAdamScale(Scale):
    r"""RAdam's σ: Adam's, rectified by the variance of the adaptive rate; plain SGD early on.

    .. math::
        \rho_\infty = \tfrac{2}{1-\beta_2} - 1, \quad
        \rho_t = \rho_\infty - \tfrac{2 t \beta_2^t}{1-\beta_2^t}, \quad
        r_t = \sqrt{\tfrac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

    .. math::
        d_t = r_t\, m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon) \text{ if } \rho_t >
        \text{threshold, else } d_t = m_t

    Warning:
      ``torch.optim.RAdam`` computes ``sqrt(1-β2^t) / (sqrt(v_t) + ε)``, which places ε
      differently (a difference of order ε/√v̂); optax switches at ``ρ_t ≥ threshold``.

    References:
      Liu et al., *On the Variance of the Adaptive Learning Rate and Beyond*, ICLR 2020.
      https://arxiv.org/abs/1908.03265
    """

    elementwise = True

    slots = ("nu",)
    needs_step = True
    summary = "σ = √(v̂)/r_t + ε once ρ_t > threshold, else 1 (RAdam)"
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    eps_root: float = hyper(0.0, "nonnegative")
    threshold: float = hyper(5.0, "any")

    def step(self, g, m, slots, param, ctx: Context):
        b2, t = self.b2, ctx.t
        v = b2 * slots["nu"] + scaled_sq(1 - b2, g)
        # The rectification is a real scalar of b2 and t: computed in real arithmetic.
        b2r, tr = real(b2), real(t)
        rho_inf = 2 / (1 - b2r) - 1
        debias = one_minus_pow(b2r, tr)  # 1 - b2**t
        rho = rho_inf - 2 * tr * (1 - debias) / debias
        rect = safe_sqrt(
            jnp.maximum((rho - 4) * (rho - 2) * rho_inf, 0) / ((rho_inf - 4) * (rho_inf - 2) * rho)
        )
        adapted = rect.astype(m.dtype) * m / (debiased_root(v, b2, t, self.eps_root) + self.eps)
        return jnp.where(rho > real(self.threshold), adapted, m), {"nu": v}

    def init_leaf(self, param: jax.Array) -> dict:
        return {"nu": moment_full(param)}
