"""The packed parameter layout: a pytree of parameters held in a few contiguous buffers.

:func:`pack` turns a params pytree (or a flax nnx ``State`` of ``Param`` variables) into a
:class:`Packed` value: the small floating-point leaves are ravelled and concatenated into one
1-D buffer per group (same dtype, same placement, same optimizer masks), the others are kept
as they are ("big" leaves). A :class:`Packed` is a pytree whose leaves are those buffers and
big leaves, so ``jax.grad`` with respect to it gives a :class:`Packed` of gradients, and any
gradtx transformation runs on it (see :mod:`gradtx._core.pieces` for the rules that keep
per-parameter semantics exact). This module is the data type; :func:`gradtx.pack`
(:mod:`gradtx._packing.pack`) builds one from a params tree.

:func:`unpack` gives the original structure back, each packed leaf a view (a segment and a
reshape) of its buffer, all of a buffer's views one op when traced (see :func:`views`), linear:
its forward-mode derivative is the views of the tangent and its transpose *concatenates* the
leaf cotangents into the buffer's cotangent (JAX's transpose of per-leaf slices would pad
every leaf's cotangent to the full buffer size and add them: quadratic traffic).

Checkpoints: :class:`Packed` is registered with ``flax.serialization`` as soon as flax is in
use (see :mod:`gradtx._interop.checkpoint`), and its pytree children have attribute keys
(``.buffers[i]``, ``.leaves[j]``; an empty one is left out), so orbax saves and restores it
into a target like any pytree.
"""

from __future__ import annotations

import dataclasses
import sys
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import flax_hook
from .packed_views import split_views, views_p

__all__ = [
    "Group",
    "Layout",
    "Packed",
    "intern",
    "segment",
    "concat",
    "views",
    "unpack",
    "flat_segments",
    "logical_tree",
    "packed_mask",
]


@dataclasses.dataclass(frozen=True)
class Group:
    """One buffer: the leaves (by flat index) it holds, at which offsets, with which shapes.

    Attributes:
      dtype: the dtype of the buffer and of every leaf in it (a string, e.g. ``"float32"``).
      indices: flat indices (in the original tree) of the leaves, in buffer order.
      offsets: start of each leaf in the buffer.
      shapes: shape of each leaf.
      size: number of elements of the buffer.
      key: the grouping key besides the dtype (placement and mask values); informative.
    """

    dtype: str
    indices: tuple[int, ...]
    offsets: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    size: int
    key: Any = None

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """Where every leaf of the original tree lives: in a buffer (a :class:`Group`) or as is.

    Static, hashable data (the aux data of :class:`Packed`); equal layouts compare equal, so a
    re-packed tree does not cause a retrace. ``jit`` hashes and compares the aux data of its
    arguments on every call, so the hash is computed once and :func:`pack` interns layouts
    (equal layouts are one object and compare by identity): without this, a 2,000-leaf
    layout cost ~0.3 ms of host time per call, 6x a whole optimizer step on a GPU. The
    interning table holds layouts weakly: a layout no :class:`Packed` (and no ``jit`` cache
    entry) refers to any more is freed.
    """

    treedef: Any
    paths: tuple[str, ...]
    groups: tuple[Group, ...]
    big: tuple[int, ...]
    _key: tuple = dataclasses.field(init=False, repr=False)
    _hash: int = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", (self.treedef, self.paths, self.groups, self.big))
        object.__setattr__(self, "_hash", hash(self._key))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Layout) or other._hash != self._hash:
            return False
        return self._key == other._key

    @property
    def num_leaves(self) -> int:
        return len(self.paths)

    def where(self, path: str) -> tuple[str, int, int]:
        """``("buffer", group, position)`` or ``("leaf", position, -1)`` for a leaf path."""
        try:
            i = self.paths.index(path)
        except ValueError:
            raise KeyError(f"no leaf at {path}; paths: {', '.join(self.paths[:5])}...") from None
        for gi, g in enumerate(self.groups):
            if i in g.indices:
                return ("buffer", gi, g.indices.index(i))
        return ("leaf", self.big.index(i), -1)

    def __repr__(self) -> str:
        bufs = ", ".join(f"{g.dtype}[{g.size}]×{len(g.indices)} leaves" for g in self.groups)
        return f"Layout({bufs}; {len(self.big)} leaves as they are)"


