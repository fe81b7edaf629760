"""``pack_report(params)``: what :func:`gradtx.pack` would do with a params tree, and why.

Nothing is packed, allocated or compiled: the report reads shapes, dtypes and placements (a
tree of ``jax.ShapeDtypeStruct`` works as well as one of arrays) and follows :func:`pack`'s
rules leaf by leaf, in its order:

1. ``None``, integer and boolean leaves are kept as they are;
2. ``include(path, leaf)`` decides, if given; else a leaf with more than ``threshold`` elements
   is kept (``threshold="auto"``: the measured value for the params' platform,
   :func:`gradtx._packing.pack.auto_threshold`);
3. a leaf sharded across devices (not fully replicated) is kept, its sharding untouched;
4. every other leaf goes to the buffer of its group: same dtype, same placement and, with
   ``tx``, the same value of every mask of ``tx``'s stages; within a buffer equal shapes sit
   next to each other.

The step estimate counts *fused passes* over memory of the optimizer step (about the kernels a
GPU launches; XLA may split one pass into two or three kernels), per array ``a`` the stages are
active on:

.. math::

   \\text{passes}(a) = 1 + R + W + N,

one fused pass of the elementwise stages, ``R`` reductions for the stages with a global
``prepare`` (the norm of ``clip_by_global_norm``), ``W`` for the leafwise stages (one
reduction over the array each) and ``N`` for every other stage. Per leaf, ``a`` runs over the
leaves; packed, over the buffers and the kept leaves, where on a buffer a non-elementwise
stage counts once per stack of equal shapes (:func:`gradtx._core.pieces.pieces`); with
``tx`` the buffers are grouped by its masks, so each stage is active on all of a buffer or on
none of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core.packed import Group
from .._core.pieces import pieces, stages_of
from .._core.stage import Stage
from .._core.tree import flatten
from .pack import _by_shape, _default_place, _mask_keys, _placement, _platform_of, auto_threshold

__all__ = ["BufferPlan", "LeafPlan", "PackReport", "pack_report"]


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """One leaf of the params tree: where :func:`pack` puts it, and why.

    Attributes:
      path: the leaf's path, as ``jax.tree_util.keystr`` writes it.
      shape: its shape (``()`` for a ``None`` leaf).
      dtype: its dtype name (``"None"`` for a ``None`` leaf).
      packed: whether it goes into a buffer.
      buffer: the index of that buffer (in :attr:`PackReport.buffers`), else ``None``.
      rule: the rule that decided: ``"threshold"``, ``"include"``, ``"all"`` (threshold
        ``None``), ``"dtype"`` (integer, boolean, not an array), ``"none"`` (a ``None`` leaf)
        or ``"sharded"``.
      reason: why, in words (``"size 96 <= threshold 16,384"``, ``"integer dtype int32"``...).
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    packed: bool
    buffer: int | None
    rule: str
    reason: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class BufferPlan:
    """One buffer :func:`pack` would build.

    Attributes:
      dtype: the dtype of the buffer and its leaves.
      placement: where it lives (``"default device"``, ``"cpu:1"``, ``"replicated on 4"``).
      masks: ``(stage name, value)`` for every masked stage of ``tx``: why this buffer is
        apart from another of the same dtype and placement.
      leaves: the number of leaves it holds.
      elements: its size.
      shapes: the number of distinct leaf shapes (the stacks a non-elementwise stage runs on).
    """

    dtype: str
    placement: str
    masks: tuple[tuple[str, bool], ...]
    leaves: int
    elements: int
    shapes: int


