"""Numerics every rule shares: bias-correction factors, the compute dtype, ``|x|²``, a root with
a finite derivative at 0, the real part of a complex hyperparameter.

Used by the knobs (g, σ), the stages (clipping, trust ratios) and the lifting in
:mod:`gradtx._core.stage`; nothing here knows about pytrees or state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["one_minus_pow", "compute_dtype", "abs_sq", "real", "safe_sqrt"]


def one_minus_pow(b: Any, t: Any) -> jax.Array:
    """``1 - b**t`` without cancellation: ``-expm1(t·log b)`` (bias corrections with b≈1).

    For b = 0.999 in float32, ``1 - b**t`` is off by up to ~7e-6 relative; this form by ~1e-7.
    """
    return -jnp.expm1(t * jnp.log(b))


def compute_dtype(dtype: Any) -> Any:
    """``dtype`` widened to at least float32, whatever ``jax_numpy_dtype_promotion`` is set to."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.promote_types(dtype, jnp.float32)


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|²`` in ``x``'s dtype: ``x·x`` for real, ``x·conj(x)`` (imaginary part 0) for complex.

    Kept in ``x``'s dtype (not made real) so it combines with the other values of a rule
    computed in that dtype under strict dtype promotion.
    """
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        # Summed in the real dtype: x·conj(x) computed with fused multiply-adds leaves an
        # imaginary residue of ~1e-7·|x|², which a moment would accumulate.
        re, im = jnp.real(x), jnp.imag(x)
        return (re * re + im * im).astype(x.dtype)
    return x * x


def real(x: Any) -> Any:
    """The real part of a scalar hyperparameter or step held in a complex compute dtype (the
    rule of a complex parameter); ``x`` itself otherwise. Bias corrections and schedules of
    ``t`` are computed in real arithmetic (complex ``expm1`` and powers are less accurate)."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jnp.real(x)
    return x


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """``√x`` whose derivative at ``x = 0`` is 0 instead of ``∞`` (the value is unchanged).

    A statistic that is exactly 0 (a gradient element that is always 0) then contributes 0 to a
    meta-gradient instead of ``∞·0 = NaN``. For complex ``x`` (a real value stored in a complex
    dtype) the test is on the real part.
    """
    return jnp.sqrt(x)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals: Any, tangents: Any) -> tuple[jax.Array, jax.Array]:
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    pos = jnp.real(x) > 0
    # The double where keeps both the tangent and its transpose free of 0·∞.
    denom = jnp.where(pos, 2 * y, jnp.ones_like(y))
    return y, jnp.where(pos, dx / denom, jnp.zeros_like(dx))
