"""Running a stage's per-array rule on a packed buffer with exact per-parameter semantics.

A :class:`~gradtx.Stage` (and a :class:`~gradtx.Knob`) declares ``elementwise``: whether its
rule maps element ``i`` of the gradient, of each slot and of the param to element ``i`` of the
outputs alone, with slots shaped like the array, and reads nothing else of the array (global
values from ``prepare`` are read as scalars). Such a rule gives the same result on a whole
buffer as on each of the leaves the buffer holds, so on a packed buffer it runs once.

A ``leafwise`` rule is elementwise except for reductions over the whole array made through
``ctx.leaf_sum``/``ctx.leaf_mean`` (block-RMS clipping, trust ratios): it also runs once on the
buffer, with a context whose reductions are per leaf segment (:func:`leaf_sums`).

Any other rule (adaptive gradient clipping, Adafactor's factored moments -- anything that
depends on the shape of one parameter) runs once per *stack*: consecutive leaves of one shape
(``pack`` puts equal shapes next to each other) are one slice of the buffer reshaped to
``(count, *shape)``, the rule runs on it through ``jax.vmap`` with the context shared, and the
stacks' results are concatenated. Its slots on a buffer are the concatenation of each leaf's
ravelled slots in buffer order (so they need not be params-sized).

Masks: a buffer whose leaves are all in (or all out of) a stage's mask runs (or passes) as a
whole; a buffer that mixes both runs piecewise, masked-out leaves passing through and holding
no state. ``gradtx.pack(params, tx=tx)`` groups leaves by mask so that no buffer mixes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .packed import Group, concat, segment

__all__ = ["stages_of", "pieces", "init_pieces", "update_pieces", "leaf_sums"]

#: Float division used by :func:`leaf_ids` (a module attribute so that tests can make it
#: inexact, as GPU and TPU division may be).
_divide = jnp.divide

#: Above this many runs of equal-sized leaves, segment reductions use one ``segment_sum``.
MAX_RUNS = 32


def stages_of(tx: Any) -> list:
    """The stages (objects with ``update_leaf``) of ``tx``, searching chains recursively."""
    if hasattr(tx, "update_leaf"):
        return [tx]
    out: list = []
    for sub in getattr(tx, "stages", ()) or ():
        out.extend(stages_of(sub))
    inner = getattr(tx, "inner", None)
    if inner is not None:
        out.extend(stages_of(inner))
    return out


@dataclasses.dataclass(frozen=True)
class Piece:
    """A contiguous part of a buffer that a rule sees as ``count`` arrays of ``shape``: one
    1-D run for an elementwise rule, else a stack of consecutive same-shape leaves."""

    offset: int
    count: int
    shape: tuple[int, ...]
    active: bool

    @property
    def size(self) -> int:
        return self.count * int(np.prod(self.shape, dtype=np.int64))


def pieces(group: Group, mask: Any, elementwise: bool) -> list[Piece]:
    """Splits a buffer for a rule. Elementwise: consecutive leaves with the same mask value form
    one 1-D piece. Otherwise: consecutive leaves with the same shape and mask value form one
    stack (``pack`` puts equal shapes next to each other, so a buffer has about as many stacks
    as distinct leaf shapes)."""
    n = len(group.indices)
    flags = [bool(mask)] * n if isinstance(mask, bool) else [bool(m) for m in mask]
    sizes = group.sizes
    out: list[Piece] = []
    i = 0
    while i < n:
        j = i
        while (
            j + 1 < n
            and flags[j + 1] == flags[i]
            and (elementwise or group.shapes[j + 1] == group.shapes[i])
        ):
            j += 1
        if elementwise:
            size = sum(sizes[i : j + 1])
            out.append(Piece(group.offsets[i], 1, (size,), flags[i]))
        else:
            out.append(Piece(group.offsets[i], j + 1 - i, group.shapes[i], flags[i]))
        i = j + 1
    return out


def _slot_shapes(stage: Any, shape: tuple, dtype: Any, cache: dict) -> dict[str, tuple]:
    if stage.elementwise:
        return {s: shape for s in stage.slots}
    if shape not in cache:
        out = jax.eval_shape(stage.init_leaf, jax.ShapeDtypeStruct(shape, dtype))
        cache[shape] = {s: tuple(v.shape) for s, v in out.items()}
    return cache[shape]


def _stacked(x: jax.Array, pc: Piece, shape: tuple, at: int = -1) -> jax.Array:
    """The piece ``pc`` of the 1-D ``x`` as ``(count, *shape)`` (or ``shape`` for one array);
    ``at`` overrides the offset (slots that are not laid out like the params)."""
    n = int(np.prod(shape, dtype=np.int64))
    seg = segment(x, pc.offset if at < 0 else at, pc.count * n)
    return seg.reshape((pc.count, *shape) if pc.count > 1 else shape)


def _per_array(fn: Any, count: int) -> Any:
    """``fn`` for one array, or mapped over a stack of ``count`` arrays with ``jax.vmap``."""
    return fn if count == 1 else jax.vmap(fn)


def init_pieces(stage: Any, buf: jax.Array, group: Group, mask: Any) -> dict[str, jax.Array]:
    """The slots of ``stage`` on a packed buffer: each active leaf's slots, ravelled and
    concatenated in buffer order (params-sized for an elementwise stage with every leaf
    active). A stack of same-shape leaves is initialised with one ``vmap`` of ``init_leaf``."""
    parts: dict[str, list] = {s: [] for s in stage.slots}
    for pc in pieces(group, mask, stage.elementwise):
        if not pc.active:
            continue
        slots = _per_array(stage.init_leaf, pc.count)(_stacked(buf, pc, pc.shape))
        for s in stage.slots:
            parts[s].append(jnp.ravel(slots[s]))
    return {s: concat(v) for s, v in parts.items()}


def update_pieces(
    stage: Any,
    g: jax.Array,
    slots: dict[str, jax.Array],
    param: jax.Array | None,
    ctx: Any,
    group: Group,
    mask: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``stage.update_leaf`` on a packed buffer, piece by piece (see the module docstring).

    ``g``, ``slots`` and ``param`` are the buffer's (already in the compute dtype); returns
    the buffer's update and slots in the same layout as :func:`init_pieces`. A stack of
    ``count`` same-shape leaves runs as one ``jax.vmap`` of the rule (``ctx`` shared), so the
    program grows with the number of distinct shapes, not of leaves.
    """
    outs: list = []
    new: dict[str, list] = {s: [] for s in stage.slots}
    at = {s: 0 for s in stage.slots}
    cache: dict = {}
    for pc in pieces(group, mask, stage.elementwise):
        if not pc.active:
            outs.append(segment(g, pc.offset, pc.size))
            continue
        shapes = _slot_shapes(stage, pc.shape, g.dtype, cache)
        sl = {}
        for s in stage.slots:
            sl[s] = _stacked(slots[s], pc, shapes[s], at[s])
            at[s] += pc.count * int(np.prod(shapes[s], dtype=np.int64))
        p = None if param is None else _stacked(param, pc, pc.shape)

        def rule(gi: jax.Array, si: dict, pi: Any) -> Any:
            return stage.update_leaf(gi, si, pi, ctx)

        u, ns = _per_array(rule, pc.count)(_stacked(g, pc, pc.shape), sl, p)
        outs.append(jnp.ravel(u))
        for s in stage.slots:
            new[s].append(jnp.ravel(ns[s]))
    return concat(outs), {s: concat(v) for s, v in new.items()}


