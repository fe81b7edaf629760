"""Skipping the steps whose updates are not finite: ``apply_if_finite``, as optax's, and the
test and the skip that the guards (:mod:`gradtx._wrappers.guard`) share.

``apply_if_finite``'s rule per step, with ``n`` the number of consecutive non-finite steps::

    finite = all(isfinite(g))
    n      = 0 if finite else n + 1            (saturating at the int32 maximum)
    if finite or n > max_consecutive_errors:   u, inner_state = inner.update(g, inner_state)
    else:                                      u = 0,  inner_state unchanged
    total  = total + (0 if finite else 1)

So after ``max_consecutive_errors`` skipped steps in a row the non-finite update is applied
(the wrapper gives up, as optax's does), and any finite step resets ``n`` to 0. The state
``State(notfinite_count, last_finite, total_notfinite, inner_state)`` has optax's field names.

**The test** (:func:`finite_check`) is ``isfinite(global_norm(g))``, and ``all(isfinite(g))``
only when that norm is not finite (a ``lax.cond``): gradtx's overflow-safe norm is inf or NaN
whenever an entry is, and overflows for finite entries only near the float maximum, so the
value is always that of ``all(isfinite(g))``; inside ``jit`` it is the same reduction as a
``clip_by_global_norm`` of the same updates, which XLA computes once.

**The skip** (:func:`apply_or_skip`) runs ``inner.update`` under a ``lax.cond``, only on the
applied steps (the default). With ``in_place=True`` and an ``inner`` made of gradtx stages
(chains, named optimizers, partitions and groups of them: :func:`fuses`), it runs on every
step inside :func:`~gradtx._core.context.keeping` instead: each stage selects every slot
``where(apply, new, old)`` where its rule computes it, the updates are ``where(apply, u, 0)``,
and a donated state is updated in place as without a guard (docs/benchmarks.md: 1.08x the
unguarded step on CPU, against 3.7x for the ``lax.cond``). Skipped steps leave the state
exactly unchanged either way; on applied steps the two forms compute the same expressions,
but XLA may contract a different product of ``a·m + b·g`` into a fused multiply-add, so
results can differ by about an ulp of the terms (measured: ``adam`` alone, ``lion``; the
clip + adamw chain was bit-identical). A skipped step computes the inner update from the
non-finite values before discarding it, so differentiating through it (meta-gradients) gives
NaN where the ``lax.cond`` gives 0. Other inners (optax's; gradtx wrappers with state of their
own) always take the ``lax.cond``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.chain import Chain, Foreign
from .._core.context import keeping
from .._core.stage import Stage, increment, scalar_like
from .._core.state import State
from .._core.struct import static
from .._core.transformation import GradientTransformation
from .._core.tree import is_none
from .._stages.clipping import global_norm
from .common import as_inner, check_args
from .partition import Partition

__all__ = [
    "ApplyIfFinite",
    "apply_if_finite",
    "all_finite",
    "finite_check",
    "fuses",
    "apply_or_skip",
]

_ENTRIES = ("notfinite_count", "last_finite", "total_notfinite", "inner_state")


def all_finite(tree: Any) -> jax.Array:
    """A scalar bool: whether every element of every leaf of ``tree`` is finite.

    ``isfinite(sum(0·x))`` per leaf (``0·x`` is NaN exactly where ``x`` is inf or NaN): a
    float reduction, which XLA fuses without materializing a bool array."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if x is not None]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.isfinite(jnp.sum(x * 0)) for x in leaves]))


