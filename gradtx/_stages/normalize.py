"""Stages that rescale the gradient by its own statistics: gradient centralization (each row's
mean removed) and normalization by the global norm (``optax.centralize``,
``optax.normalize_by_update_norm``)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from .._core.context import Context
from .._core.stage import Stage
from .._core.state import State
from .._core.struct import hyper
from .clipping import global_norm

__all__ = ["Centralize", "NormalizeByUpdateNorm", "centralize", "normalize_by_update_norm"]


class Centralize(Stage):
    r"""Gradient centralization: removes from each slice along axis 0 its mean.

    .. math::
        u_{i,\dots} = g_{i,\dots} - \frac{1}{n}\sum_{j} g_{i,j}

    for every array of rank 2 or more, the mean over all axes but the first (``n`` entries per
    slice ``i``); scalars and vectors pass through unchanged. Stateless. The same rule as
    ``optax.centralize``.

    Which axis is kept matters: the paper's PyTorch weights are ``(out, in, ...)``, so it
    centres each output unit's fan-in; a flax ``Dense`` kernel is ``(in, out)``, so this (as
    optax) centres each *input* row over the outputs. Transpose the gradient (or the kernel
    layout) if the paper's rule is wanted there.

    References:
      Yong, Huang, Hua & Zhang, *Gradient Centralization: A New Optimization Technique for Deep
      Neural Networks*, ECCV 2020. https://arxiv.org/abs/2004.01461
    """

    name = "centralize"

    def update_leaf(self, g, slots, param, ctx: Context):
        if g.ndim < 2:
            return g, slots
        return g - jnp.mean(g, axis=tuple(range(1, g.ndim)), keepdims=True), slots


class NormalizeByUpdateNorm(Stage):
    r"""Rescales all updates together by their global L2 norm.

    .. math::
        u = s \cdot \frac{g}{\lVert g \rVert_2 + \epsilon}, \qquad
        \lVert g \rVert_2 = \sqrt{\textstyle\sum_{\text{leaves}} \sum |g|^2}

    with ``s`` = ``scale_factor`` (so the update has norm ≈ ``|s|``; ``s = -1`` descends). The
    norm is :func:`gradtx.global_norm` (float32 or wider, overflow-safe), reduced once over the
    tree. The same rule as ``optax.normalize_by_update_norm``, which divides by
    ``(‖g‖ + ε)/s`` instead of multiplying by ``s/(‖g‖ + ε)``: equal up to one rounding.
    ``eps = 0`` and an all-zero gradient give NaN, as optax.
    """

    elementwise = True

    name = "normalize_by_update_norm"
    scale_factor: float = hyper(1.0, "any")
    eps: float = hyper(1e-6, "nonnegative")

    def prepare(self, updates: Any, state: State, params: Any, ctx: Context) -> dict:
        norm = global_norm(updates)
        s, eps = jnp.asarray(self.scale_factor, norm.dtype), jnp.asarray(self.eps, norm.dtype)
        return {"factor": s / (norm + eps)}

    def update_leaf(self, g, slots, param, ctx: Context):
        return g * ctx.factor, slots


def centralize() -> Centralize:
    """Centralizes gradients: subtracts from each array of rank ≥ 2 the mean over all axes but
    the first (``optax.centralize``). See :class:`Centralize`.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.centralize()
      >>> g = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
      >>> u, _ = tx.update(g, tx.init(g))
      >>> u.tolist()
      [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]
    """
    return Centralize()


def normalize_by_update_norm(scale_factor: float = 1.0, eps: float = 1e-6) -> NormalizeByUpdateNorm:
    r"""Scales the updates by ``scale_factor / (‖g‖₂ + eps)``, the global norm over the tree
    (``optax.normalize_by_update_norm``, same arguments). See :class:`NormalizeByUpdateNorm`.

    Args:
      scale_factor: ``s``, the norm of the result (its sign flips the direction).
      eps: ε added to the norm.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.normalize_by_update_norm(scale_factor=-1.0, eps=0.0)
      >>> u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
      >>> [round(float(u[k][0]), 3) for k in "ab"]
      [-0.6, -0.8]
    """
    return NormalizeByUpdateNorm(scale_factor, eps)
