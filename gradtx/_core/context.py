"""What a per-array rule reads besides its own array: :class:`Context` (the step, ``t`` and the
stage's global values) and, on a packed buffer, :class:`SegmentContext`; and the keep flag of a
step guard.

A guard that runs its inner transformation on every step (``skip_nonfinite(...,
in_place=True)``) sets a keep flag for the time of that call (:func:`keeping`): every
:class:`~gradtx.Stage` then runs its rule through :func:`run_kept`, which selects each state
slot ``where(keep, new, old)`` right where the rule computes it (later uses inside the rule
read the kept value), and keeps its count the same way, so a skipped step leaves the state
exactly as it was. With the select in the one expression that writes the slot, XLA updates a
donated slot in place; selected after the rule instead, the rule's uses of the new value are
recomputed from the old buffer and XLA copies every donated slot first (docs/benchmarks.md,
guard probe).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp

from .pieces import leaf_sums

__all__ = ["Context", "SegmentContext", "current_keep", "keeping", "register_kept", "run_kept"]

_KEEP: ContextVar[Any] = ContextVar("gradtx_keep", default=None)


def current_keep() -> Any:
    """The keep flag of the innermost :func:`keeping` block being traced, or ``None``."""
    kept = _KEEP.get()
    return None if kept is None else kept[0]


def register_kept(*arrays: Any) -> None:
    """Records ``arrays`` (state values a stage has kept) with every enclosing :func:`keeping`
    block, so the guard does not select them a second time."""
    kept = _KEEP.get()
    if kept is not None:
        for registry in kept[1]:
            registry.extend(arrays)


@contextlib.contextmanager
def keeping(flag: Any) -> Iterator[list]:
    """Within this block every stage keeps its state where ``flag`` (a scalar bool) is false;
    nested blocks combine their flags with ``&``. Yields the list of the values kept inside."""
    outer = _KEEP.get()
    registry: list = []
    if outer is None:
        token = _KEEP.set((flag, (registry,)))
    else:
        token = _KEEP.set((outer[0] & flag, (*outer[1], registry)))
    try:
        yield registry
    finally:
        _KEEP.reset(token)


class Context:
    """What a per-array rule may read besides its own array: the step and global values.

    Besides the attributes below, every value returned by the stage's :meth:`Stage.prepare`
    (e.g. a global norm) is an attribute, in the rule's compute dtype.

    Attributes:
      step: int32 number of updates already applied (0 at the first update), or ``None`` when
        the stage keeps no counter.
      t: ``step + 1`` (saturating at the int32 maximum) as a float in the rule's compute dtype
        (for bias corrections), or ``None``.
      extra: the keyword arguments given to ``update``.
    """

    def __getattr__(self, name: str) -> Any:  # only called for names prepare() did not give
        given = sorted(k for k in vars(self) if k not in ("step", "t", "extra") and k[0] != "_")
        raise AttributeError(
            f"Context has no value {name!r} (values come from the stage's prepare(); "
            f"this one gave {given})"
        )

    def __init__(self, step: Any, t: Any, values: Mapping[str, Any], extra: Mapping[str, Any]):
        self.step = step
        self.t = t
        self.extra = extra
        self.__dict__.update(values)

    def leaf_sum(self, x: jax.Array) -> jax.Array:
        """The sum of ``x`` over the whole parameter array, broadcastable against ``x``.

        A rule that reduces only through this and :meth:`leaf_mean` can declare
        :attr:`Stage.leafwise`: on a packed buffer it then gets each leaf's own sum per element.
        """
        return jnp.sum(x)

    def leaf_mean(self, x: jax.Array) -> jax.Array:
        """The mean of ``x`` over the whole parameter array (see :meth:`leaf_sum`)."""
        return jnp.mean(x)


class SegmentContext(Context):
    """The context of a :attr:`Stage.leafwise` rule run on a whole packed buffer: the same
    values, but ``leaf_sum``/``leaf_mean`` reduce over each leaf's segment of the buffer and
    return one value per element."""

    def __init__(self, base: Context, group: Any):
        self.__dict__.update(vars(base))
        self._group = group

    def leaf_sum(self, x: jax.Array) -> jax.Array:
        return leaf_sums(x, self._group)

    def leaf_mean(self, x: jax.Array) -> jax.Array:
        return leaf_sums(x, self._group, mean=True)


def run_kept(rule: Any, args: tuple, keep: Any) -> tuple[Any, dict[str, jax.Array]]:
    """``rule(g, slots, param) -> (u, new_slots)``, with each new slot replaced, at the point
    where the rule computes it, by ``where(keep, new, old)``: later uses inside the rule (the
    update ``m / sigma`` of the kept ``m``) read the kept value.

    Exact whatever ``keep``: where it is true every value equals ``rule``'s; where it is false
    every slot is its old value. The rule is traced once to a jaxpr and evaluated equation by
    equation (under the caller's trace: ``jit``, ``vmap`` and ``grad`` see ordinary operations),
    a select inserted after the equation that produces each slot. Slots the rule returns as
    given, or as a constant, are selected after it.
    """
    g, slots, param = args
    closed, shapes = jax.make_jaxpr(rule, return_shape=True)(g, slots, param)
    jaxpr = closed.jaxpr
    out_tree = jax.tree_util.tree_structure(shapes)
    # flat outputs: the update's leaves, then the slots in sorted-key order
    n_u = len(jax.tree_util.tree_leaves(shapes[0]))
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts))
    env.update(zip(jaxpr.invars, jax.tree_util.tree_leaves((g, slots, param))))
    targets: dict[Any, jax.Array] = {}
    late: dict[int, jax.Array] = {}  # output positions selected after the rule
    for k, name in enumerate(sorted(shapes[1])):
        v, old = jaxpr.outvars[n_u + k], slots.get(name)
        if old is None or (not isinstance(v, jex.Literal) and env.get(v) is old):
            continue  # not a slot of the state, or returned as given: nothing to keep
        if isinstance(v, jex.Literal) or v in env or v in targets:
            late[n_u + k] = old
        else:
            targets[v] = old

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jex.Literal) else env[v]

    for eqn in jaxpr.eqns:
        params = eqn.primitive.get_bind_params(eqn.params)
        sub, params = params if isinstance(params, tuple) else ((), params)  # older jax: a pair
        manager = getattr(getattr(eqn, "ctx", None), "manager", None)
        with manager if manager is not None else contextlib.nullcontext():
            ans = eqn.primitive.bind(*sub, *map(read, eqn.invars), **params)
        for v, x in zip(eqn.outvars, ans if eqn.primitive.multiple_results else [ans]):
            if v in targets:
                x = jnp.where(keep, x, targets[v].astype(x.dtype))
            env[v] = x
    outs = [read(v) for v in jaxpr.outvars]
    for k, old in late.items():
        outs[k] = jnp.where(keep, outs[k], old.astype(outs[k].dtype))
    return jax.tree_util.tree_unflatten(out_tree, outs)
