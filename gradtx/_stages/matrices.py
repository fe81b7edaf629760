"""How a parameter array is seen as a stack of matrices, and per-leaf specs given as trees.

A 2-D leaf ``(m, n)`` is one matrix; a leaf of three or more dimensions is, by default, one
matrix ``(∏ shape[:-1], shape[-1])`` (its last axis is the output, as in a flax kernel); optax's
``MuonDimensionNumbers`` (reduction and output axes, every other axis a batch axis) say
otherwise per leaf. Specs (dimension numbers, labels, bools) come as a tree with the params'
structure, a prefix of it, or a function of the params (:func:`leaf_specs`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core.struct import FrozenTree
from .._core.tree import TransformError, flatten, is_none, path_str

__all__ = ["MatrixView", "matrix_view", "is_dimension_numbers", "leaf_specs"]


def is_dimension_numbers(x: Any) -> bool:
    """Whether ``x`` says which axes are a matrix's (optax's ``MuonDimensionNumbers`` or any
    object with ``reduction_axis`` and ``output_axis``)."""
    return hasattr(x, "reduction_axis") and hasattr(x, "output_axis")


def _spec_leaf(x: Any) -> bool:
    return x is None or is_dimension_numbers(x) or isinstance(x, (bool, str, np.bool_))


def leaf_specs(owner: str, spec: Any, tree: Any, what: str) -> list[Any]:
    """One value per flat leaf of ``tree`` (``None`` leaves kept) from ``spec``: a tree of
    dimension numbers, labels or bools with ``tree``'s structure or a prefix of it, or a
    function of ``tree`` returning one; ``None`` gives ``None`` everywhere."""
    if isinstance(spec, FrozenTree):
        spec = spec.thaw()
    if callable(spec) and not is_dimension_numbers(spec):
        spec = spec(tree)
    n = len(flatten(tree)[0])
    if spec is None:
        return [None] * n
    try:
        full = jax.tree_util.tree_map(
            lambda s, sub: jax.tree_util.tree_map(lambda _: _Box(s), sub, is_leaf=is_none),
            spec,
            tree,
            is_leaf=_spec_leaf,
        )
    except (ValueError, TypeError) as e:
        raise TransformError(
            f"gradtx.{owner}: {what} does not match the parameter tree (it must have the "
            f"params' structure or a prefix of it): {e}"
        ) from None
    boxes = jax.tree_util.tree_leaves(full, is_leaf=lambda x: isinstance(x, _Box) or x is None)
    if len(boxes) != n:
        raise TransformError(f"gradtx.{owner}: {what} does not cover every leaf of the params")
    return [b.value if isinstance(b, _Box) else None for b in boxes]


@dataclasses.dataclass(frozen=True)
class _Box:
    """A spec value carried as one leaf (a ``MuonDimensionNumbers`` is itself a tuple)."""

    value: Any


def _axes(owner: str, where: str, spec: Any, ndim: int) -> tuple[int, ...]:
    axes = (spec,) if isinstance(spec, (int, np.integer)) else tuple(spec)
    for a in axes:
        if not -ndim <= int(a) < ndim:
            raise TransformError(
                f"gradtx.{owner}: at {where}, axis {a} is out of range for a {ndim}-D leaf"
            )
    return tuple(int(a) % ndim for a in axes)


@dataclasses.dataclass(frozen=True)
class MatrixView:
    """How one leaf is seen as ``batch`` matrices of ``rows × cols`` (``fan_in × fan_out``).

    ``perm`` moves the batch, reduction and output axes to the front in that order; the matrices
    are orthogonalised transposed when ``fan_in > fan_out`` (``rows ≤ cols`` always).
    """

    shape: tuple[int, ...]
    perm: tuple[int, ...]
    batch: int
    fan_in: int
    fan_out: int

    @property
    def transposed(self) -> bool:
        return self.fan_in > self.fan_out

    @property
    def key(self) -> tuple[int, int]:
        return (min(self.fan_in, self.fan_out), max(self.fan_in, self.fan_out))

    def to_matrices(self, x: jax.Array) -> jax.Array:
        m = jnp.transpose(x, self.perm).reshape(self.batch, self.fan_in, self.fan_out)
        return jnp.swapaxes(m, -1, -2) if self.transposed else m

    def from_matrices(self, m: jax.Array) -> jax.Array:
        if self.transposed:
            m = jnp.swapaxes(m, -1, -2)
        moved = tuple(self.shape[a] for a in self.perm)
        return jnp.transpose(m.reshape(moved), tuple(int(a) for a in np.argsort(self.perm)))


def matrix_view(owner: str, path: Any, shape: tuple[int, ...], dims: Any = None) -> MatrixView:
    """The :class:`MatrixView` of a leaf of ``shape``: from ``dims`` (dimension numbers), or
    by default the leaf's last axis as the output and all others as the reduction."""
    where = path_str(path)
    nd = len(shape)
    if dims is None:
        if nd < 2:
            raise TransformError(
                f"gradtx.{owner}: at {where}, the leaf of shape {tuple(shape)} is not a matrix "
                "(orthogonalisation needs >= 2 dimensions; gradtx.muon gives such leaves to "
                "AdamW, or leave them out with a mask)"
            )
        red: tuple[int, ...] = tuple(range(nd - 1))
        out: tuple[int, ...] = (nd - 1,)
    else:
        red = _axes(owner, where, dims.reduction_axis, nd)
        out = _axes(owner, where, dims.output_axis, nd)
        if set(red) & set(out) or not red or not out:
            raise TransformError(
                f"gradtx.{owner}: at {where}, reduction axes {red} and output axes {out} must "
                "be disjoint and non-empty"
            )
    batch = tuple(a for a in range(nd) if a not in red and a not in out)
    size = lambda axes: math.prod(shape[a] for a in axes)  # noqa: E731
    return MatrixView(tuple(shape), batch + red + out, size(batch), size(red), size(out))
