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

__all__ = ["stochastic_round", "leaf_key"]


def leaf_key(key: jax.Array, step: Any, index: int) -> jax.Array:
    """The key of leaf ``index`` at step ``step``: deterministic, different per step and leaf."""
    return jax.random.fold_in(jax.random.fold_in(key, step), index)


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
    near = x.astype(dtype)
    wide = near.astype(x.dtype)
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