@dataclasses.dataclass(frozen=True)
class PackReport:
    """What :func:`pack_report` returns; ``str(report)`` is a readable table.

    Attributes:
      threshold: the size threshold applied (``None``: every eligible leaf, or ``include``).
      platform: the platform the threshold was chosen for.
      leaves: one :class:`LeafPlan` per leaf, in tree order.
      buffers: one :class:`BufferPlan` per buffer, in :func:`pack`'s order.
      stages: the stages of ``tx`` counted by the estimate (empty without ``tx``).
      passes_per_leaf: estimated fused passes of ``tx``'s step on the tree as it is.
      passes_packed: the same on the packed tree (see the module docstring for the model).
    """

    threshold: int | None
    platform: str
    leaves: tuple[LeafPlan, ...]
    buffers: tuple[BufferPlan, ...]
    stages: tuple[str, ...]
    passes_per_leaf: int
    passes_packed: int

    @property
    def num_packed(self) -> int:
        return sum(leaf.packed for leaf in self.leaves)

    def reasons(self) -> dict[str, int]:
        """``{"packed by threshold": 398, "kept by dtype": 2, ...}``: leaves per outcome and
        :attr:`LeafPlan.rule`, in order of first appearance."""
        out: dict[str, int] = {}
        for leaf in self.leaves:
            kind = f"{'packed' if leaf.packed else 'kept'} by {leaf.rule}"
            out[kind] = out.get(kind, 0) + 1
        return out

    def table(self, max_leaves: int = 30) -> str:
        """The summary, the buffers and (up to ``max_leaves`` rows) the leaves, as text."""
        thr = "none" if self.threshold is None else f"{self.threshold:,}"
        head = (
            f"pack: {self.num_packed} of {len(self.leaves)} leaves into "
            f"{len(self.buffers)} buffer(s), threshold {thr} ({self.platform})"
        )
        if self.stages:
            head += (
                f"; optimizer step ~{self.passes_per_leaf:,} fused passes per leaf, "
                f"~{self.passes_packed:,} packed ({', '.join(self.stages)})"
            )
        reasons = [[k, str(n)] for k, n in self.reasons().items()]
        bufs = [
            [
                str(i),
                b.dtype,
                b.placement,
                ", ".join(f"{s}={v}" for s, v in b.masks) or "-",
                f"{b.leaves:,}",
                f"{b.elements:,}",
                str(b.shapes),
            ]
            for i, b in enumerate(self.buffers)
        ]
        rows = [
            [leaf.path, _array(leaf), _where(leaf), leaf.reason]
            for leaf in self.leaves[:max_leaves]
        ]
        if len(self.leaves) > max_leaves:
            rows.append([f"... {len(self.leaves) - max_leaves} more", "", "", ""])
        parts = [head, _grid(["reason", "leaves"], reasons)]
        if bufs:
            parts.append(
                _grid(
                    ["buffer", "dtype", "placement", "masks", "leaves", "elements", "shapes"], bufs
                )
            )
        parts.append(_grid(["leaf", "array", "goes to", "why"], rows))
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.table()


def _array(leaf: LeafPlan) -> str:
    return "None" if leaf.rule == "none" else f"{leaf.dtype}{list(leaf.shape)}"


def _where(leaf: LeafPlan) -> str:
    return f"buffer {leaf.buffer}" if leaf.packed else "as is"


def _grid(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
        for r in [head, ["-" * w for w in widths], *rows]
    )


def _placement_text(key: Any, default_kind: Any) -> str:
    """A placement key of :func:`pack` in words; a memory kind only where it is not the
    default one (``"pinned_host"``)."""
    if key is None:
        return "default device"
    kind = "" if key[-1] in (None, default_kind) else f" ({key[-1]})"
    if key[0] == "device":
        return f"{key[1]}:{key[2]}{kind}"
    return f"replicated on {len(key[1])}{kind}"


def _kept_sharded(x: Any, default: tuple) -> tuple[bool, Any]:
    """``(sharded, placement key)`` of a leaf as :func:`pack` sees it; an abstract leaf with
    a sharding that is not fully replicated counts as sharded."""
    if isinstance(x, jax.ShapeDtypeStruct):
        sh = getattr(x, "sharding", None)
        return (sh is not None and not sh.is_fully_replicated), None
    key, _ = _placement(x, default)
    return key is False, key