def finite_check(tree: Any) -> jax.Array:
    """:func:`all_finite` of ``tree``, read from its global norm where that is finite (see the
    module docstring): one reduction, shared with a global-norm clip of the same tree."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if x is not None]
    if not leaves or not all(jnp.issubdtype(x.dtype, jnp.inexact) for x in leaves):
        return all_finite(tree)
    norm_finite = jnp.isfinite(global_norm(tree))
    return jax.lax.cond(norm_finite, lambda: jnp.array(True), lambda: all_finite(tree))


def fuses(inner: Any) -> bool:
    """Whether ``inner`` can run in place (:func:`apply_or_skip`): a gradtx stage that uses the
    stage lifting, or a chain or partition (groups) of such."""
    if isinstance(inner, Foreign):
        return False
    if isinstance(inner, Stage):
        return type(inner).update is Stage.update
    if isinstance(inner, Chain):
        return all(fuses(t) for t in inner.stages)
    if isinstance(inner, Partition):
        return all(fuses(t) for t in inner.transforms)
    return False


def apply_or_skip(
    inner: Any,
    apply: jax.Array,
    updates: Any,
    inner_state: Any,
    params: Any,
    extra: dict,
    in_place: bool = False,
) -> tuple[Any, Any]:
    """``inner.update(updates, inner_state, params, **extra)`` if ``apply``, else zeros of the
    dtypes it would return (placed like ``updates``) and ``inner_state`` unchanged; under a
    ``lax.cond``, or with ``in_place`` (where :func:`fuses`) as the module docstring says."""
    if in_place and fuses(inner):
        return _apply_kept(inner, apply, updates, inner_state, params, extra)

    def run(_: Any) -> tuple[Any, Any]:
        return inner.update(updates, inner_state, params, **extra)

    def skip(_: Any) -> tuple[Any, Any]:
        shapes = jax.eval_shape(run, None)[0]

        def zero(g: Any, s: Any) -> Any:
            return None if g is None or s is None else jnp.zeros_like(g, dtype=s.dtype)

        return jax.tree_util.tree_map(zero, updates, shapes, is_leaf=is_none), inner_state

    return jax.lax.cond(apply, run, skip, None)


def _apply_kept(
    inner: Any, apply: jax.Array, updates: Any, inner_state: Any, params: Any, extra: dict
) -> tuple[Any, Any]:
    with keeping(apply) as kept:
        out, new = inner.update(updates, inner_state, params, **extra)
    ids = {id(x) for x in kept}

    def state(n: Any, o: Any) -> Any:  # what no stage kept (nothing, where fuses(inner))
        return n if n is o or id(n) in ids else jnp.where(apply, n, o)

    out = jax.tree_util.tree_map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), out)
    return out, jax.tree_util.tree_map(state, new, inner_state)


class ApplyIfFinite(GradientTransformation):
    """``inner``, except on steps whose updates are not all finite; see the module docstring."""

    inner: Any = None
    max_consecutive_errors: int = static(0)
    in_place: bool = static(False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_inner(self.name, self.inner))
        n = self.max_consecutive_errors
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(
                f"gradtx.{self.name}: max_consecutive_errors must be an int >= 0, got {n!r}"
            )
        super().__post_init__()

    def init(self, params: Any) -> State:
        return State(
            notfinite_count=scalar_like(params, 0, jnp.int32),
            last_finite=scalar_like(params, True, jnp.bool_),
            total_notfinite=scalar_like(params, 0, jnp.int32),
            inner_state=self.inner.init(params),
        )

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, _ENTRIES, updates, params)
        finite = finite_check(updates)
        count = jnp.where(
            finite, jnp.zeros_like(state["notfinite_count"]), increment(state["notfinite_count"])
        )
        total = jnp.where(finite, state["total_notfinite"], increment(state["total_notfinite"]))
        apply = jnp.logical_or(finite, count > self.max_consecutive_errors)
        out, new_inner = apply_or_skip(
            self.inner, apply, updates, state["inner_state"], params, extra, self.in_place
        )
        return out, State(
            notfinite_count=count,
            last_finite=finite,
            total_notfinite=total,
            inner_state=new_inner,
        )

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, state["inner_state"])]


def apply_if_finite(
    inner: Any, max_consecutive_errors: int, *, in_place: bool = False
) -> ApplyIfFinite:
    """Skips the steps whose updates hold a NaN or an infinity, as ``optax.apply_if_finite``.

    On a skipped step the updates are zeros and ``inner``'s state is kept; after
    ``max_consecutive_errors`` skipped steps in a row the next non-finite update is applied.
    The exact rule is in :mod:`gradtx._wrappers.finite`.

    Args:
      inner: a gradtx or optax transformation.
      max_consecutive_errors: how many non-finite steps in a row are skipped.
      in_place: run a gradtx ``inner`` on every step and keep its state where each stage
        computes it, instead of a ``lax.cond`` (faster with donated state; on applied steps
        equal up to fused multiply-add rounding; see the module docstring).

    Returns:
      An :class:`ApplyIfFinite`; its state is ``State(notfinite_count, last_finite,
      total_notfinite, inner_state)``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.apply_if_finite(gradtx.sgd(0.1), max_consecutive_errors=2)
      >>> state = tx.init({"w": jnp.ones(2)})
      >>> u, state = tx.update({"w": jnp.array([1.0, jnp.nan])}, state)
      >>> u["w"].tolist(), int(state.notfinite_count), bool(state.last_finite)
      ([0.0, 0.0], 1, False)
    """
    return ApplyIfFinite(inner, max_consecutive_errors, in_place)