class Packed:
    """Parameters (or gradients, or optimizer slots) in the packed layout; a pytree.

    Pytree children: ``buffers`` (a tuple, one 1-D array per :class:`Group`) and ``leaves``
    (a tuple of the leaves kept as they are, in tree order); the :class:`Layout` is static.
    """

    __slots__ = ("buffers", "leaves", "layout")

    def __init__(self, buffers: tuple, leaves: tuple, layout: Layout) -> None:
        self.buffers = tuple(buffers)
        self.leaves = tuple(leaves)
        self.layout = layout
        if not flax_hook.registered and "flax.serialization" in sys.modules:
            flax_hook.maybe_register()

    def unpack(self) -> Any:
        """The original tree; packed leaves are views of the buffers (see :func:`unpack`)."""
        return unpack(self)

    def __getitem__(self, path: str) -> Any:
        """The leaf at ``path`` (as ``jax.tree_util.keystr`` writes it), e.g. ``"['w']"``."""
        kind, a, b = self.layout.where(path)
        if kind == "leaf":
            return self.leaves[a]
        g = self.layout.groups[a]
        o, s = g.offsets[b], g.sizes[b]
        return self.buffers[a][o : o + s].reshape(g.shapes[b])

    @property
    def paths(self) -> tuple[str, ...]:
        return self.layout.paths

    def __repr__(self) -> str:
        return f"Packed({self.layout!r})"


_BUFFERS = jax.tree_util.GetAttrKey("buffers")
_LEAVES = jax.tree_util.GetAttrKey("leaves")


def _children_with_keys(p: Packed) -> tuple[list, Layout]:
    out = []
    if p.layout.groups:
        out.append((_BUFFERS, p.buffers))
    if p.layout.big:
        out.append((_LEAVES, p.leaves))
    return out, p.layout


def _children(p: Packed) -> tuple[list, Layout]:
    out = []
    if p.layout.groups:
        out.append(p.buffers)
    if p.layout.big:
        out.append(p.leaves)
    return out, p.layout


def _rebuild(layout: Layout, children: Any) -> Packed:
    # An empty child (no buffers, or no leaves kept as they are) is not a child at all:
    # orbax and other tools treat an empty tuple as a leaf, which made a tree whose every
    # leaf is packed impossible to restore.
    it = iter(children)
    buffers = next(it) if layout.groups else ()
    leaves = next(it) if layout.big else ()
    return Packed(buffers, leaves, layout)


jax.tree_util.register_pytree_with_keys(Packed, _children_with_keys, _rebuild, _children)


class _InternKey:
    """The content of a :class:`Layout` with its precomputed hash, without the layout itself,
    so that the interning table's keys do not keep its (weakly held) values alive."""

    __slots__ = ("content", "hash")

    def __init__(self, layout: Layout) -> None:
        self.content = layout._key
        self.hash = layout._hash

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _InternKey)
            and other.hash == self.hash
            and (other.content is self.content or other.content == self.content)
        )


#: Interned layouts by content; values are held weakly (an entry goes with its last user).
_INTERNED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def intern(layout: Layout) -> Layout:
    """The one live :class:`Layout` equal to ``layout`` (``layout`` itself if there is none)."""
    return _INTERNED.setdefault(_InternKey(layout), layout)


def segment(buf: jax.Array, offset: int, size: int) -> jax.Array:
    """``buf[offset : offset + size]`` of a 1-D buffer (``buf`` itself when that is all of it)."""
    if offset == 0 and size == buf.shape[0]:
        return buf
    return jax.lax.slice(buf, (offset,), (offset + size,))


def concat(parts: list) -> jax.Array:
    """The 1-D arrays ``parts`` end to end (the only part itself when there is one)."""
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def views(buf: jax.Array, group: Group) -> tuple:
    """The leaves of one buffer as views: its segments, each reshaped to its leaf's shape.

    Traced, one ``packed_views`` op per buffer: linear (its JVP is the views of the tangent,
    its transpose one concatenation of the leaf cotangents, no padding) and, lowered for a
    GPU or TPU, one ``lax.split``. Lowered for a CPU, each view is a ``dynamic_slice`` at an
    offset that XLA cannot constant-fold: the offsets are the outputs of a ``while`` loop
    that runs once, its trip count read from the buffer (the top bit of an element shifted
    out: 0 for every value, NaN and Inf included). XLA:CPU compiles one kernel per distinct
    fused computation: a slice at a constant offset fused into its reader made every layer's
    kernels distinct (a 200-layer MLP compiled for 39 s against 6.5 s per leaf), whereas with
    the offset a parameter of the fusion, equal-shape layers share their kernels as per leaf.
    The values are the same bits; vmapped, the views are one ``split`` as before.

    A concrete buffer (eager ``unpack``) is sliced leaf by leaf instead: eagerly, one
    N-output ``split`` compiles an N-output program (about a minute for 2,000 leaves on a
    CPU), while an eager slice compiles once per leaf size and is then only dispatched.
    """
    if len(group.shapes) == 1:
        return (buf.reshape(group.shapes[0]),)
    if not isinstance(buf, jax.core.Tracer):
        return tuple(
            segment(buf, o, n).reshape(s)
            for o, n, s in zip(group.offsets, group.sizes, group.shapes)
        )
    if any(jax.typeof(buf).sharding.spec):  # an explicitly sharded buffer: a plain split
        return tuple(split_views(buf, sizes=group.sizes, shapes=group.shapes))
    return tuple(views_p.bind(buf, sizes=group.sizes, shapes=group.shapes))


