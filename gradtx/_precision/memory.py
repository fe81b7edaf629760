"""``memory_report(tx, params)``: where the optimizer state's bytes go, read without allocating it.

The state is ``jax.eval_shape(tx.init, params)``: shapes and dtypes, nothing allocated, nothing
compiled. Each state leaf ``s`` (a key path and a ``ShapeDtypeStruct``) is counted as::

    bytes(s)   = size(s) · itemsize(dtype(s))
    owner(s)   = the param leaf whose key path is the longest suffix of s's key path (or none)
    slot(s)    = the last attribute name (a State entry, a NamedTuple field) of s's key path
                 once owner(s)'s path is cut off; else its last dict key; else "state"
    group(s)   = owner(s)'s group, as gradtx.explain finds groups (the first
                 groups/partition in tx); for a leaf with no owner (a counter), the group whose
                 ``inner_states`` entry the path goes through; else "(shared)"; "all" without
                 groups

Per device: the same ``eval_shape``, of ``tx.init`` on ``ShapeDtypeStruct`` params sharded as
the params are (unsharded ones replicated), on a copy of the mesh with ``Explicit`` axes under
``jax.set_mesh``; each device holds the slice ``devices_indices_map`` gives it of each leaf, a
leaf with no sharding (a constant counter) is counted on every device.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .._core.tree import is_none, path_str
from .._wrappers.explain import find_first
from .._wrappers.partition import Partition, _key

__all__ = ["MemoryEntry", "MemoryReport", "memory_report"]

SHARED = "(shared)"


class MemoryEntry(NamedTuple):
    """One state leaf: its key path, slot, group, dtype, shape and bytes."""

    path: str
    slot: str
    group: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


class MemoryReport(NamedTuple):
    """What :func:`memory_report` returns: the state's bytes by slot, group, dtype and device.

    Attributes:
      entries: one :class:`MemoryEntry` per state leaf, in the state's leaf order.
      total_bytes: the sum of every entry's bytes.
      by_slot: ``{slot: bytes}`` (``mu``, ``nu``, ``count``, ``acc_grads`` ...).
      by_group: ``{group: bytes}``; every group appears, a frozen one with 0.
      by_dtype: ``{dtype name: bytes}``.
      params_bytes: the params' own bytes, for comparison.
      param_count: the number of parameter elements.
      per_device: ``{jax.Device: bytes}`` on the mesh, or ``None`` without one.
    """

    entries: tuple[MemoryEntry, ...]
    total_bytes: int
    by_slot: dict[str, int]
    by_group: dict[str, int]
    by_dtype: dict[str, int]
    params_bytes: int
    param_count: int
    per_device: dict[Any, int] | None

    @property
    def bytes_per_param(self) -> float:
        """``total_bytes / param_count`` (``nan`` for params with no elements)."""
        return self.total_bytes / self.param_count if self.param_count else math.nan

    @property
    def max_device_bytes(self) -> int | None:
        """The most state bytes any one device holds, or ``None`` without a mesh."""
        return max(self.per_device.values(), default=0) if self.per_device is not None else None

    def describe(self) -> str:
        """One line: the total, per parameter, against the params, by slot, max per device."""
        slots = ", ".join(f"{s} {_human(b)}" for s, b in self.by_slot.items())
        ratio = self.total_bytes / self.params_bytes if self.params_bytes else math.nan
        line = (
            f"state {_human(self.total_bytes)} for {self.param_count:,} params "
            f"({self.bytes_per_param:.3g} B/param, {ratio:.2f}x params)"
            + (f": {slots}" if slots else "")
        )
        if self.per_device is not None:
            line += f"; at most {_human(self.max_device_bytes or 0)} on one of "
            line += f"{len(self.per_device)} devices"
        return line

    def table(self) -> str:
        """Tables: slot × dtype, bytes per group, bytes per device; then :meth:`describe`."""
        dtypes = list(self.by_dtype)
        cells: dict[tuple[str, str], int] = {}
        for e in self.entries:
            cells[e.slot, e.dtype] = cells.get((e.slot, e.dtype), 0) + e.nbytes
        rows = [
            [s, *(_human(cells[s, d]) if (s, d) in cells else "-" for d in dtypes), _human(b)]
            for s, b in self.by_slot.items()
        ]
        rows.append(
            ["total", *(_human(self.by_dtype[d]) for d in dtypes), _human(self.total_bytes)]
        )
        parts = [_grid(["slot", *dtypes, "total"], rows)]
        parts.append(_grid(["group", "state"], [[g, _human(b)] for g, b in self.by_group.items()]))
        if self.per_device is not None:
            parts.append(
                _grid(
                    ["device", "state"],
                    [[str(d.id), _human(b)] for d, b in self.per_device.items()],
                )
            )
        parts.append(self.describe())
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.table()


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    v = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        v /= 1024
        if v < 1024 or unit == "PiB":
            break
    return f"{v:.3g} {unit}"


def _grid(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def _nbytes(x: Any) -> int:
    return int(np.prod(x.shape, dtype=np.int64)) * int(jnp.dtype(x.dtype).itemsize)


def _slot(prefix: tuple) -> str:
    for kind, get in (
        (jax.tree_util.GetAttrKey, lambda k: k.name),
        (jax.tree_util.DictKey, lambda k: str(k.key)),
    ):
        names = [get(k) for k in prefix if isinstance(k, kind)]
        if names:
            return names[-1]
    return "state"


def _group_in_path(path: tuple, labels: dict[str, str]) -> str | None:
    """The group whose ``inner_states`` entry ``path`` goes through, if any."""
    for a, b in zip(path, path[1:]):
        if isinstance(a, jax.tree_util.GetAttrKey) and a.name == "inner_states":
            name = b.name if isinstance(b, jax.tree_util.GetAttrKey) else getattr(b, "key", None)
            if name in labels:
                return labels[name]
    return None


def _mesh_of(leaves: list[Any], mesh: Any) -> Mesh | None:
    """The mesh to report on: ``mesh``, or the one the params' NamedShardings share."""
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(
            f"gradtx.memory_report: mesh must be a jax.sharding.Mesh or None, got "
            f"{type(mesh).__name__}"
        )
    found: Mesh | None = mesh
    for path, sharding in leaves:
        if not isinstance(sharding, NamedSharding):
            continue
        m = sharding.mesh
        if found is None:
            if not isinstance(m, Mesh):
                raise ValueError(
                    f"gradtx.memory_report: the param at {path_str(path)} is sharded on an "
                    "abstract mesh (no devices); pass mesh= to say which devices"
                )
            found = m
        same = dict(m.shape) == dict(found.shape) and (
            not isinstance(m, Mesh)
            or [d.id for d in np.ravel(m.devices)] == [d.id for d in np.ravel(found.devices)]
        )
        if not same:
            raise ValueError(
                f"gradtx.memory_report: the param at {path_str(path)} is sharded on a mesh "
                f"{dict(m.shape)} other than {dict(found.shape)} (of mesh or another param)"
            )
    return found


