"""Checks of placement: on a device mesh, the state follows the params' sharding.

Rule: a state leaf with the shape of its parameter (a slot: ``mu``, ``nu``, ...) has the
parameter's sharding, after ``init`` and after a jitted step; the updates have the
parameter's sharding too. State leaves of other shapes -- the step ``count``, Adafactor's
factored ``v_row``/``v_col`` and its 1-element placeholders -- are exempt: their placement is
the compiler's choice. So, under the ``Auto`` mesh only, is an update that does not depend on
the gradients (``set_to_zero``'s zeros: the same for other gradients).

Two meshes are tried, built on the same devices:

- an ``Auto`` mesh (``NamedSharding`` + ``jax.device_put``, sharding left to the compiler):
  ``tx.init`` called eagerly on sharded params, then a jitted step. ``jax.jit(tx.init)`` is
  not checked here: under an ``Auto`` mesh jit gives outputs that do not depend on its inputs
  (zero-filled slots) whatever placement the compiler likes, usually one device. Call ``init``
  eagerly, give ``jax.jit`` ``out_shardings``, or use an ``Explicit`` mesh.
- an ``Explicit`` mesh (entered with ``jax.set_mesh``, shardings part of the types):
  ``jax.jit(tx.init)`` and a jitted step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

try:  # explicit sharding (jax.sharding.AxisType, jax.set_mesh) is new in JAX 0.6
    from jax.sharding import AxisType
except ImportError:  # pragma: no cover
    AxisType = None  # type: ignore[misc,assignment]

from .._core.tree import flatten, path_str
from ._common import guard, make_grads, new_report, standard_promotion, stepper
from ._report import CheckReport

__all__ = ["check_sharding", "partition_specs", "param_shaped_slots"]


def partition_specs(params: Any, axis_sizes: Mapping[str, int]) -> Any:
    """A ``PartitionSpec`` per leaf: each mesh axis shards the first free dimension of the leaf
    that it divides; leaves with no such dimension are replicated (``None`` leaves stay)."""

    def spec(p: Any) -> PartitionSpec:
        dims: list[Any] = [None] * np.ndim(p)
        for axis, size in axis_sizes.items():
            for d, n in enumerate(np.shape(p)):
                if dims[d] is None and n % size == 0 and n >= size:
                    dims[d] = axis
                    break
        return PartitionSpec(*dims)

    return jax.tree_util.tree_map(spec, params)


def param_shaped_slots(state: Any, params: Any) -> tuple[list[tuple[str, Any, Any]], int]:
    """``([(path, state_leaf, param_leaf), ...], exempt)``: the state leaves that sit in a
    subtree with the params' structure and have their parameter's shape; ``exempt`` counts
    leaves in such subtrees whose shape differs."""
    p_leaves, p_def = flatten(params)
    found: list[tuple[str, Any, Any]] = []
    exempt = 0

    def visit(node: Any, path: tuple) -> None:
        nonlocal exempt
        leaves, treedef = flatten(node)
        if treedef == p_def:
            for (sub, x), (_, p) in zip(leaves, p_leaves):
                if x is None or p is None:
                    continue
                if np.shape(x) == np.shape(p):
                    found.append((path_str(path + tuple(sub)), x, p))
                else:
                    exempt += 1
            return
        children = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
        for sub, child in children:
            if child is not node:
                visit(child, path + tuple(sub))

    visit(state, ())
    return found, exempt


def _fmt(s: Any) -> str:
    if isinstance(s, NamedSharding):
        return f"NamedSharding({s.spec}) over mesh {dict(s.mesh.shape)}"
    return type(s).__name__ + (f"({s})" if not hasattr(s, "device_set") else f" on {s.device_set}")


def _same(x: Any, p: Any) -> bool:
    return x.sharding.is_equivalent_to(p.sharding, np.ndim(x))


def _default_devices(devices: int | None) -> tuple[np.ndarray, tuple[str, ...]] | str:
    available = jax.devices()
    n = len(available) if devices is None else min(devices, len(available))
    if n < 2:
        return (
            f"needs at least 2 devices, {len(available)} available on "
            f"{jax.default_backend()} (on CPU set jax_num_cpu_devices before JAX starts)"
        )
    return np.array(available[:n]), ("kit",)


def _pick_size(params: Any, n: int) -> int | None:
    """The largest mesh size <= n (at least 2) dividing some dimension of some param."""
    shapes = [np.shape(p) for _, p in flatten(params)[0] if p is not None]
    for size in range(n, 1, -1):
        if any(d % size == 0 for s in shapes for d in s):
            return size
    return None


@standard_promotion
def check_sharding(
    tx: Any,
    params: Any,
    *,
    mesh: Mesh | None = None,
    devices: int | None = None,
    extra_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    strict: bool = False,
    report: CheckReport | None = None,
) -> CheckReport:
    """The state inherits the params' ``NamedSharding`` and a jitted step keeps it (required).

    ``mesh`` (its devices and axis names) or ``devices`` (how many, for a 1-d mesh; default all)
    picks the devices; each mesh axis shards the first dimension of each param it divides (see
    :func:`partition_specs`). Skipped, with the reason recorded, on fewer than 2 devices or when
    no param can be sharded. See the module docstring for the rule and the two meshes tried.
    The jitted step closes over the transformation (as flax keeps it: static data).
    """
    report = new_report(tx, report, name, strict)
    step = stepper(tx, dict(extra_args or {}))
    if mesh is None:
        got = _default_devices(devices)
        if isinstance(got, str):
            report.skip("sharding", got)
            return report
        devs, names = got
        size = _pick_size(params, devs.size)
        if size is None:
            report.skip("sharding", f"no param has a dimension divisible by 2..{devs.size}")
            return report
        devs = devs[:size]
    else:
        devs, names = np.asarray(mesh.devices), tuple(mesh.axis_names)
    sizes = dict(zip(names, devs.shape))
    specs = partition_specs(params, sizes)
    if all(s == PartitionSpec(*([None] * len(s))) for s in jax.tree_util.tree_leaves(specs)):
        report.skip("sharding", f"no param has a dimension divisible by the mesh axes {sizes}")
        return report
    jstep = jax.jit(lambda g, s, p: step(tx, g, s, p))
    checked = exempt = 0
    kinds = ["auto", "explicit"]
    if AxisType is None or not hasattr(jax, "set_mesh"):
        kinds.pop()
        report.skip("sharding.explicit", f"JAX {jax.__version__} has no explicit sharding")
    for kind in kinds:
        label = f"sharding.{kind}"
        if AxisType is None:
            m = Mesh(devs, names)
        else:
            axis = AxisType.Auto if kind == "auto" else AxisType.Explicit
            m = Mesh(devs, names, axis_types=(axis,) * len(names))
        sharded = jax.tree_util.tree_map(
            lambda p, s, m=m: jax.device_put(p, NamedSharding(m, s)), params, specs
        )
        grads = make_grads(sharded)
        scope = jax.set_mesh(m) if kind == "explicit" else contextlib.nullcontext()
        with scope:
            if kind == "auto":
                with guard(report, label, "eager init on sharded params"):
                    state = tx.init(sharded)
                where = "eager init"
            else:
                with guard(report, label, "jax.jit(tx.init) on sharded params"):
                    state = jax.jit(tx.init)(sharded)
                where = "jax.jit(tx.init)"
            n, e = _compare(report, label, where, state, sharded)
            with guard(report, label, "a jitted update on sharded params"):
                given = state
                updates, state = jstep(grads, given, sharded)
            for (path, u), (_, p) in zip(flatten(updates)[0], flatten(sharded)[0]):
                if u is not None and not _same(u, p):
                    if kind == "auto" and _constant(jstep, sharded, given, path, u):
                        exempt += 1
                        continue
                    raise report.fail(
                        label,
                        f"after a jitted step, the update at {path_str(path)} has sharding "
                        f"{_fmt(u.sharding)} but its param has {_fmt(p.sharding)}",
                    )
            n2, e2 = _compare(report, label, "a jitted step", state, sharded)
        checked, exempt = checked + n + n2, exempt + e + e2
        report.ok(label, f"mesh {sizes}: slots follow the params after {where} and a jitted step")
    report.ok(
        "sharding",
        f"{checked} slot checks on mesh {sizes} ({' and '.join(kinds)} axes); "
        f"{exempt} slots of other shapes exempt",
    )
    return report


def _constant(jstep: Any, params: Any, state: Any, path: Any, u: Any) -> bool:
    """Whether the update at ``path`` is the same for other gradients: an output computed
    without reading the inputs (``set_to_zero``), placed by the compiler under an ``Auto``
    mesh like ``jax.jit(tx.init)``'s slots."""
    other, _ = jstep(make_grads(params, seed=7, scale=3.0), state, params)
    leaf = dict((tuple(k), x) for k, x in flatten(other)[0])[tuple(path)]
    return bool(np.array_equal(np.asarray(leaf), np.asarray(u)))


def _compare(report: CheckReport, label: str, where: str, state: Any, params: Any) -> tuple:
    slots, exempt = param_shaped_slots(state, params)
    for path, x, p in slots:
        if not _same(x, p):
            raise report.fail(
                label,
                f"after {where}, the state leaf {path} {list(np.shape(x))} has sharding "
                f"{_fmt(x.sharding)} but its param has {_fmt(p.sharding)}",
            )
    return len(slots), exempt
