"""The lecture's two σ knobs: Adagrad (the root of the sum of past squared gradients) and
RMSProp (the root of their EMA, so recent gradients weigh more; optionally centred).

``m_t / σ_t`` per parameter, ``t = step + 1``; storage dtypes, overflow-safe squares and safe
roots as described in :mod:`gradtx._scale.common`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Scale
from .._core.numerics import abs_sq, safe_sqrt
from .._core.struct import hyper, static
from .common import debias, moment_full, scaled_sq

__all__ = ["AdagradScale", "RMSPropScale"]


class AdagradScale(Scale):
    r"""Adagrad: σ from the sum (or, the lecture's form, the mean) of all past squared gradients.

    .. math::
        s_t = s_{t-1} + |g_t|^2,\; s_0 = a_0, \qquad
        \sigma_t = \sqrt{s_t} + \epsilon \quad\text{or, with } \texttt{average}:\;
        \sigma_t = \sqrt{s_t / t} + \epsilon

    The lecture defines σ as the root *mean* square of past gradients with a constant η; the
    textbook form (default) divides by the root of the *sum*, which equals the lecture's form
    with the schedule ``η/√t``. ``sum_of_squares`` is stored in float32 for float16 params.

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
        return {"sum_of_squares": moment_full(param, self.initial_accumulator_value)}

    def describe(self) -> str:
        if self.average:
            return f"{self!r}: σ = √(Σ g² / t) + ε (Adagrad, root mean square)"
        return super().describe()

    def step(self, g, m, slots, param, ctx: Context):
        s = slots["sum_of_squares"] + abs_sq(g)
        root = safe_sqrt(s) / jnp.sqrt(ctx.t) if self.average else safe_sqrt(s)
        return m / (root + self.eps), {"sum_of_squares": s}


class RMSPropScale(Scale):
    r"""RMSProp: σ from an exponential moving average of squared gradients, optionally centred.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) |g_t|^2, \quad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \;\;\text{(centred)}, \quad
        \sigma_t = \sqrt{\hat v_t - |\hat{\bar g}_t|^2} + \epsilon

    (without centring, :math:`\bar g_t = 0`). ``v_0 = initial_scale``. Without
    ``bias_correction`` (the default) :math:`\hat v_t = v_t` and :math:`\hat{\bar g}_t = \bar
    g_t`; with it, as in ``optax.scale_by_rms(bias_correction=True)`` and
    ``optax.scale_by_stddev``, both are divided by :math:`1-\alpha^t` (a step counter is kept),
    so ``RMSPropScale(decay=b2, bias_correction=True)`` is ``AdamScale(b2)`` without a first
    moment. A centred variance is clamped at 0 (at ``t = 1`` with bias correction it is exactly
    0, and rounding must not make its root NaN). ``nu`` is stored in float32 for float16
    params; ``mg`` in the param's dtype.

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
    bias_correction: bool = static(False)

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("nu", "mg") if self.centered else ("nu",)

    @property
    def needs_step(self) -> bool:  # type: ignore[override]
        return self.bias_correction

    def init_leaf(self, param: jax.Array) -> dict:
        out = {"nu": moment_full(param, self.initial_scale)}
        if self.centered:
            out["mg"] = jnp.zeros_like(param, dtype=jnp.result_type(param))
        return out

    def step(self, g, m, slots, param, ctx: Context):
        a = self.decay
        nu = a * slots["nu"] + scaled_sq(1 - a, g)
        new = {"nu": nu}
        var = nu
        if self.centered:
            mg = a * slots["mg"] + (1 - a) * g
            new["mg"] = mg
        if self.bias_correction:
            d = debias(a, ctx.t, nu)
            var = nu / d
            if self.centered:
                var = var - abs_sq(mg / d)
        elif self.centered:
            var = nu - abs_sq(mg)
        if self.centered:  # ≥ 0 in exact arithmetic; rounding can make it slightly negative
            var = jnp.maximum(var, 0)
        if self.eps_in_sqrt:
            return m / safe_sqrt(var + self.eps), new
        return m / (safe_sqrt(var) + self.eps), new
