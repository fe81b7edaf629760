"""The packed parameter layout: a pytree of parameters held in a few contiguous buffers.

:func:`pack` turns a params pytree (or a flax nnx ``State`` of ``Param`` variables) into a
:class:`Packed` value: the small floating-point leaves are ravelled and concatenated into one
1-D buffer per group (same dtype, same placement, same optimizer masks), the others are kept
as they are ("big" leaves). A :class:`Packed` is a pytree whose leaves are those buffers and
big leaves, so ``jax.grad`` with respect to it gives a :class:`Packed` of gradients, and any
gradtx transformation runs on it (see :mod:`gradtx._packed_tx` for the rules that keep
per-parameter semantics exact).

:func:`unpack` gives the original structure back, each packed leaf a view (a slice and a
reshape) of its buffer, all of a buffer's views made by one ``lax.split`` when traced (a
concrete buffer is sliced leaf by leaf, see :func:`views`). That op is linear: its
forward-mode derivative is the split of the tangent (``jax.jvp``, ``jax.jacfwd`` work) and its
transpose *concatenates* the leaf cotangents into the buffer's cotangent; JAX's transpose of
per-leaf slices would instead pad every leaf's cotangent to the full buffer size and add them
(quadratic traffic).

Checkpoints: :class:`Packed` is registered with ``flax.serialization`` as soon as flax is in
use (see :mod:`gradtx._packing_serialization`), and its pytree children have attribute keys
(``.buffers[i]``, ``.leaves[j]``; an empty one is left out), so orbax saves and restores it
into a target like any pytree.
"""

from __future__ import annotations

import dataclasses
import math
import sys
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
        if not _flax_registered and "flax.serialization" in sys.modules:
            _register_with_flax()

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


#: Whether :class:`Packed` is registered with ``flax.serialization`` (set by
#: :mod:`gradtx._packing_serialization`).
_flax_registered = False


def _register_with_flax() -> None:
    from ._packing_serialization import register_if_flax_loaded  # noqa: PLC0415  (cycle)

    register_if_flax_loaded()


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


def _default_place() -> tuple[Any, Any]:
    """The device an uncommitted array is placed on, and its default memory kind."""
    d = getattr(jax.config, "jax_default_device", None)
    if d is None:
        d = jax.devices()[0]
    elif isinstance(d, str):
        d = jax.devices(d)[0]
    try:
        kind = d.default_memory().kind
    except (AttributeError, RuntimeError, ValueError):  # a backend without memory spaces
        kind = None
    return d, kind


def _placement(x: Any, default: tuple[Any, Any]) -> tuple[Any, Any]:
    """``(key, sharding)`` of a buffer holding ``x``: the key is what groups leaves (and goes
    into the :class:`Layout`), the sharding is where the buffer is put (``None``: wherever
    the concatenation lands). ``(False, None)`` if ``x`` must not be packed (sharded across
    devices: its sharding cannot survive a ravel).

    The key depends only on where the values are, never on how the array got there: a leaf
    on the default device has key ``None`` whether it is committed to it or not (restored
    checkpoints and ``device_put`` results are committed, fresh arrays are not), a leaf on
    another single device the key ``("device", id, memory kind)``, a leaf replicated on
    several devices ``("replicated", device ids, memory kind)`` whatever the class of its
    sharding.
    """
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
        return None, None
    sh = x.sharding
    devices = sh.device_set
    kind = getattr(sh, "memory_kind", None)
    if len(devices) == 1:
        (d,) = devices
        if d == default[0] and kind in (None, default[1]):
            return None, (sh if x.committed else None)
        return ("device", d.platform, d.id, kind), sh
    if not sh.is_fully_replicated:
        return False, None
    return ("replicated", tuple(sorted((d.platform, d.id) for d in devices)), kind), sh


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
    default = _default_place()
    order: dict[Any, list[int]] = {}
    where: dict[Any, Any] = {}
    big: list[int] = []
    floating: dict[Any, str | None] = {}  # dtype -> its name if floating (host work per leaf)
    for i, x in enumerate(leaves):
        dt = getattr(x, "dtype", None) if x is not None else None
        if dt is not None and dt not in floating:
            floating[dt] = jnp.dtype(dt).name if jnp.issubdtype(dt, jnp.floating) else None
        ok = dt is not None and floating[dt] is not None
        if ok:
            if include is not None:
                ok = bool(include(paths[i], x))
            elif threshold is not None:
                ok = math.prod(np.shape(x)) <= threshold
        key, sharding = _placement(x, default) if ok else (False, None)
        if key is False:
            big.append(i)
            continue
        k = (floating[dt], key, masks[i])
        order.setdefault(k, []).append(i)
        if where.get(k) is None:
            where[k] = sharding  # the first committed leaf's placement
    groups, buffers = [], []
    for k, idx in order.items():
        dtype, key, mkey = k
        idx = _by_shape(idx, leaves)
        shapes = tuple(tuple(int(d) for d in np.shape(leaves[i])) for i in idx)
        sizes = [math.prod(s) for s in shapes]
        offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        groups.append(Group(dtype, tuple(idx), offsets, shapes, int(sum(sizes)), (key, mkey)))
        buffers.append(_buffer([leaves[i] for i in idx], where[k]))
    layout = intern(Layout(treedef, paths, tuple(groups), tuple(big)))
    return Packed(tuple(buffers), tuple(leaves[i] for i in big), layout)


