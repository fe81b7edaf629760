"""Stages that bound the gradient before the knobs: by value, global norm, block RMS, AGC."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._base import Context, Stage, compute_dtype
from ._state import State
from ._struct import hyper
from ._tree import flatten

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


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all leaves of ``tree`` together, accumulated in float32 (or wider)."""
    squares = []
    for _, x in flatten(tree)[0]:
        if x is not None:
            x = x.astype(compute_dtype(x.dtype))
            squares.append(jnp.sum(x * x))
    if not squares:
        return jnp.zeros([], jnp.float32)
    dtype = max((s.dtype for s in squares), key=lambda d: d.itemsize)
    return jnp.sqrt(sum(s.astype(dtype) for s in squares))


class Clip(Stage):
    r"""Clips every element to ``[-max_delta, max_delta]``: :math:`u = \mathrm{clip}(g, -d, d)`."""

    elementwise = True

    name = "clip"
    max_delta: float = hyper(1.0, "nonnegative")

    def update_leaf(self, g, slots, param, ctx: Context):
        return jnp.clip(g, -self.max_delta, self.max_delta), slots


class ClipByGlobalNorm(Stage):
    r"""Rescales all updates together so their global L2 norm is at most ``max_norm``.

    .. math::
        u = g \cdot \min\!\left(1, \frac{c}{\lVert g \rVert_2}\right), \qquad
        \lVert g \rVert_2 = \sqrt{\textstyle\sum_{\text{leaves}} \sum g^2}

    The norm is reduced once over the whole tree (in float32) and read by each leaf as a
    scalar. Like ``optax.clip_by_global_norm``; ``torch.nn.utils.clip_grad_norm_`` divides by
    ``norm + 1e-6`` instead. A NaN norm makes every update NaN; an infinite norm (an overflowing
    or infinite gradient) makes the finite entries 0 and the infinite ones NaN.

    References:
      Pascanu, Mikolov & Bengio, *On the difficulty of training recurrent neural networks*,
      ICML 2013.
    """

    elementwise = True

    name = "clip_by_global_norm"
    max_norm: float = hyper(1.0, "positive")

    def prepare(self, updates: Any, state: State, params: Any, ctx: Context) -> dict:
        norm = global_norm(updates)
        return {"factor": jnp.minimum(1.0, self.max_norm / norm)}

    def update_leaf(self, g, slots, param, ctx: Context):
        return g * ctx.factor, slots


class ClipByBlockRms(Stage):
    r"""Rescales each array so its root mean square is at most ``threshold``.

    .. math:: u = g / \max(1, \mathrm{RMS}(g) / d)

    References:
      Shazeer & Stern, *Adafactor*, ICML 2018 (update clipping).
    """

    leafwise = True
    name = "clip_by_block_rms"
    threshold: float = hyper(1.0, "positive")

    def update_leaf(self, g, slots, param, ctx: Context):
        return g / jnp.maximum(1, jnp.sqrt(ctx.leaf_mean(g * g)) / self.threshold), slots


def unit_norms(x: jax.Array) -> jax.Array:
    """Norm per output unit: over everything for scalars and vectors, else over all but the
    last axis (flax's ``(..., in, out)`` kernels). A scalar, or ``x``'s shape with all but the
    last axis of size 1, so it broadcasts against a sharded ``x`` without resharding."""
    if x.ndim <= 1:
        return jnp.sqrt(jnp.sum(x * x))
    return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(x.ndim - 1)), keepdims=True))


class AdaptiveGradClip(Stage):
    r"""Adaptive gradient clipping: bounds each unit's gradient norm relative to its weights.

    .. math::
        u_i = g_i \cdot \min\!\left(1,\;
            \lambda \frac{\max(\lVert\theta_i\rVert, \epsilon)}{\lVert g_i\rVert}\right)

    per output unit ``i`` (see :func:`unit_norms`).

    Warning:
      For 3-d arrays optax reduces over axis 0 only; gradtx reduces over all but the last axis.
      optax also takes one norm over the whole array when it has a single axis longer than 1
      (e.g. shape ``(1, n)``); gradtx keeps a unit per entry of the last axis there.

    References:
      Brock et al., *High-Performance Large-Scale Image Recognition Without Normalization*,
      ICML 2021. https://arxiv.org/abs/2102.06171
    """

    name = "adaptive_grad_clip"
    needs_params = True
    clipping: float = hyper(0.01, "positive")
    eps: float = hyper(1e-3, "nonnegative")

    def update_leaf(self, g, slots, param, ctx: Context):
        max_norm = jnp.maximum(unit_norms(param), self.eps) * self.clipping
        g_norm = unit_norms(g)
        # The factor is computed on the reduced norms and broadcast by the product alone.
        factor = jnp.where(g_norm > max_norm, max_norm / jnp.maximum(g_norm, 1e-6), 1.0)
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


def adaptive_grad_clip(clipping: float, eps: float = 1e-3) -> AdaptiveGradClip:
    """Clips each unit's gradient to ``clipping`` times the norm of its weights (AGC)."""
    return AdaptiveGradClip(clipping, eps)