def _runs(group: Group) -> list[tuple[int, int, int]]:
    """Consecutive leaves of equal size as ``(offset, count, size)`` runs."""
    out: list[tuple[int, int, int]] = []
    for o, n in zip(group.offsets, group.sizes):
        if out and out[-1][2] == n and out[-1][0] + out[-1][1] * n == o:
            out[-1] = (out[-1][0], out[-1][1] + 1, n)
        else:
            out.append((o, 1, n))
    return out


def leaf_ids(group: Group) -> jax.Array:
    """Per element of a packed buffer, the position (in buffer order) of the leaf it belongs
    to, computed from an iota inside the program (no buffer-sized constant): the element's run
    of equal-sized leaves by comparing with every run's start (a binary search past
    :data:`MAX_RUNS` runs), then the leaf within the run by one division (a corrected float32
    quotient in runs of up to 2**22 elements, an integer quotient beyond)."""
    if group.size >= 2**31:
        raise ValueError(
            f"gradtx: a packed buffer of {group.size} elements is too large for per-leaf "
            "reductions (int32 element indices); pack fewer leaves per buffer (threshold=...)"
        )
    runs = _runs(group)
    i = jax.lax.iota(jnp.int32, group.size)
    starts = jnp.asarray([o for o, _, _ in runs], jnp.int32)
    sizes = jnp.asarray([n for _, _, n in runs], jnp.int32)
    bases = jnp.asarray(np.cumsum([0] + [k for _, k, _ in runs[:-1]]), jnp.int32)
    method = "compare_all" if len(runs) <= MAX_RUNS else "scan_unrolled"
    r = jnp.searchsorted(starts, i, side="right", method=method) - 1
    within, size = i - starts[r], sizes[r]
    if max(k * n for _, k, n in runs) <= 2**22:
        # A float32 quotient (which vectorises on CPUs, where integer division does not: 4x
        # faster on the 2-core CPU), then one exact integer correction: GPU and TPU float
        # division may be off by a few ulp, which moves the quotient by at most 1 below 2**22.
        q = jnp.floor(_divide(within.astype(jnp.float32), size.astype(jnp.float32)))
        q = q.astype(jnp.int32)
        rem = within - q * size
        q = q + (rem >= size).astype(jnp.int32) - (rem < 0).astype(jnp.int32)
    else:
        q = within // size
    return bases[r] + q