def _on_host(x: Any) -> bool:
    """Whether ``x`` is concrete and its values can be read on this host."""
    if isinstance(x, np.ndarray | np.generic):
        return True
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
        return False
    return x.is_fully_addressable and x.sharding.is_fully_replicated


def _buffer(parts: list, sharding: Any) -> jax.Array:
    """The ravelled ``parts`` end to end, placed on ``sharding`` (``None``: the default).

    Concrete leaves are concatenated by NumPy on the host and the buffer is put on the
    device in one transfer: an eager ``jnp.concatenate`` of N operands compiles an N-operand
    program (3.5 s for 2,000 leaves, minutes for 20,000). Traced leaves (``pack`` inside
    ``jit``) are concatenated in the program.
    """
    if all(_on_host(x) for x in parts):
        host = jax.device_get(parts)  # starts every device-to-host copy before waiting
        flat = np.concatenate([np.ravel(np.asarray(x)) for x in host])
        return jax.device_put(flat, sharding) if sharding is not None else jnp.asarray(flat)
    buf = concat([jnp.ravel(x) for x in parts])
    return jax.device_put(buf, sharding) if sharding is not None else buf


def _by_shape(idx: list[int], leaves: list) -> list[int]:
    """``idx`` with leaves of equal shape next to each other: shapes in order of first
    appearance, leaves of one shape in tree order. Stages that are not elementwise then run
    once per stack of equal shapes, and segment reductions once per run of equal sizes."""
    by: dict[tuple, list[int]] = {}
    for i in idx:
        by.setdefault(tuple(np.shape(leaves[i])), []).append(i)
    return [i for run in by.values() for i in run]


def views(buf: jax.Array, group: Group) -> tuple:
    """The leaves of one buffer as views: one ``lax.split`` of the buffer into the leaves'
    segments, each reshaped to its leaf's shape.

    ``split`` is linear: its JVP splits the tangent (forward-mode AD works) and its transpose
    concatenates the leaf cotangents (one buffer-sized write, no padding). One op for all
    leaves keeps the program small: N ``slice`` ops and their N padded transposes made the
    jaxpr, and the compile time, grow with the number of leaves.

    A concrete buffer (eager ``unpack``) is sliced leaf by leaf instead: eagerly, one
    N-output ``split`` compiles an N-output program (about a minute for 2,000 leaves on a
    CPU), while an eager slice compiles once per leaf size (a dynamic slice) and is then
    only dispatched.
    """
    if len(group.shapes) == 1:
        return (buf.reshape(group.shapes[0]),)
    if not isinstance(buf, jax.core.Tracer):
        return tuple(
            segment(buf, o, n).reshape(s)
            for o, n, s in zip(group.offsets, group.sizes, group.shapes)
        )
    parts = jax.lax.split(buf, group.sizes)
    return tuple(p.reshape(s) for p, s in zip(parts, group.shapes))


def unpack(packed: Any) -> Any:
    """The original tree of a :class:`Packed` (or of any tree holding :class:`Packed` nodes).

    Each packed leaf is a segment of its buffer (one ``lax.split`` per buffer when traced;
    eagerly, one slice per leaf) reshaped to the leaf's shape: inside ``jit`` XLA fuses these
    views into their readers. The transpose of the split concatenates the leaf cotangents
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
