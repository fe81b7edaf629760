"""Adafactor's σ knob: a factored second moment (row and column statistics) for big matrices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._base import Context
from ._knobs import Scale
from ._struct import hyper, static

__all__ = ["FactoredScale", "factored_dims"]


def factored_dims(shape: tuple[int, ...], factored: bool, min_dim: int) -> tuple[int, int] | None:
    """The (second largest, largest) axes to factor over, or ``None`` to keep a full moment."""
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape, kind="stable")
    if shape[order[-2]] < min_dim:
        return None
    return int(order[-2]), int(order[-1])


def rms(x: jax.Array) -> jax.Array:
    """The root mean square of all entries of one array."""
    return jnp.sqrt(jnp.mean(x * x))


class FactoredScale(Scale):
    r"""Adafactor's σ with update clipping and relative step size, for one array.

    With :math:`\hat\beta_{2,t} = 1 - t^{-c}` (``decay_rate`` c, ``t`` offset by
    ``decay_offset``) and :math:`G = g_t^2 + \epsilon_1`. For an array whose two largest axes
    ``a`` (second largest) and ``b`` (largest) both have at least ``min_dim_size_to_factor``
    entries, only a row and a column statistic are kept:

    .. math::
        R_t = \hat\beta R_{t-1} + (1-\hat\beta)\,\mathrm{mean}_b\, G, \quad
        C_t = \hat\beta C_{t-1} + (1-\hat\beta)\,\mathrm{mean}_a\, G, \quad
        \hat V_t = R_t C_t / \mathrm{mean}_a R_t

    otherwise a full :math:`V_t = \hat\beta V_{t-1} + (1-\hat\beta) G`. Then

    .. math::
        u = g_t / \sqrt{\hat V_t}, \quad u \leftarrow u / \max(1, \mathrm{RMS}(u)/d), \quad
        u \leftarrow u \cdot \max(\epsilon_2, \mathrm{RMS}(\theta))

    (clipping threshold ``d``; the last factor, the relative step size, only with
    ``multiply_by_parameter_scale``). Unused slots hold a 1-element placeholder.

    References:
      Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*,
      ICML 2018. https://arxiv.org/abs/1804.04235
    """

    slots = ("v_row", "v_col", "v")
    needs_step = True
    summary = "σ = √(factored EMA of g²), clipped by block RMS, × RMS(θ) (Adafactor)"
    decay_rate: float = hyper(0.8, "positive")
    decay_offset: int = static(0)
    eps: float = hyper(1e-30, "nonnegative")
    clipping_threshold: float | None = hyper(1.0, "positive")
    eps_scale: float = hyper(1e-3, "nonnegative")
    min_dim_size_to_factor: int = static(128)
    factored: bool = static(True)
    multiply_by_parameter_scale: bool = static(True)

    @property
    def needs_params(self) -> bool:  # type: ignore[override]
        return self.multiply_by_parameter_scale

    def init_leaf(self, param: jax.Array) -> dict:
        dims = factored_dims(param.shape, self.factored, self.min_dim_size_to_factor)
        dummy = jnp.zeros((1,), param.dtype)
        if dims is None:
            return {"v_row": dummy, "v_col": dummy, "v": jnp.zeros_like(param)}
        a, b = dims
        row = jnp.zeros(np.delete(param.shape, b), param.dtype)
        col = jnp.zeros(np.delete(param.shape, a), param.dtype)
        return {"v_row": row, "v_col": col, "v": dummy}

    def step(self, g, m, slots, param, ctx: Context):
        t = jnp.maximum(ctx.t - self.decay_offset, 1)  # no NaN before the offset is reached
        beta = 1 - t ** (-self.decay_rate)
        sq = g * g + self.eps
        dims = factored_dims(g.shape, self.factored, self.min_dim_size_to_factor)
        if dims is None:
            v = beta * slots["v"] + (1 - beta) * sq
            u = m * jax.lax.rsqrt(v)
            new = {**slots, "v": v}
        else:
            a, b = dims
            row = beta * slots["v_row"] + (1 - beta) * jnp.mean(sq, axis=b)
            col = beta * slots["v_col"] + (1 - beta) * jnp.mean(sq, axis=a)
            # ``row`` lost axis b, so axis a of the full array is axis a - (a > b) in ``row``.
            row_axis = a - int(a > b)
            row_factor = jax.lax.rsqrt(row / jnp.mean(row, axis=row_axis, keepdims=True))
            col_factor = jax.lax.rsqrt(col)
            u = m * jnp.expand_dims(row_factor, b) * jnp.expand_dims(col_factor, a)
            new = {**slots, "v_row": row, "v_col": col}
        if self.clipping_threshold is not None:
            u = u / jnp.maximum(1, rms(u) / self.clipping_threshold)
        if self.multiply_by_parameter_scale:
            u = u * jnp.maximum(rms(param), self.eps_scale)
        return u, new
