"""Stages that bound the gradient before the knobs: by value, global norm, block RMS, AGC."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.numerics import abs_sq, compute_dtype, safe_sqrt
from .._core.stage import Stage
from .._core.state import State
from .._core.struct import hyper, static
from .._core.tree import TransformError, flatten

__all__ = [
    "Clip",
    "ClipByGlobalNorm",
    "ClipByBlockRms",
    "AdaptiveGradClip",
    "clip",
    "clip_by_global_norm",
    "clip_by_block_rms",
    "adaptive_grad_clip",
    "global_norm",
]


def _real_dtype(dtype: Any) -> Any:
    """The real dtype of ``dtype``'s precision (float32 for complex64)."""
    return jnp.finfo(dtype).dtype


def global_norm(updates: Any) -> jax.Array:
    r"""The L2 norm of all leaves of ``updates`` together, :math:`\sqrt{\sum |g|^2}`.

    Accumulated in float32 (or wider: float64 if a leaf is); complex leaves contribute
    ``|g|² = g·conj(g)``; the result is real. Overflow- and underflow-safe: the plain sum of
    squares is used when it is a finite normal number (the fast path: one pass, as before);
    otherwise (``|g|`` beyond ~1.8e19 or below ~1e-19 in float32) the norm is recomputed as
    ``s·√(Σ|g/s|²)`` with ``s = max |g|``, two more passes taken only then (``lax.cond``; under
    ``jax.vmap`` of a batched tree both branches run). An infinite entry gives ``inf``, a NaN
    entry ``nan``.
    """
    xs = []
    for _, x in flatten(updates)[0]:
        if x is not None:
            xs.append(x.astype(compute_dtype(x.dtype)))
    if not xs:
        return jnp.zeros([], jnp.float32)
    dtype = max((_real_dtype(x.dtype) for x in xs), key=lambda d: jnp.dtype(d).itemsize)

    def sum_sq(arrays: list) -> jax.Array:
        return sum(jnp.sum(jnp.real(abs_sq(a))).astype(dtype) for a in arrays)  # type: ignore[return-value]

    total = sum_sq(xs)

    def scaled() -> jax.Array:
        s = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(dtype) for x in xs]))
        ok = (s > 0) & (s < jnp.inf)
        s_safe = jnp.where(ok, s, jnp.ones_like(s))
        inner = sum_sq([x * (1 / s_safe).astype(x.dtype) for x in xs])
        return jnp.where(ok, s_safe * safe_sqrt(inner), s)  # s = 0, inf or nan otherwise

    normal = (total >= jnp.finfo(dtype).tiny) & (total < jnp.inf)
    return jax.lax.cond(normal, lambda: safe_sqrt(total), scaled)


class Clip(Stage):
    r"""Clips every element to ``[-max_delta, max_delta]``: :math:`u = \mathrm{clip}(g, -d, d)`."""

    elementwise = True

    name = "clip"
    max_delta: float = hyper(1.0, "nonnegative_or_inf")

    def update_leaf(self, g, slots, param, ctx: Context):
        return jnp.clip(g, -self.max_delta, self.max_delta), slots


class ClipByGlobalNorm(Stage):
    r"""Rescales all updates together so their global L2 norm is at most ``max_norm``.

    .. math::
        u = g \cdot \min\!\left(1, \frac{c}{\lVert g \rVert_2}\right), \qquad
        \lVert g \rVert_2 = \sqrt{\textstyle\sum_{\text{leaves}} \sum g^2}

    The norm (:func:`global_norm`: in float32, ``|g|²`` for complex leaves, overflow-safe, so
    huge finite gradients are rescaled, not zeroed) is reduced once over the whole tree and read
    by each leaf as a scalar. Like ``optax.clip_by_global_norm`` (whose plain sum of squares
    overflows to ``inf`` for |g| ≳ 1.8e19 in float32 and then returns zeros);
    ``torch.nn.utils.clip_grad_norm_`` divides by ``norm + 1e-6`` instead. A NaN norm makes
    every update NaN; an infinite norm (an infinite gradient) makes the finite entries 0 and the
    infinite ones NaN.

    References:
      Pascanu, Mikolov & Bengio, *On the difficulty of training recurrent neural networks*,
      ICML 2013.
    """

    elementwise = True

    name = "clip_by_global_norm"
    max_norm: float = hyper(1.0, "positive_or_inf")

    def prepare(self, updates: Any, state: State, params: Any, ctx: Context) -> dict:
        norm = global_norm(updates)
        c = jnp.asarray(self.max_norm, norm.dtype)
        # ``small`` is False for a NaN norm, so NaN spreads to every leaf; the double where keeps
        # d(factor) free of 0·∞ at norm = 0.
        small = norm <= c
        return {"factor": jnp.where(small, 1, c / jnp.where(small, 1, norm)).astype(norm.dtype)}

    def update_leaf(self, g, slots, param, ctx: Context):
        return g * ctx.factor, slots