def leaf_sums(x: jax.Array, group: Group, mean: bool = False) -> jax.Array:
    """Per element of a packed buffer ``x``, the sum (or with ``mean``, the mean) of ``x`` over
    the leaf it belongs to.

    One run of equal-sized leaves is reduced as a ``(count, size)`` block and broadcast back.
    Several runs (up to :data:`MAX_RUNS`) are reduced block by block into one value per leaf,
    a buffer of more runs with one ``segment_sum``; a mean divides these per-leaf values by
    the leaf sizes, and the per-leaf values are then read back per element through
    :func:`leaf_ids` (a gather from a vector of one value per leaf).

    Why not broadcast each run and concatenate: on XLA:CPU (jaxlib 0.10.2) a loop fusion that
    reads such a concatenation of broadcasts twice (e.g. ``where(s == 0, 1, s / t)``) was
    miscompiled for small leaves (a segfault, or wrong values), tested in
    ``tests/test_packing.py``.
    """
    runs = _runs(group)
    if len(runs) == 1:
        o, k, n = runs[0]
        block = segment(x, o, k * n).reshape(k, n)
        red = block.mean(axis=1, keepdims=True) if mean else block.sum(axis=1, keepdims=True)
        return jnp.broadcast_to(red, (k, n)).ravel()
    ids = leaf_ids(group)
    if len(runs) <= MAX_RUNS:
        sums = concat([segment(x, o, k * n).reshape(k, n).sum(axis=1) for o, k, n in runs])
    else:
        n_leaves = len(group.sizes)
        sums = jax.ops.segment_sum(x, ids, num_segments=n_leaves, indices_are_sorted=True)
    if mean:
        sums = sums / jnp.asarray(np.asarray(group.sizes), x.dtype)
    return sums[ids]
