"""Clipping per-example gradients, then summing them (the first step of DP-SGD): by the
global norm of each example's gradient, or layer by layer (``optax.per_example_*_clip``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.tree import TransformError, flatten, path_str
from .clipping import global_norm

__all__ = ["per_example_global_norm_clip", "per_example_layer_norm_clip"]


def _batched_leaves(owner: str, grads: Any) -> tuple[list[jax.Array], Any]:
    """The leaves of ``grads`` as floating arrays (integer and boolean ones as float32), after
    checking they share a leading batch axis."""
    leaves, treedef = flatten(grads)
    arrays = [(p, jnp.asarray(x)) for p, x in leaves if x is not None]
    if not arrays:
        raise TransformError(f"gradtx.{owner}: grads has no arrays")
    for p, x in arrays:
        if x.ndim == 0 or x.shape[0] != arrays[0][1].shape[0]:
            shapes = {path_str(q): tuple(y.shape) for q, y in arrays}
            raise TransformError(
                f"gradtx.{owner}: every leaf needs the batch axis first, of one size; the leaf "
                f"at {path_str(p)} has shape {tuple(x.shape)} (all shapes: {shapes})"
            )
    out = [x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32) for _, x in arrays]
    return out, treedef


@jax.jit
def _clip_sum(xs: list[jax.Array], clip: Any) -> tuple[list[jax.Array], jax.Array]:
    """``Σ_b min(1, c/‖x_b‖)·x_b`` over the examples ``b`` of the arrays ``xs`` together, and
    how many examples were scaled down (one compiled program per structure of ``xs``)."""
    norms = jax.vmap(global_norm)(xs)
    c = jnp.asarray(clip, norms.dtype)
    factors = jnp.nan_to_num(jnp.minimum(c / norms, 1), nan=1.0)
    clipped = jnp.sum(factors < 1, dtype=jnp.int32)
    sums = []
    for x in xs:
        cdt = compute_dtype(x.dtype)
        weighted = jnp.tensordot(factors.astype(cdt), x.astype(cdt), axes=1)
        sums.append(weighted.astype(x.dtype))
    return sums, clipped


def _unflatten(treedef: Any, grads: Any, values: list[Any]) -> Any:
    """``values`` (one per non-``None`` leaf) put back in ``grads``'s structure."""
    it = iter(values)
    return treedef.unflatten([None if x is None else next(it) for _, x in flatten(grads)[0]])


def per_example_global_norm_clip(grads: Any, l2_norm_clip: Any) -> tuple[Any, jax.Array]:
    r"""Clips each example's gradient to global norm ``l2_norm_clip`` and sums over examples.

    .. math::
        \bar g = \sum_{b} g_b \min\!\left(1, \frac{C}{\lVert g_b\rVert_2}\right), \qquad
        \lVert g_b\rVert_2 = \sqrt{\textstyle\sum_{\text{leaves}} \sum |g_{b,\cdot}|^2}

    The same rule and arguments as ``optax.per_example_global_norm_clip``; a factor that is
    NaN (``0/0``, ``∞/∞``) counts as 1, as optax. Not a transformation: a function of the
    per-example gradients (e.g. from ``jax.vmap(jax.grad(loss))``), whose result feeds an
    optimizer (DP-SGD adds noise to it).

    Args:
      grads: a tree whose every leaf has the batch axis (the examples) first, of one size.
      l2_norm_clip: ``C``, the largest norm of an example's gradient.

    Returns:
      ``(sum, clipped)``: the tree of summed clipped gradients (each leaf in its dtype;
      integer leaves in float32; optax returns bfloat16/float16 leaves in float32) and the
      number of examples whose gradient was scaled down (int32).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> g = [jnp.array([[0.0, 0, 0], [0, 3, 4], [4, 0, 3], [3, 4, 0]])]
      >>> total, clipped = gradtx.per_example_global_norm_clip(g, 1.25)
      >>> total[0].tolist(), int(clipped)
      ([1.75, 1.75, 1.75], 3)

    References:
      Abadi et al., *Deep Learning with Differential Privacy*, CCS 2016.
      https://arxiv.org/abs/1607.00133
    """
    xs, treedef = _batched_leaves("per_example_global_norm_clip", grads)
    sums, clipped = _clip_sum(xs, l2_norm_clip)
    return _unflatten(treedef, grads, sums), clipped


def per_example_layer_norm_clip(
    grads: Any, global_l2_norm_clip: Any, uniform: bool = True
) -> tuple[Any, Any]:
    r"""Clips each example's gradient leaf by leaf (layer by layer), then sums over examples.

    Leaf ``i`` of ``K`` is clipped as by :func:`per_example_global_norm_clip` on its own, to
    :math:`C_i = C/\sqrt{K}` (``uniform``) or :math:`C_i = C\sqrt{D_i/D}` (``D_i`` entries
    per example in leaf ``i``, ``D`` in all), so that :math:`\sqrt{\sum_i C_i^2} = C`. The same
    rule and arguments as ``optax.per_example_layer_norm_clip``.

    Returns:
      ``(sum, clipped)``: two trees of ``grads``'s structure, the summed clipped gradients and
      per leaf the number of examples scaled down (int32).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> g = {"a": jnp.array([[3.0, 4.0], [0.3, 0.4]]), "b": jnp.array([[1.0], [1.0]])}
      >>> total, clipped = gradtx.per_example_layer_norm_clip(g, 2**0.5)
      >>> [round(x, 4) for x in total["a"].tolist()], int(clipped["a"]), total["b"].tolist()
      ([0.9, 1.2], 1, [2.0])

    References:
      McMahan, Ramage, Talwar & Zhang, *Learning Differentially Private Recurrent Language
      Models*, ICLR 2018. https://arxiv.org/abs/1710.06963
    """
    xs, treedef = _batched_leaves("per_example_layer_norm_clip", grads)
    sizes = [x[0].size for x in xs]
    total = sum(sizes)
    sums, counts = [], []
    for x, d in zip(xs, sizes):
        share = (1.0 / len(xs)) if uniform else d / total
        s, n = _clip_sum([x], global_l2_norm_clip * share**0.5)
        sums.append(s[0])
        counts.append(n)
    return _unflatten(treedef, grads, sums), _unflatten(treedef, grads, counts)
