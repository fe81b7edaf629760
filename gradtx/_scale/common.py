"""Helpers of the σ knobs: storage dtypes and placement of statistics, overflow-safe squares,
bias-corrected roots.

Numerics shared by every σ knob (``|x|²`` and the safe root are in :mod:`gradtx._core.numerics`,
as the clipping stages use them too):

- **complex parameters**: ``|g|²`` is ``g·conj(g)`` (real-valued), as in optax. A statistic of a
  complex parameter is stored in the parameter's complex dtype with a zero imaginary part, as
  optax stores it, so states and checkpoints match optax's.
- **float16 parameters**: every second-moment-like slot (``nu``, ``sum_of_squares``,
  ``nu_max``, Adadelta's accumulators, Yogi's ``v``, Adafactor's statistics) is stored in
  float32, since the square of a representable float16 gradient (|g| ≳ 256) overflows float16.
  First moments stay in the parameter's dtype. bfloat16 statistics stay bfloat16 (see the
  warning in :class:`AdamScale` about their upward drift).
- **huge gradients**: squares are formed as ``(√(1-β)·g)²`` and bias corrections are applied
  after the root (``√v / √(1-β^t)``), so nothing squares past float32's range for |g| up to
  ~1e20 at β2 = 0.999 (Adam, AMSGrad, AdaBelief, Yogi, RAdam, Adadelta; RMSProp up to ~5e19 at
  its default decay 0.9).
- **meta-gradients**: roots of statistics are :func:`safe_sqrt`, whose derivative at 0 is 0,
  so differentiating through updates (e.g. w.r.t. the learning rate) stays finite when a
  gradient element is exactly 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.numerics import abs_sq, one_minus_pow, real, safe_sqrt
from .._core.placement import step_sharding

__all__ = [
    "debias",
    "moment_dtype",
    "step_sharding",
    "moment_full",
    "scaled_sq",
    "debiased_root",
]


def debias(b: Any, t: Any, like: jax.Array) -> jax.Array:
    """``1 - b^t`` in real arithmetic (:func:`~gradtx._core.numerics.one_minus_pow`), in the
    dtype of ``like``."""
    return one_minus_pow(real(b), real(t)).astype(like.dtype)


def moment_dtype(dtype: Any) -> Any:
    """The dtype a second-moment slot of a ``dtype`` parameter is stored in: float32 for
    float16 (whose range the squares of its gradients overflow), else ``dtype`` itself."""
    return jnp.float32 if jnp.dtype(dtype) == jnp.float16 else dtype


def moment_full(param: jax.Array, value: Any = 0.0) -> jax.Array:
    """A second-moment slot for ``param``: ``value`` everywhere, in :func:`moment_dtype`,
    placed as the step returns it (:func:`step_sharding`; else ``full_like``'s placement)."""
    dtype = moment_dtype(param.dtype)
    sharding = step_sharding(param, None)
    if sharding is not None:
        return jnp.full(param.shape, value, dtype, device=sharding)
    return jnp.full_like(param, value, dtype=dtype)


def scaled_sq(c: Any, g: jax.Array) -> jax.Array:
    """``c·|g|²`` formed as ``|√c·g|²``, so it overflows only when the result itself does."""
    return abs_sq(jnp.sqrt(c) * g)


def debiased_root(v: jax.Array, b: Any, t: Any, eps_root: Any = 0.0) -> jax.Array:
    """``√(v / (1-b^t) + eps_root)`` formed as ``√(v + eps_root·(1-b^t)) / √(1-b^t)``: the
    bias correction after the root, so ``v / (1-b^t)`` never overflows."""
    d = debias(b, t, v)
    return safe_sqrt(v + eps_root * d) / jnp.sqrt(d)