def _sharding(x: Any) -> Any:
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return getattr(x, "sharding", None)
    except Exception:  # pragma: no cover  (an array deleted or without placement)
        return None


def _state_shapes(tx: Any, params: Any, mesh: Mesh | None) -> tuple[Any, Any]:
    """``eval_shape`` of ``tx.init``: plain, or on an explicit copy of ``mesh`` (see module)."""
    if mesh is None:
        return jax.eval_shape(tx.init, params), None
    explicit = Mesh(
        mesh.devices, mesh.axis_names, axis_types=(AxisType.Explicit,) * len(mesh.axis_names)
    )

    def abstract(x: Any) -> Any:
        if x is None:
            return None
        s = _sharding(x)
        spec = s.spec if isinstance(s, NamedSharding) else PartitionSpec()
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(explicit, spec))

    typed = jax.tree_util.tree_map(abstract, params, is_leaf=is_none)
    try:
        with jax.set_mesh(explicit):
            return jax.eval_shape(tx.init, typed), explicit
    except Exception as e:
        raise ValueError(
            "gradtx.memory_report: tx.init does not trace with the params' shardings on an "
            f"explicit-axes copy of the mesh {dict(mesh.shape)} (how the state's shardings are "
            f"read without allocating it): {type(e).__name__}: {e}. Without mesh and with "
            "unsharded params the totals are still reported."
        ) from e