def pack_report(
    params: Any,
    *,
    tx: Any = None,
    threshold: int | str | None = "auto",
    include: Callable[[str, Any], bool] | None = None,
    backend: str | None = None,
) -> PackReport:
    """Which leaves :func:`gradtx.pack` packs, into which buffers, why, and what it saves.

    Takes the arguments of :func:`gradtx.pack` and follows its rules without packing anything
    (see the module docstring): ``None``, integer and boolean leaves are kept; ``include``
    decides if given, else leaves above ``threshold`` elements are kept; sharded leaves are
    kept; the rest are grouped by dtype, placement and ``tx``'s mask values. To change the
    outcome, pass the same ``threshold=`` or ``include=`` to :func:`gradtx.pack`.

    The step estimate counts fused passes over memory of ``tx``'s optimizer step (one fused
    pass per buffer and per kept leaf for elementwise stages, plus one reduction per array for
    a global norm or a per-leaf reduction, plus one per stack of equal shapes for other
    stages); on a GPU each pass is about one kernel launch, which is what packing saves.

    Args:
      params: a pytree of arrays or ``jax.ShapeDtypeStruct`` (a dict, a flax nnx ``State``...).
      tx: the optimizer that will run on the packed tree: its masks group the buffers and its
        stages are counted by the estimate.
      threshold: as for :func:`gradtx.pack`; ``"auto"`` takes the measured value for the
        platform (:data:`gradtx._packing.pack.THRESHOLDS`).
      include: as for :func:`gradtx.pack`: ``include(path, leaf) -> bool``, overrides
        ``threshold``.
      backend: the platform whose threshold ``"auto"`` takes (``"cpu"``, ``"gpu"``,
        ``"tpu"``); default: the params' platform, else ``jax.default_backend()``.

    Returns:
      A :class:`PackReport`.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> params = {"b": jnp.zeros(3), "n": jnp.ones(3), "w": jnp.ones((300, 300)),
      ...           "step": jnp.zeros((), jnp.int32)}
      >>> r = gradtx.pack_report(params, threshold=1000, tx=gradtx.adamw(1e-3))
      >>> for leaf in r.leaves:
      ...     print(leaf.path, leaf.packed, leaf.reason)
      ['b'] True size 3 <= threshold 1,000
      ['n'] True size 3 <= threshold 1,000
      ['step'] False integer dtype int32
      ['w'] False size 90,000 > threshold 1,000
      >>> r.passes_per_leaf, r.passes_packed
      (3, 2)
    """
    flat, _ = flatten(params)
    paths = [jax.tree_util.keystr(p) for p, _ in flat]
    leaves = [x for _, x in flat]
    default = _default_place()
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ValueError(
                f"gradtx.pack_report: threshold must be an int, None or 'auto', got {threshold!r}"
            )
        platform = backend or _platform_of(leaves, default)
        threshold = auto_threshold(platform)
    else:
        platform = backend or _platform_of(leaves, default)
    masks = _mask_keys(tx, params, len(leaves))
    masked = [st.name for st in stages_of(tx) if getattr(st, "mask", None) is not None]
    reason: list[tuple[str, str]] = []
    order: dict[Any, list[int]] = {}
    for i, x in enumerate(leaves):
        dt = None if x is None else getattr(x, "dtype", None)
        if dt is None:
            reason.append(
                ("none", "None leaf")
                if x is None
                else ("dtype", f"not an array ({type(x).__name__})")
            )
            continue
        if not jnp.issubdtype(dt, jnp.floating):
            kind = "boolean" if jnp.dtype(dt) == jnp.bool_ else "integer"
            reason.append(("dtype", f"{kind} dtype {jnp.dtype(dt).name}"))
            continue
        n = math.prod(np.shape(x))
        if include is not None:
            ok = bool(include(paths[i], x))
            why = ("include", f"include() is {ok}")
        elif threshold is None:
            ok, why = True, ("all", "threshold None: every floating-point leaf")
        else:
            ok = n <= threshold
            why = ("threshold", f"size {n:,} {'<=' if ok else '>'} threshold {threshold:,}")
        sharded, key = _kept_sharded(x, default) if ok else (False, None)
        if sharded:
            ok, why = False, ("sharded", "sharded across devices (its sharding is kept)")
        reason.append(why)
        if ok:
            order.setdefault((jnp.dtype(dt).name, key, masks[i]), []).append(i)
    buffer_of: dict[int, int] = {}
    buffers, groups = [], []
    for b, ((dtype, key, mkey), idx) in enumerate(order.items()):
        idx = _by_shape(idx, leaves)
        shapes = tuple(tuple(int(d) for d in np.shape(leaves[i])) for i in idx)
        sizes = [math.prod(s) for s in shapes]
        offsets = tuple(int(o) for o in np.cumsum([0, *sizes[:-1]]))
        groups.append(Group(dtype, tuple(idx), offsets, shapes, sum(sizes), (key, mkey)))
        buffer_of.update((i, b) for i in idx)
        buffers.append(
            BufferPlan(
                dtype,
                _placement_text(key, default[1]),
                tuple(zip(masked, (bool(v) for v in mkey))),
                len(idx),
                sum(sizes),
                len(set(shapes)),
            )
        )
    plans = tuple(
        LeafPlan(
            paths[i],
            () if x is None else tuple(int(d) for d in np.shape(x)),
            "None" if x is None else str(getattr(getattr(x, "dtype", None), "name", "?")),
            i in buffer_of,
            buffer_of.get(i),
            *reason[i],
        )
        for i, x in enumerate(leaves)
    )
    stages = stages_of(tx) if tx is not None else []
    per_leaf, packed = _passes(stages, params, leaves, groups, buffer_of)
    return PackReport(
        threshold,
        str(platform),
        plans,
        tuple(buffers),
        tuple(st.name for st in stages),
        per_leaf,
        packed,
    )


