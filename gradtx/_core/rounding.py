"""Stochastic rounding: a float32 value to a narrower float dtype, up or down at random with
the probabilities that make the result unbiased.

For ``x`` between the two neighbours ``lo < x < hi`` of the target dtype::

    round(x) = hi  with probability (x − lo) / (hi − lo),   lo otherwise

so ``E[round(x)] = x``: an update far below half an ulp of the stored value still moves it on
average, where round-to-nearest drops it every time (the reason bfloat16 training with plain
rounding stalls; Gupta et al. 2015, "Deep learning with limited numerical precision"; Zamirai et
al. 2020, "Revisiting BFloat16 training"). Values the dtype holds exactly, infinities and NaN are
returned as they are. Used by the state-dtype policy (bfloat16 moments) and by the rounding of
low-precision parameters on apply.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["stochastic_round", "leaf_key", "nearest"]


def leaf_key(key: jax.Array, step: Any, index: int) -> jax.Array:
    """The key of leaf ``index`` at step ``step``: deterministic, different per step and leaf."""
    return jax.random.fold_in(jax.random.fold_in(key, step), index)


def nearest(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` (float32) rounded to nearest even in ``dtype`` (bfloat16 or float16), as float32.

    ``x.astype(dtype).astype(jnp.float32)`` in value, subnormals, overflow to ±inf and NaN
    included, but as ``lax.reduce_precision``, which XLA keeps: it may remove a float32 →
    bfloat16 → float32 pair of casts where it allows excess precision (GPU), and a Kahan
    compensation computed through such a pair would then be 0. ``reduce_precision`` flushes
    float16's subnormals (below ``2⁻¹⁴``) to zero, so those are rounded on their fixed grid.
    """
    info = jnp.finfo(dtype)
    out = jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)
    if info.minexp > jnp.finfo(jnp.float32).minexp:  # float16: subnormals float32 holds
        step = float(info.smallest_subnormal)  # 2⁻²⁴, a power of two: exact scalings
        sub = jnp.round(x * jnp.float32(1 / step)) * jnp.float32(step)
        out = jnp.where(jnp.abs(x) < jnp.float32(info.smallest_normal), sub, out)
    return out


def stochastic_round(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
    """``x`` (float32 or wider) rounded to ``dtype`` stochastically; see the module docstring.

    bfloat16 from float32 uses the exact bit form (add 16 random low bits, truncate); any other
    narrower float dtype picks between the two neighbours with the probability above. A dtype at
    least as wide as ``x``'s is a plain cast.
    """
    dtype = jnp.dtype(dtype)
    if jnp.finfo(dtype).bits >= jnp.finfo(x.dtype).bits:
        return x.astype(dtype)
    if dtype == jnp.bfloat16 and x.dtype == jnp.float32:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
        noise = jax.random.bits(key, x.shape, jnp.uint32) & jnp.uint32(0xFFFF)
        up = (bits + noise) & jnp.uint32(0xFFFF0000)
        # Adding noise to an infinity's or NaN's low bits could carry into its exponent.
        out = jax.lax.bitcast_convert_type(up, jnp.float32)
        return jnp.where(jnp.isfinite(x), out, x).astype(dtype)
    # through reduce_precision, which XLA keeps (a cast pair may be elided on GPU: ``wide``
    # would equal ``x`` and every value would look exact)
    wide = nearest(x, dtype) if x.dtype == jnp.float32 else x.astype(dtype).astype(x.dtype)
    near = wide.astype(dtype)
    toward = jnp.where(wide > x, -jnp.inf, jnp.inf).astype(dtype)
    other = jnp.nextafter(near, toward)
    lo = jnp.minimum(near, other).astype(x.dtype)
    hi = jnp.maximum(near, other).astype(x.dtype)
    gap = hi - lo
    p_hi = jnp.where(gap > 0, (x - lo) / jnp.where(gap > 0, gap, 1), 0)
    u = jax.random.uniform(key, x.shape, x.dtype)
    pick = jnp.where(u < p_hi, hi, lo).astype(dtype)
    exact = (wide == x) | ~jnp.isfinite(x) | ~jnp.isfinite(other.astype(x.dtype))
    return jnp.where(exact, near, pick)