def unpack(packed: Any) -> Any:
    """The original tree of a :class:`Packed` (or of any tree holding :class:`Packed` nodes).

    Each packed leaf is a segment of its buffer (one op per buffer when traced, see
    :func:`views`; eagerly, one slice per leaf) reshaped to the leaf's shape: inside ``jit``
    XLA fuses these views into their readers. Their transpose concatenates the leaf cotangents
    into the buffer cotangent (no padding), so ``jax.grad`` of a loss written on
    ``unpack(packed)`` with respect to ``packed`` is one buffer-sized write per buffer;
    forward mode (``jax.jvp``, ``jax.jacfwd``) splits the tangent buffers the same way.

    Also unpacks optimizer slots of elementwise stages (``state.knobs.mu``), which share the
    params' layout.
    """
    if not isinstance(packed, Packed):
        return jax.tree_util.tree_map(
            lambda x: unpack(x) if isinstance(x, Packed) else x,
            packed,
            is_leaf=lambda x: isinstance(x, Packed) or x is None,
        )
    layout = packed.layout
    out: list[Any] = [None] * layout.num_leaves
    for g, buf in zip(layout.groups, packed.buffers):
        if buf is None:
            continue
        if buf.shape != (g.size,):
            raise ValueError(
                f"gradtx.unpack: buffer of {buf.shape} does not hold {g.size} elements (slots "
                "of a non-elementwise stage are not laid out like the params)"
            )
        for i, v in zip(g.indices, views(buf, g)):
            out[i] = v
    for i, x in zip(layout.big, packed.leaves):
        out[i] = x
    return layout.treedef.unflatten(out)


# --- what a transformation needs to know about packed leaves ----------------------------------


def _walk(tree: Any) -> tuple[list, bool]:
    nodes = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: x is None or isinstance(x, Packed))
    return nodes, any(isinstance(x, Packed) for x in nodes)


def flat_segments(tree: Any) -> list[Group | None] | None:
    """Per flat leaf of ``tree`` (``None`` kept as a leaf), its :class:`Group` if the leaf is a
    packed buffer, else ``None``; ``None`` overall when ``tree`` holds no :class:`Packed`."""
    nodes, any_packed = _walk(tree)
    if not any_packed:
        return None
    out: list[Group | None] = []
    for x in nodes:
        if isinstance(x, Packed):
            out.extend(x.layout.groups)
            out.extend(None for _ in x.leaves)
        else:
            out.append(None)
    return out


def logical_tree(tree: Any) -> Any:
    """``tree`` with each :class:`Packed` replaced by its original tree of
    ``jax.ShapeDtypeStruct`` leaves (what a mask function sees for packed params)."""

    def expand(x: Any) -> Any:
        if not isinstance(x, Packed):
            return x
        lay = x.layout
        out: list[Any] = [None] * lay.num_leaves
        for g in lay.groups:
            for i, s in zip(g.indices, g.shapes):
                out[i] = jax.ShapeDtypeStruct(s, jnp.dtype(g.dtype))
        for i, v in zip(lay.big, x.leaves):
            out[i] = v
        return lay.treedef.unflatten(out)

    return jax.tree_util.tree_map(
        expand, tree, is_leaf=lambda x: isinstance(x, Packed) or x is None
    )


def packed_mask(tree: Any, logical_mask: list[bool]) -> list[Any]:
    """Maps a per-logical-leaf mask back to the flat leaves of ``tree``: a ``bool`` for a leaf
    kept as is, and for a buffer ``True``/``False`` when all its leaves agree, else a tuple."""
    nodes, _ = _walk(tree)
    it = iter(logical_mask)
    out: list[Any] = []
    for x in nodes:
        if not isinstance(x, Packed):
            out.append(next(it))
            continue
        lay = x.layout
        vals = [next(it) for _ in range(lay.num_leaves)]
        for g in lay.groups:
            m = tuple(vals[i] for i in g.indices)
            out.append(m[0] if len(set(m)) == 1 else m)
        out.extend(vals[i] for i in lay.big)
    return out