def _cost(st: Any) -> tuple[bool, int]:
    """``(fuses, extra passes per array)`` of a stage: an elementwise or leafwise stage fuses
    into the array's one pass; a global ``prepare`` adds a reduction, a leafwise stage another;
    any other stage is a pass of its own."""
    extra = int(type(st).prepare is not Stage.prepare) + int(bool(getattr(st, "leafwise", False)))
    if getattr(st, "elementwise", False) or getattr(st, "leafwise", False):
        return True, extra
    return False, extra + 1


def _passes(stages: list, params: Any, leaves: list, groups: list, buffer_of: dict) -> tuple:
    """Estimated fused passes of the optimizer step per leaf and packed (module docstring).
    Grouped by ``tx``'s masks, a buffer is all in or all out of each stage."""
    if not stages:
        return 0, 0
    active = [st._mask_leaves(params, len(leaves)) for st in stages]
    costs = [_cost(st) for st in stages]

    def passes(on: list, stacks: int) -> int:  # over one array, or a buffer of `stacks`
        fused = any(costs[k][0] for k in on)
        return int(fused) + sum(costs[k][1] * (1 if costs[k][0] else stacks) for k in on)

    floats = [
        i
        for i, x in enumerate(leaves)
        if getattr(x, "dtype", None) is not None and jnp.issubdtype(x.dtype, jnp.floating)
    ]
    per_array = {i: passes([k for k, a in enumerate(active) if a[i]], 1) for i in floats}
    packed = sum(per_array[i] for i in floats if i not in buffer_of)
    for g in groups:
        on = [k for k, a in enumerate(active) if a[g.indices[0]]]
        packed += passes(on, len(pieces(g, True, False)))
    return sum(per_array.values()), packed