def _per_device(shapes: list, mesh: Mesh) -> dict[Any, int]:
    out = {d: 0 for d in np.ravel(mesh.devices)}
    for s in shapes:
        sh = getattr(s, "sharding", None)
        itemsize = int(jnp.dtype(s.dtype).itemsize)
        if not isinstance(sh, NamedSharding):
            for d in out:
                out[d] += _nbytes(s)
            continue
        concrete = NamedSharding(mesh, sh.spec)
        for d, index in concrete.devices_indices_map(tuple(s.shape)).items():
            n = 1
            for sl, dim in zip(index, s.shape):
                n *= len(range(*sl.indices(dim)))
            out[d] += n * itemsize
    return out


def memory_report(tx: Any, params: Any, mesh: Mesh | None = None) -> MemoryReport:
    """The optimizer state's bytes by slot, group, dtype and device, without allocating it.

    Reads ``jax.eval_shape(tx.init, params)`` (nothing is allocated or compiled). With ``S``
    the state's leaves, ``P`` the params' leaves and ``D`` the mesh's devices::

        total_bytes      = Σ_{s∈S} size(s)·itemsize(s)
        by_slot[k]       = Σ over s with slot(s) = k   (likewise by_group, by_dtype)
        bytes_per_param  = total_bytes / Σ_{p∈P} size(p)
        per_device[d]    = Σ_{s∈S} size(shard of s on d)·itemsize(s),   d ∈ D

    ``slot(s)`` is the last attribute name of ``s``'s key path once the path of the param it
    belongs to (the longest param path that ends it) is cut off: ``.knobs.mu['w']`` is ``mu``,
    ``.knobs.count`` is ``count``, optax's ``[0].nu['w']`` is ``nu``, ``.acc_grads['w']`` is
    ``acc_grads`` (a path with no attribute name: its last dict key). ``group(s)`` is that
    param's group as :func:`gradtx.explain` finds groups (``"all"`` without
    ``groups``/``partition``); a counter not tied to a param goes to the group whose state
    holds it, else to ``"(shared)"``. Every rule is in :mod:`gradtx._precision.memory`.

    With ``mesh``, or params carrying a ``NamedSharding``, it also gives ``per_device``:
    ``tx.init`` is traced (``eval_shape`` again) on the params' shardings with the mesh's axes
    made ``Explicit`` (under ``jax.set_mesh``), so every state leaf gets the sharding
    ``jax.jit(tx.init)`` gives it there; still nothing is allocated or compiled. A state leaf
    without a sharding (a constant counter) is counted on every device.

    Note:
      This is also where gradtx's eager ``tx.init(params)`` puts the state on a mesh with
      ``Auto`` axes (the conformance kit checks it; the tests compare with the shards eager
      init allocates). ``jax.jit(tx.init)`` on an ``Auto`` mesh without ``out_shardings`` is
      different: XLA put constant-initialised state on one device (JAX 0.10.2), so there the
      report says what the state needs when placed like the params, not what that call
      allocates. Compiling ``jax.jit(tx.init)`` to read its output shardings would report that
      placement and costs a compile; running ``tx.init`` allocates the state.

    Args:
      tx: any transformation with ``init`` and ``update`` (gradtx's: chains, groups, wrappers;
        or optax's).
      params: the parameter tree: arrays, ``jax.ShapeDtypeStruct`` leaves or a packed tree from
        :func:`gradtx.pack`; floating-point (or complex) leaves, ``None`` leaves allowed.
      mesh: the devices to report on; params without a ``NamedSharding`` count as replicated
        on it. Default: the mesh the params' ``NamedSharding`` leaves are on, if any.

    Returns:
      A :class:`MemoryReport`: ``total_bytes``, ``by_slot``, ``by_group``, ``by_dtype``,
      ``params_bytes``, ``param_count``, ``bytes_per_param``, ``per_device`` and
      ``max_device_bytes`` (``None`` without a mesh), ``entries`` (one per state leaf);
      ``print`` shows the tables, ``describe()`` one line.

    Raises:
      TypeError: ``tx`` is not a transformation, a param leaf is not an array of floats, or
        ``mesh`` is not a ``Mesh``.
      ValueError: params sharded on two meshes, or ``tx.init`` fails to trace with shardings.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
      >>> report = gradtx.memory_report(gradtx.adamw(1e-3, mu_dtype=jnp.bfloat16), params)
      >>> report.total_bytes, report.by_slot, report.bytes_per_param
      (124, {'count': 4, 'mu': 40, 'nu': 80}, 6.2)
      >>> print(report)
      slot   int32  bfloat16  float32  total
      -----  -----  --------  -------  -----
      count    4 B         -        -    4 B
      mu         -      40 B        -   40 B
      nu         -         -     80 B   80 B
      total    4 B      40 B     80 B  124 B
      <BLANKLINE>
      group  state
      -----  -----
      all    124 B
      <BLANKLINE>
      state 124 B for 20 params (6.2 B/param, 1.55x params): count 4 B, mu 40 B, nu 80 B
    """
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            "gradtx.memory_report: tx must be a transformation (with init and update), got "
            f"{type(tx).__name__}"
        )
    flat = jax.tree_util.tree_leaves_with_path(params, is_leaf=is_none)
    for path, x in flat:
        if x is None:
            continue
        dtype = getattr(x, "dtype", None)
        if not hasattr(x, "shape") or dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            got = f"dtype {dtype}" if dtype is not None else type(x).__name__
            raise TypeError(
                f"gradtx.memory_report: params must be floating-point arrays; the leaf at "
                f"{path_str(path)} is {got}"
            )
    mesh = _mesh_of([(p, _sharding(x)) for p, x in flat], mesh)
    state, explicit = _state_shapes(tx, params, mesh)

    part = find_first(tx, (Partition,))
    if part is None:
        param_groups = ["all"] * len(flat)
        names: dict[str, str] = {}
        by_group: dict[str, int] = {"all": 0}
    else:
        full = part._labels(params)
        param_groups = [str(x) for x in jax.tree_util.tree_leaves(full, is_leaf=is_none)]
        names = {_key(lab): str(lab) for lab in part.labels}
        by_group = {str(lab): 0 for lab in part.labels}
    owners = {tuple(p): g for (p, x), g in zip(flat, param_groups) if x is not None and p}

    entries = []
    leaves = jax.tree_util.tree_leaves_with_path(state)
    for spath, s in leaves:
        sp = tuple(spath)
        # the longest suffix of the state path that is a param's path
        cut = next((i for i in range(len(sp)) if sp[i:] in owners), len(sp))
        prefix = sp[:cut]
        group = owners.get(sp[cut:]) or _group_in_path(sp, names)
        group = group or ("all" if part is None else SHARED)
        dtype = str(jnp.dtype(s.dtype))
        entries.append(
            MemoryEntry(path_str(sp), _slot(prefix), group, dtype, tuple(s.shape), _nbytes(s))
        )
    by_slot: dict[str, int] = {}
    by_dtype: dict[str, int] = {}
    for e in entries:
        by_slot[e.slot] = by_slot.get(e.slot, 0) + e.nbytes
        by_group[e.group] = by_group.get(e.group, 0) + e.nbytes
        by_dtype[e.dtype] = by_dtype.get(e.dtype, 0) + e.nbytes
    real = [x for _, x in flat if x is not None]
    return MemoryReport(
        entries=tuple(entries),
        total_bytes=sum(e.nbytes for e in entries),
        by_slot=by_slot,
        by_group=by_group,
        by_dtype=by_dtype,
        params_bytes=sum(_nbytes(x) for x in real),
        param_count=sum(int(np.prod(x.shape, dtype=np.int64)) for x in real),
        per_device=None if explicit is None else _per_device([s for _, s in leaves], explicit),
    )
