"""Where ``init`` puts the state: every slot placed as a jitted step returns it.

A jitted step returns each params-shaped slot (``mu``, ``nu`` ...) sharded like its param and
every scalar (a count) replicated. ``init`` places its state the same way, so the state it
makes and the state a step returns are one cache key: the step compiles once, not again at
its second call. How the param's sharding is known depends on where ``init`` runs:

- **concrete params** (eager ``init``): the param's :class:`~jax.sharding.NamedSharding`; the
  slot gets the spec a jitted step writes for it (:func:`step_sharding`);
- **traced params on a mesh with Explicit axes** (``jax.jit(tx.init)`` inside
  ``jax.set_mesh``, ``jax.eval_shape`` of sharded ``jax.ShapeDtypeStruct`` params): the
  sharding is part of the param's type (``jax.typeof(p).sharding``); the slot is resharded to
  it, so ``eval_shape`` shows the sharded state;
- **traced params on an Auto mesh** (or no mesh): the sharding is not known while tracing, so
  the slot is tied to its param with ``shard_alike`` (behind an ``optimization_barrier``, so a
  later cast of the slot keeps the tie) and XLA's propagation gives it the param's sharding in
  the compiled ``init`` (``jax.eval_shape`` shows no sharding there, as JAX shows
  none for any array of an Auto mesh);
- inside ``shard_map`` (Manual axes) the slots are left as they are, and so are they with one
  device or under :func:`in_update` (a state re-made inside a step, e.g. ``lookahead``'s
  reset: the step's own output sharding places it, and a barrier there would keep XLA from
  folding the fresh zeros).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.shard_alike import shard_alike
from jax.sharding import AxisType, NamedSharding, PartitionSpec

__all__ = ["step_sharding", "follow", "place_like", "scalar_like", "in_update"]

_LOCAL = threading.local()


@contextlib.contextmanager
def in_update() -> Iterator[None]:
    """Within it, :func:`follow` leaves traced slots as they are: for an ``init`` called
    inside a step, whose outputs the step's own sharding places."""
    before = getattr(_LOCAL, "in_update", False)
    _LOCAL.in_update = True
    try:
        yield
    finally:
        _LOCAL.in_update = before


def _explicit(mesh: Any) -> bool:
    return any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ()))


def _in_mesh(mesh: Any) -> bool:
    """Whether ``mesh`` (a traced array's, with Explicit axes) is the ambient mesh, without
    Manual axes: then a constant can be resharded onto it inside ``jit`` (outside
    ``jax.set_mesh`` JAX refuses to place a constant on an Explicit mesh there)."""
    ambient = jax.sharding.get_abstract_mesh()
    return not ambient.empty and ambient == mesh and AxisType.Manual not in tuple(mesh.axis_types)


def step_sharding(param: Any, entries: tuple | None = None) -> NamedSharding | None:
    """The sharding a jitted step returns for a state array derived from ``param``.

    ``entries`` gives the mesh axes of each dimension of the state array (``None`` to use
    ``param``'s own spec). ``None`` unless ``param`` is a concrete array with a
    :class:`~jax.sharding.NamedSharding`. The spec is written as jit writes its outputs' specs:
    one entry per dimension on a mesh with explicit axes, trailing ``None`` entries dropped on
    an auto mesh (``P('x', None)`` comes back as ``P('x')``, a different cache key; a state
    array shaped like a param given as ``P(None)`` as ``P(None)``), so state
    fed back into the step does not make it compile again.
    """
    if isinstance(param, jax.core.Tracer) or not isinstance(param, jax.Array):
        return None
    sharding = getattr(param, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return None
    spec = tuple(sharding.spec)
    # A params-shaped array of a param given as P(None) (or P(None, None)) comes back as
    # P(None) on an auto mesh; other specs lose all their trailing ``None`` entries there.
    keep = 1 if entries is None and spec and all(e is None for e in spec) else 0
    if entries is None:
        entries = spec + (None,) * (param.ndim - len(spec))
    entries = tuple(entries)
    if not _explicit(sharding.mesh):
        while len(entries) > keep and entries[-1] is None:
            entries = entries[:-1]
    return NamedSharding(sharding.mesh, PartitionSpec(*entries))


def follow(param: Any, slot: Any) -> Any:
    """``slot`` (an array of ``param``'s shape) placed as a jitted step returns it: with
    ``param``'s sharding, by the rule of the module docstring. Anything else (a slot of
    another shape, ``None``, a param that is neither an array nor a tracer) is returned as is.
    """
    if slot is None or param is None or jnp.shape(slot) != jnp.shape(param):
        return slot
    if isinstance(param, jax.core.Tracer):
        if getattr(_LOCAL, "in_update", False) or jax.device_count() == 1:
            return slot
        sharding = jax.typeof(param).sharding
        mesh = getattr(sharding, "mesh", None)
        if mesh is not None and AxisType.Manual in tuple(mesh.axis_types):
            return slot
        if mesh is not None and _explicit(mesh):
            if _in_mesh(mesh) and jax.typeof(slot).sharding.spec != sharding.spec:
                return jax.sharding.reshard(slot, sharding)
            return slot
        # The barrier keeps XLA from folding a constant slot into a later cast (a state
        # dtype policy) before the sharding propagates; it costs one copy, in init only.
        return jax.lax.optimization_barrier(shard_alike(param, slot)[1])
    if isinstance(slot, jax.core.Tracer) or not isinstance(slot, jax.Array):
        return slot
    target = step_sharding(param)
    if target is None or slot.sharding == target:
        return slot
    return jax.device_put(slot, target)


def scalar_like(params: Any, value: Any, dtype: Any) -> jax.Array:
    """A scalar state entry (a step count) placed as a jitted step over ``params`` returns it.

    When the first array leaf of ``params`` is sharded with a :class:`jax.sharding.NamedSharding`,
    the scalar is replicated on the same mesh (``NamedSharding(mesh, P())``): the placement a
    jitted step gives the count it returns, so the step compiles once, not again at the second
    call. Traced params on a mesh with Explicit axes inside ``jax.set_mesh``: replicated on
    that mesh in the type. Otherwise (one device, an Auto mesh while tracing) a plain array.
    """
    return place_like(params, jnp.full((), value, dtype))


def place_like(params: Any, out: jax.Array) -> jax.Array:
    """A small state entry (a count, a PRNG key) replicated as :func:`scalar_like` places it."""
    for leaf in jax.tree_util.tree_leaves(params):
        if isinstance(leaf, jax.core.Tracer):
            mesh = getattr(jax.typeof(leaf).sharding, "mesh", None)
            if mesh is not None and _explicit(mesh) and _in_mesh(mesh):
                return jax.sharding.reshard(out, NamedSharding(mesh, PartitionSpec()))
            continue
        if not isinstance(leaf, jax.Array):
            continue
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and len(sharding.device_set) > 1:
            replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
            return jax.device_put(out, replicated)
        break
    return out
