"""``apply_if_finite``: skip the steps whose updates hold a NaN or an infinity, as optax's.

Rule per step, with ``n`` the number of consecutive non-finite steps so far::

    finite = all(isfinite(g))
    n      = 0 if finite else n + 1            (saturating at the int32 maximum)
    if finite or n > max_consecutive_errors:   u, inner_state = inner.update(g, inner_state)
    else:                                      u = 0,  inner_state unchanged
    total  = total + (0 if finite else 1)

So after ``max_consecutive_errors`` skipped steps in a row the non-finite update is applied
(the wrapper gives up, as optax's does), and any finite step resets ``n`` to 0. The state
``State(notfinite_count, last_finite, total_notfinite, inner_state)`` has optax's field names.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.stage import increment, scalar_like
from .._core.state import State
from .._core.struct import static
from .._core.transformation import GradientTransformation
from .common import as_inner, check_args

__all__ = ["ApplyIfFinite", "apply_if_finite"]

_ENTRIES = ("notfinite_count", "last_finite", "total_notfinite", "inner_state")


class ApplyIfFinite(GradientTransformation):
    """``inner``, except on steps whose updates are not all finite; see the module docstring."""

    inner: Any = None
    max_consecutive_errors: int = static(0)

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
        leaves = [x for x in jax.tree_util.tree_leaves(updates) if x is not None]
        finite = (
            jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
            if leaves
            else (jnp.array(True))
        )
        count = jnp.where(
            finite, jnp.zeros_like(state["notfinite_count"]), increment(state["notfinite_count"])
        )
        total = jnp.where(finite, state["total_notfinite"], increment(state["total_notfinite"]))
        inner_state = state["inner_state"]

        def apply(_: Any) -> tuple[Any, Any]:
            return self.inner.update(updates, inner_state, params, **extra)

        def skip(_: Any) -> tuple[Any, Any]:
            zeros = jax.tree_util.tree_map(jnp.zeros_like, updates)
            return zeros, inner_state

        out, new_inner = jax.lax.cond(
            jnp.logical_or(finite, count > self.max_consecutive_errors), apply, skip, None
        )
        return out, State(
            notfinite_count=count,
            last_finite=finite,
            total_notfinite=total,
            inner_state=new_inner,
        )

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, state["inner_state"])]


def apply_if_finite(inner: Any, max_consecutive_errors: int) -> ApplyIfFinite:
    """Skips the steps whose updates hold a NaN or an infinity, as ``optax.apply_if_finite``.

    On a skipped step the updates are zeros and ``inner``'s state is kept; after
    ``max_consecutive_errors`` skipped steps in a row the next non-finite update is applied.
    The exact rule is in :mod:`gradtx._wrappers.finite`.

    Args:
      inner: a gradtx or optax transformation.
      max_consecutive_errors: how many non-finite steps in a row are skipped.

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
    return ApplyIfFinite(inner, max_consecutive_errors)
