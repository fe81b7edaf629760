"""Building the packed layout: :func:`pack` groups the small floating-point leaves of a params
tree into a few contiguous buffers (one per dtype, placement and mask values) and returns a
:class:`~gradtx.Packed` (the data type, :mod:`gradtx._core.packed`, which every stage runs on).

The size threshold is measured per platform (:data:`THRESHOLDS`, chosen by
:func:`auto_threshold`; :data:`DEFAULT_THRESHOLD` where nothing was measured); concrete leaves
are concatenated on the host and put on the device in one transfer, traced ones in the program.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core.packed import Group, Layout, Packed, concat, intern
from .._core.pieces import stages_of
from .._core.tree import flatten

__all__ = ["DEFAULT_THRESHOLD", "THRESHOLDS", "auto_threshold", "pack"]

#: Size threshold of :func:`pack` on a platform without a measurement of its own (TPU and
#: others, see :data:`THRESHOLDS`): leaves with at most this many elements are packed. First
#: measured on 2-core CPUs (docs/benchmarks.md, ``step_bench.py --sweep``): a whole training
#: step of an MLP stack is faster packed for leaves of 16 K elements (1.07-1.42x) and slower at
#: 64 K (0.79-0.91x), where the per-step concatenation of the gradient costs more than the
#: per-leaf work it saves.
DEFAULT_THRESHOLD = 1 << 14

#: ``pack(threshold="auto")`` (the default): the threshold per platform (``jax.Device.platform``
#: or ``jax.default_backend()``), the largest leaf size at which a whole training step was
#: measured (or, for GPUs, estimated) to be faster with the leaf packed than per leaf:
#:
#: - ``cpu``: 2**15 = 32,768. ``benchmarks/model_bench.py --sweep`` (2-core CPU, jax 0.10.2,
#:   2026-12-04; docs/benchmarks.md): MLP stacks of 2**18 kernel elements, clip + adamw +
#:   schedule, interleaved rounds; packing the kernels too (biases packed in both) made the
#:   step 1.98x faster for kernels of 1,024 elements, 1.51x at 4,096, 1.28x at 8,100, 1.35x at
#:   16,384, 1.12x and 1.10x (two runs) at 32,761, 1.00x at 48,841, 0.52x at 65,536 and 0.63x
#:   at 131,044.
#: - ``gpu`` (``cuda``, ``rocm``): 2**18 = 262,144, estimated from the H200 whole training steps
#:   of docs/benchmarks.md (jax 0.11.2, 2026-11-27), not swept: packing saved 14.3 us per leaf of
#:   1,024 elements (deep MLP, 1,000 leaves: 19.1 -> 4.82 ms) and cost 6.4 ps per element for
#:   leaves of 2,097,152 (wide MLP, 48 kernels packed too: 2.63 -> 3.27 ms). With the saving
#:   shrinking as a leaf's own passes (5.8 ps per element at 4.8 TB/s) hide its launches, the
#:   break-even is ~1.2 M elements; 2**18 keeps a factor of 4 below it. A GPU sweep is owed.
#: - ``tpu`` and any other platform: :data:`DEFAULT_THRESHOLD` (not measured).
THRESHOLDS: dict[str, int] = {
    "cpu": 1 << 15,
    "gpu": 1 << 18,
    "cuda": 1 << 18,
    "rocm": 1 << 18,
    "tpu": DEFAULT_THRESHOLD,
}


def auto_threshold(platform: str | None = None) -> int:
    """The measured size threshold (:data:`THRESHOLDS`) for ``platform`` (a
    ``jax.Device.platform`` such as ``"cpu"``, ``"gpu"``, ``"tpu"``; default: the platform of
    the default device, ``jax.default_backend()`` unless ``jax_default_device`` says otherwise);
    :data:`DEFAULT_THRESHOLD` for a platform that was not measured."""
    if platform is None:
        platform = _default_place()[0].platform
    return THRESHOLDS.get(str(platform).lower(), DEFAULT_THRESHOLD)


def _platform_of(leaves: list, default: tuple[Any, Any]) -> str:
    """The platform the params live on: that of the first concrete array leaf (a traced or
    host leaf says nothing), else that of the default device."""
    for x in leaves:
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
            device: Any = next(iter(x.sharding.device_set))
            return str(device.platform)
    return str(default[0].platform)


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


def resolve_threshold(threshold: int | str | None, leaves: list, default: tuple) -> int | None:
    """``threshold`` as :func:`pack` applies it: ``"auto"`` becomes the platform's value."""
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ValueError(
                f"gradtx.pack: threshold must be an int, None or 'auto', got {threshold!r}"
            )
        return auto_threshold(_platform_of(leaves, default))
    return threshold


def _mask_keys(tx: Any, tree: Any, n: int) -> list[tuple]:
    """Per leaf, the tuple of mask values of the masked stages of ``tx`` (for grouping)."""
    keys: list[tuple] = [() for _ in range(n)]
    if tx is None:
        return keys
    for st in stages_of(tx):
        if getattr(st, "mask", None) is None:
            continue
        for i, v in enumerate(st._mask_leaves(tree, n)):
            keys[i] = keys[i] + (v,)
    for values in _wrapper_masks(tx, tree):  # masked, partition, groups, freeze
        if len(values) == n:
            for i, v in enumerate(values):
                keys[i] = keys[i] + (v,)
    return keys


def _wrapper_masks(tx: Any, tree: Any) -> list[list]:
    """Per wrapper of ``tx`` (at any depth) that selects leaves by a tree of values -- a
    ``masked`` mask, ``partition``/``multi_transform``/``groups`` labels -- the value of every
    leaf of ``tree``, so that :func:`pack` keeps each buffer on one side of it."""
    out: list[list] = []
    seen: set[int] = set()

    def visit(t: Any) -> None:
        if id(t) in seen or not (hasattr(t, "init") and hasattr(t, "update")):
            return
        seen.add(id(t))
        values = getattr(t, "leaf_selection", None)  # the wrappers' protocol (_wrappers/)
        if callable(values):
            out.append(jax.tree_util.tree_leaves(values(tree), is_leaf=lambda x: x is None))
        for f in dataclasses.fields(t) if dataclasses.is_dataclass(t) else ():
            v = getattr(t, f.name, None)
            for sub in v if isinstance(v, tuple) else (v,):
                visit(sub)

    visit(tx)
    return out


def pack(
    params: Any,
    *,
    threshold: int | str | None = "auto",
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
        eligible leaf; ``"auto"`` (the default) takes the measured value for the platform the
        params live on (:func:`auto_threshold`, :data:`THRESHOLDS`; docs/benchmarks.md).
        :func:`gradtx.pack_report` shows which leaves a threshold packs, and why.
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
    threshold = resolve_threshold(threshold, leaves, default)
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