class ClipByBlockRms(Stage):
    r"""Rescales each array so its root mean square is at most ``threshold``.

    .. math:: u = g / \max(1, \mathrm{RMS}(g) / d), \qquad
        \mathrm{RMS}(g) = \sqrt{\mathrm{mean}\,|g|^2}

    References:
      Shazeer & Stern, *Adafactor*, ICML 2018 (update clipping).
    """

    leafwise = True
    name = "clip_by_block_rms"
    threshold: float = hyper(1.0, "positive")

    def update_leaf(self, g, slots, param, ctx: Context):
        return g / jnp.maximum(1, safe_sqrt(ctx.leaf_mean(abs_sq(g))) / self.threshold), slots


def unit_norms(x: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """The L2 norm of each unit of ``x``, with ``keepdims`` (it broadcasts against ``x``
    without resharding it); ``|x|²`` for complex ``x``.

    A unit is a slice over the axes ``axis`` when given; with ``axis=None``, optax's rule by
    rank: one norm over everything for scalars and for arrays with at most one axis longer
    than 1, axis 0 for 2-d (``(in, out)`` kernels) and 3-d arrays, axes (0, 1, 2) for 4-d
    (``HWIO`` convolutions), axes (0, 1, 2, 3) for 5-d; other ranks need ``axis``.
    """
    if axis is None:
        if sum(d > 1 for d in x.shape) <= 1:
            axis = tuple(range(x.ndim))
        elif x.ndim in (2, 3):
            axis = (0,)
        elif x.ndim in (4, 5):
            axis = tuple(range(x.ndim - 1))
        else:
            raise TransformError(
                f"gradtx.adaptive_grad_clip: a {x.ndim}-d array (shape {x.shape}) needs "
                "axis= (the default units cover 1- to 5-d arrays)"
            )
    return safe_sqrt(jnp.sum(abs_sq(x), axis=axis, keepdims=True))


class AdaptiveGradClip(Stage):
    r"""Adaptive gradient clipping: bounds each unit's gradient norm relative to its weights.

    .. math::
        u_i = g_i \cdot \min\!\left(1,\;
            \lambda \frac{\max(\lVert\theta_i\rVert, \epsilon)}{\lVert g_i\rVert}\right)

    per unit ``i``: a slice over ``axis`` (an int or a tuple of ints), or with ``axis=None``
    the units of optax's rule by rank (see :func:`unit_norms`), as ``optax.adaptive_grad_clip``.
    Arrays of rank 6 or more need ``axis``.

    References:
      Brock et al., *High-Performance Large-Scale Image Recognition Without Normalization*,
      ICML 2021. https://arxiv.org/abs/2102.06171
    """

    name = "adaptive_grad_clip"
    needs_params = True
    clipping: float = hyper(0.01, "positive")
    eps: float = hyper(1e-3, "nonnegative")
    axis: int | tuple[int, ...] | None = static(None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.axis, list):
            object.__setattr__(self, "axis", tuple(self.axis))

    def update_leaf(self, g, slots, param, ctx: Context):
        max_norm = jnp.maximum(unit_norms(param, self.axis), self.eps) * self.clipping
        g_norm = unit_norms(g, self.axis)
        # The factor is computed on the reduced norms and broadcast by the product alone.
        big = jnp.real(g_norm) > jnp.real(max_norm)
        factor = jnp.where(big, max_norm / jnp.maximum(jnp.where(big, g_norm, 1), 1e-6), 1)
        return g * factor, slots


def clip(max_delta: float) -> Clip:
    """Clips each update element to ``[-max_delta, max_delta]``."""
    return Clip(max_delta)


def clip_by_global_norm(max_norm: float) -> ClipByGlobalNorm:
    """Rescales updates so that their global L2 norm is at most ``max_norm``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.clip_by_global_norm(1.0)
      >>> u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
      >>> [round(float(u[k][0]), 3) for k in "ab"]
      [0.6, 0.8]
    """
    return ClipByGlobalNorm(max_norm)


def clip_by_block_rms(threshold: float) -> ClipByBlockRms:
    """Rescales each array so its root mean square is at most ``threshold``."""
    return ClipByBlockRms(threshold)


def adaptive_grad_clip(
    clipping: float, eps: float = 1e-3, axis: int | tuple[int, ...] | None = None
) -> AdaptiveGradClip:
    """Clips each unit's gradient to ``clipping`` times the norm of its weights (AGC).

    Units as ``optax.adaptive_grad_clip``: slices over ``axis``, or by rank when ``axis`` is
    ``None`` (see :class:`AdaptiveGradClip`).
    """
    return AdaptiveGradClip(clipping, eps, axis)
