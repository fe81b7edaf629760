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
depends on the shape of one parameter) runs on each leaf's *view*: the buffer is sliced into
the leaves, each reshaped to its own shape, the rule runs per leaf, and the results are
concatenated. Its slots on a buffer are
the concatenation of each leaf's ravelled slots (so they need not be params-sized).

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

from ._packing import Group, concat, segment

__all__ = ["stages_of", "pieces", "init_pieces", "update_pieces", "leaf_sums", "leaf_sizes"]

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
    """A contiguous part of a buffer that a rule sees as one array."""

    offset: int
    size: int
    shape: tuple[int, ...]
    active: bool


def pieces(group: Group, mask: Any, elementwise: bool) -> list[Piece]:
    """Splits a buffer for a rule: per leaf (its own shape) unless the rule is elementwise,
    in which case consecutive leaves with the same mask value form one 1-D piece."""
    n = len(group.indices)
    flags = [bool(mask)] * n if isinstance(mask, bool) else [bool(m) for m in mask]
    sizes = group.sizes
    out: list[Piece] = []
    if not elementwise:
        for o, s, shp, a in zip(group.offsets, sizes, group.shapes, flags):
            out.append(Piece(o, s, shp, a))
        return out
    i = 0
    while i < n:
        j = i
        while j + 1 < n and flags[j + 1] == flags[i]:
            j += 1
        size = sum(sizes[i : j + 1])
        out.append(Piece(group.offsets[i], size, (size,), flags[i]))
        i = j + 1
    return out


def _slot_shapes(stage: Any, shape: tuple, dtype: Any, cache: dict) -> dict[str, tuple]:
    if stage.elementwise:
        return {s: shape for s in stage.slots}
    if shape not in cache:
        out = jax.eval_shape(stage.init_leaf, jax.ShapeDtypeStruct(shape, dtype))
        cache[shape] = {s: tuple(v.shape) for s, v in out.items()}
    return cache[shape]


def init_pieces(stage: Any, buf: jax.Array, group: Group, mask: Any) -> dict[str, jax.Array]:
    """The slots of ``stage`` on a packed buffer: each active piece's slots, ravelled and
    concatenated (params-sized for an elementwise stage with every leaf active)."""
    parts: dict[str, list] = {s: [] for s in stage.slots}
    for pc in pieces(group, mask, stage.elementwise):
        if not pc.active:
            continue
        slots = stage.init_leaf(segment(buf, pc.offset, pc.size).reshape(pc.shape))
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
    the buffer's update and slots in the same layout as :func:`init_pieces`.
    """
    outs: list = []
    new: dict[str, list] = {s: [] for s in stage.slots}
    at = {s: 0 for s in stage.slots}
    cache: dict = {}
    for pc in pieces(group, mask, stage.elementwise):
        gi = segment(g, pc.offset, pc.size)
        if not pc.active:
            outs.append(gi)
            continue
        shapes = _slot_shapes(stage, pc.shape, g.dtype, cache)
        sl = {}
        for s in stage.slots:
            n = int(np.prod(shapes[s], dtype=np.int64))
            sl[s] = segment(slots[s], at[s], n).reshape(shapes[s])
            at[s] += n
        p = None if param is None else segment(param, pc.offset, pc.size).reshape(pc.shape)
        u, ns = stage.update_leaf(gi.reshape(pc.shape), sl, p, ctx)
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


def leaf_sums(x: jax.Array, group: Group) -> jax.Array:
    """Per element of a packed buffer ``x``, the sum of ``x`` over the leaf it belongs to.

    Runs of equal-sized leaves are reduced as ``(count, size)`` blocks (few, cheap ops); a
    buffer of many runs uses one ``segment_sum`` over segment ids instead, so the program
    stays small whatever the number of leaves.
    """
    runs = _runs(group)
    if len(runs) <= MAX_RUNS:
        parts = []
        for o, k, n in runs:
            block = segment(x, o, k * n).reshape(k, n)
            parts.append(jnp.broadcast_to(block.sum(axis=1, keepdims=True), (k, n)).ravel())
        return concat(parts)
    sizes = np.asarray(group.sizes)
    ids = jnp.repeat(jnp.arange(len(sizes), dtype=jnp.int32), sizes, total_repeat_length=x.size)
    sums = jax.ops.segment_sum(x, ids, num_segments=len(sizes), indices_are_sorted=True)
    return sums[ids]


def leaf_sizes(group: Group, dtype: Any) -> jax.Array:
    """Per element of a packed buffer, the number of elements of its leaf (as ``dtype``)."""
    sizes = np.asarray(group.sizes)
    per_leaf = jnp.asarray(sizes, dtype)
    return jnp.repeat(per_leaf, sizes, total_repeat_length=int(sizes.sum()))
