"""Adafactor's σ knob: a factored second moment (row and column statistics) for big matrices."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core.context import Context
from .._core.knobs import Scale
from .._core.numerics import abs_sq, real, safe_sqrt
from .._core.placement import follow
from .._core.struct import hyper, static
from .common import moment_dtype, step_sharding

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
    """The root mean square of all entries of one array (``|x|²`` for complex ``x``)."""
    return safe_sqrt(jnp.mean(abs_sq(x)))


def _stat_zeros(param: jax.Array, shape: tuple[int, ...], drop: int | None | str) -> jax.Array:
    """Zeros for a statistic of ``param`` (float32 for float16), each call a new buffer.

    Placed as the jitted step returns it (see :func:`gradtx._core.placement.step_sharding`) when
    ``param`` is sharded with a ``NamedSharding``: the param's spec without axis ``drop`` (a
    row or column statistic), the param's spec (``drop="full"``: the unfactored moment), or
    replicated (``drop=None``: a 1-element placeholder). A traced param: see
    :func:`gradtx._core.placement.follow`.
    """
    dtype = moment_dtype(param.dtype)
    if isinstance(param, jax.core.Tracer) and isinstance(drop, int):
        # traced (jitted init): the sum of zeros placed like the param, so the statistic gets
        # the param's sharding without axis ``drop`` as the step's reduction gives it
        return jnp.sum(follow(param, jnp.zeros(param.shape, dtype)), axis=drop)
    sharding = None
    if drop == "full":
        sharding = step_sharding(param, None)
    elif drop is None:
        sharding = step_sharding(param, (None,) * len(shape))
    elif isinstance(drop, int):
        spec = getattr(getattr(param, "sharding", None), "spec", ())
        full = tuple(spec) + (None,) * (param.ndim - len(spec))
        sharding = step_sharding(param, full[:drop] + full[drop + 1 :])
    if sharding is not None:
        return jnp.zeros(shape, dtype, device=sharding)
    if drop == "full":
        return jnp.zeros_like(param, dtype=dtype)
    return jnp.zeros(shape, dtype)


@jax.custom_jvp
def safe_rsqrt(x: jax.Array) -> jax.Array:
    """``1/√x`` whose derivative ``-x^{-3/2}/2`` is clamped to the finite range, so a
    statistic that is constant at ε₁ = 1e-30 (a gradient entry always 0; the derivative
    ~1e45 overflows float32) contributes 0, not ``∞·0 = NaN``, to a meta-gradient."""
    return jax.lax.rsqrt(x)


@safe_rsqrt.defjvp
def _safe_rsqrt_jvp(primals: Any, tangents: Any) -> tuple[jax.Array, jax.Array]:
    (x,), (dx,) = primals, tangents
    y = jax.lax.rsqrt(x)
    big = jnp.finfo(x.dtype).max
    slope = jnp.clip(jnp.real(-0.5 * y * y * y), -big, big).astype(x.dtype)
    return y, slope * dx


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
    ``multiply_by_parameter_scale``). Unused slots hold a 1-element placeholder (each slot of
    each leaf its own buffer, so the state can be donated to a jitted step). ``t`` is offset by
    ``decay_offset`` (a non-negative integer, or a traced value under ``jax.vmap`` /
    ``optax.inject_hyperparams``) and clamped to at least 1.

    The statistics are stored in float32 for float16 params (else in the param's dtype; for
    complex params, in the complex dtype with imaginary part 0, as optax stores them), and for a
    param sharded with a ``NamedSharding`` they are created with the sharding the step returns
    (the param's spec without the reduced axis), so a sharded step compiles once.

    References:
      Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*,
      ICML 2018. https://arxiv.org/abs/1804.04235
    """

    slots = ("v_row", "v_col", "v")
    needs_step = True
    summary = "σ = √(factored EMA of g²), clipped by block RMS, × RMS(θ) (Adafactor)"
    decay_rate: float = hyper(0.8, "positive")
    decay_offset: int = hyper(0, "nonnegative")
    eps: float = hyper(1e-30, "nonnegative")
    clipping_threshold: float | None = hyper(1.0, "positive")
    eps_scale: float = hyper(1e-3, "nonnegative")
    min_dim_size_to_factor: int = static(128)
    factored: bool = static(True)
    multiply_by_parameter_scale: bool = static(True)

    def __post_init__(self) -> None:
        super().__post_init__()
        off = self.decay_offset
        if isinstance(off, float):  # a concrete number (hyper fields store floats)
            if not (math.isfinite(off) and off == int(off)):
                raise ValueError(
                    f"gradtx.{self.name}: decay_offset must be a non-negative integer, got {off!r}"
                )
            object.__setattr__(self, "decay_offset", int(off))

    @property
    def needs_params(self) -> bool:  # type: ignore[override]
        return self.multiply_by_parameter_scale

    def init_leaf(self, param: jax.Array) -> dict:
        dims = factored_dims(param.shape, self.factored, self.min_dim_size_to_factor)
        if dims is None:
            return {
                "v_row": _stat_zeros(param, (1,), None),
                "v_col": _stat_zeros(param, (1,), None),
                "v": _stat_zeros(param, param.shape, "full"),
            }
        a, b = dims
        row = _stat_zeros(param, tuple(np.delete(param.shape, b)), b)
        col = _stat_zeros(param, tuple(np.delete(param.shape, a)), a)
        return {"v_row": row, "v_col": col, "v": _stat_zeros(param, (1,), None)}

    def step(self, g, m, slots, param, ctx: Context):
        # No NaN before the offset is reached; β in real arithmetic (complex params too).
        t = jnp.maximum(real(ctx.t) - real(self.decay_offset), 1)
        beta = (1 - t ** (-real(self.decay_rate))).astype(g.dtype)
        sq = abs_sq(g) + self.eps
        dims = factored_dims(g.shape, self.factored, self.min_dim_size_to_factor)
        if dims is None:
            v = beta * slots["v"] + (1 - beta) * sq
            u = m * safe_rsqrt(v)
            new = {**slots, "v": v}
        else:
            a, b = dims
            row = beta * slots["v_row"] + (1 - beta) * jnp.mean(sq, axis=b)
            col = beta * slots["v_col"] + (1 - beta) * jnp.mean(sq, axis=a)
            # ``row`` lost axis b, so axis a of the full array is axis a - (a > b) in ``row``.
            row_axis = a - int(a > b)
            row_factor = safe_rsqrt(row / jnp.mean(row, axis=row_axis, keepdims=True))
            col_factor = safe_rsqrt(col)
            u = m * jnp.expand_dims(row_factor, b) * jnp.expand_dims(col_factor, a)
            new = {**slots, "v_row": row, "v_col": col}
        if self.clipping_threshold is not None:
            u = u / jnp.maximum(1, rms(u) / self.clipping_threshold)
        if self.multiply_by_parameter_scale:
            u = u * jnp.maximum(rms(param), self.eps_scale)
        return u, new
