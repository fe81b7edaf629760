"""The packed parameter layout: a pytree of parameters held in a few contiguous buffers.

:func:`pack` turns a params pytree (or a flax nnx ``State`` of ``Param`` variables) into a
:class:`Packed` value: the small floating-point leaves are ravelled and concatenated into one
1-D buffer per group (same dtype, same placement, same optimizer masks), the others are kept
as they are ("big" leaves). A :class:`Packed` is a pytree whose leaves are those buffers and
big leaves, so ``jax.grad`` with respect to it gives a :class:`Packed` of gradients, and any
gradtx transformation runs on it (see :mod:`gradtx._packed_tx` for the rules that keep
per-parameter semantics exact).

:func:`unpack` gives the original structure back, each packed leaf a view (a slice and a
reshape) of its buffer. Its derivative is a custom VJP whose backward *concatenates* the leaf
cotangents into the buffer's cotangent; JAX's own transpose of slicing would pad every leaf's
cotangent to the full buffer size and add them (quadratic traffic).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._tree import flatten

__all__ = [
    "DEFAULT_THRESHOLD",
    "Group",
    "Layout",
    "Packed",
    "pack",
    "unpack",
    "flat_segments",
    "logical_tree",
]

#: Default size threshold of :func:`pack`: leaves with at most this many elements are packed.
#: Measured on 2-core CPUs (docs/benchmarks.md, ``--sweep``): a whole training step of an MLP
#: stack is faster packed for leaves of 16 K elements (1.07-1.42x) and slower at 64 K
#: (0.79-0.91x), where the per-step concatenation of the gradient costs more than the per-leaf
#: work it saves.
DEFAULT_THRESHOLD = 1 << 14


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
    layout cost ~0.3 ms of host time per call, 6x a whole optimizer step on a GPU.
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


jax.tree_util.register_pytree_with_keys(
    Packed,
    lambda p: (
        [
            (jax.tree_util.GetAttrKey("buffers"), p.buffers),
            (jax.tree_util.GetAttrKey("leaves"), p.leaves),
        ],
        p.layout,
    ),
    lambda layout, ch: Packed(*tuple(ch), layout),  # type: ignore[call-arg]
    lambda p: ([p.buffers, p.leaves], p.layout),
)


_INTERNED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def segment(buf: jax.Array, offset: int, size: int) -> jax.Array:
    """``buf[offset : offset + size]`` of a 1-D buffer (``buf`` itself when that is all of it)."""
    if offset == 0 and size == buf.shape[0]:
        return buf
    return jax.lax.slice(buf, (offset,), (offset + size,))


def concat(parts: list) -> jax.Array:
    """The 1-D arrays ``parts`` end to end (the only part itself when there is one)."""
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _placement(x: Any) -> Any:
    """The sharding a buffer holding ``x`` gets, ``None`` for the default, ``False`` if ``x``
    must not be packed (sharded across devices: its sharding cannot survive a ravel)."""
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
        return None
    sh = x.sharding
    if len(sh.device_set) == 1:
        return None if not x.committed else sh
    return sh if sh.is_fully_replicated else False


def _mask_keys(tx: Any, tree: Any, n: int) -> list[tuple]:
    """Per leaf, the tuple of mask values of the masked stages of ``tx`` (for grouping)."""
    from ._packed_tx import stages_of  # noqa: PLC0415  (avoids an import cycle)

    keys: list[tuple] = [() for _ in range(n)]
    if tx is None:
        return keys
    for st in stages_of(tx):
        if getattr(st, "mask", None) is None:
            continue
        for i, v in enumerate(st._mask_leaves(tree, n)):
            keys[i] = keys[i] + (v,)
    return keys


def pack(
    params: Any,
    *,
    threshold: int | None = DEFAULT_THRESHOLD,
    include: Callable[[str, Any], bool] | None = None,
    tx: Any = None,
) -> Packed:
    """Packs the small floating-point leaves of ``params`` into a few contiguous buffers.

    Leaves are grouped by dtype, by placement (a leaf replicated on a mesh goes into a buffer
    replicated on that mesh) and, when ``tx`` is given, by the value of every mask of ``tx``'s
    stages (so each buffer is all-in or all-out of each mask and runs unsplit). Within a group
    leaves of equal shape are placed next to each other (shapes in order of first appearance,
    each in tree order), so a non-elementwise stage runs once per distinct shape. Integer and
    boolean leaves, ``None`` leaves, leaves sharded across devices (not fully replicated) and
    leaves larger than ``threshold`` are kept as they are.

    Works on concrete arrays (the buffers are placed like their leaves) and inside ``jit``.

    Args:
      params: a pytree of arrays (a dict, a flax nnx ``State``...).
      threshold: the largest leaf (number of elements) that is packed; ``None`` packs every
        eligible leaf. The default :data:`DEFAULT_THRESHOLD` is measured (docs/benchmarks.md).
      include: optional ``include(path, leaf) -> bool`` deciding per leaf (overrides
        ``threshold``); ``path`` is written as ``jax.tree_util.keystr`` writes it.
      tx: the optimizer that will run on the packed tree; its masks become part of the key.

    Returns:
      A :class:`Packed`; ``unpack(pack(p))`` equals ``p`` exactly.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> p = gradtx.pack({"b": jnp.zeros(3), "w": jnp.ones((2, 2))})
      >>> p.layout
      Layout(float32[7]×2 leaves; 0 leaves as they are)
      >>> gradtx.unpack(p)["w"].tolist()
      [[1.0, 1.0], [1.0, 1.0]]
    """
    flat, treedef = flatten(params)
    paths = tuple(jax.tree_util.keystr(p) for p, _ in flat)
    leaves = [x for _, x in flat]
    masks = _mask_keys(tx, params, len(leaves))
    order: dict[Any, list[int]] = {}
    big: list[int] = []
    for i, x in enumerate(leaves):
        ok = x is not None and hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
        if ok:
            if include is not None:
                ok = bool(include(paths[i], x))
            elif threshold is not None:
                ok = int(np.prod(np.shape(x), dtype=np.int64)) <= threshold
        place = _placement(x) if ok else False
        if not ok or place is False:
            big.append(i)
            continue
        order.setdefault((jnp.dtype(x.dtype).name, place, masks[i]), []).append(i)
    groups, buffers = [], []
    for (dtype, place, mkey), idx in order.items():
        idx = _by_shape(idx, leaves)
        shapes = tuple(tuple(int(d) for d in np.shape(leaves[i])) for i in idx)
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        groups.append(
            Group(dtype, tuple(idx), offsets, shapes, int(sum(sizes)), (place, mkey) or None)
        )
        buf = concat([jnp.ravel(leaves[i]) for i in idx])
        if place is not None:
            buf = jax.device_put(buf, place)
        buffers.append(buf)
    layout = Layout(treedef, paths, tuple(groups), tuple(big))
    layout = _INTERNED.setdefault(layout, layout)
    return Packed(tuple(buffers), tuple(leaves[i] for i in big), layout)


def _by_shape(idx: list[int], leaves: list) -> list[int]:
    """``idx`` with leaves of equal shape next to each other: shapes in order of first
    appearance, leaves of one shape in tree order. Stages that are not elementwise then run
    once per stack of equal shapes, and segment reductions once per run of equal sizes."""
    by: dict[tuple, list[int]] = {}
    for i in idx:
        by.setdefault(tuple(np.shape(leaves[i])), []).append(i)
    return [i for run in by.values() for i in run]


def _split(buf: jax.Array, offsets: tuple, shapes: tuple) -> tuple:
    sizes = (int(np.prod(s, dtype=np.int64)) for s in shapes)
    return tuple(segment(buf, o, n).reshape(s) for o, n, s in zip(offsets, sizes, shapes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _views(buf: jax.Array, offsets: tuple, shapes: tuple) -> tuple:
    return _split(buf, offsets, shapes)


def _views_fwd(buf: jax.Array, offsets: tuple, shapes: tuple) -> tuple:
    return _split(buf, offsets, shapes), None


def _views_bwd(offsets: tuple, shapes: tuple, _: Any, cts: tuple) -> tuple:
    return (concat([jnp.ravel(c) for c in cts]),)


_views.defvjp(_views_fwd, _views_bwd)


def views(buf: jax.Array, group: Group) -> tuple:
    """The leaves of one buffer as views; differentiable with a concatenating backward."""
    return _views(buf, group.offsets, group.shapes)


def unpack(packed: Any) -> Any:
    """The original tree of a :class:`Packed` (or of any tree holding :class:`Packed` nodes).

    Each packed leaf is a slice of its buffer reshaped to the leaf's shape: inside ``jit``
    XLA fuses these views into their readers. The derivative of :func:`unpack` concatenates
    the leaf cotangents into the buffer cotangent (no padding), so ``jax.grad`` of a loss
    written on ``unpack(packed)`` with respect to ``packed`` is one buffer-sized write per
    buffer.

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
