"""``masked`` and ``freeze``, optax's names with optax's semantics and argument order.

``masked(inner, mask)`` runs ``inner`` on the leaves where ``mask`` is true and passes the
others through unchanged::

    u_i = inner(g)_i  where mask_i,     u_i = g_i  elsewhere

``inner`` sees the masked-out leaves as ``None`` (optax: ``MaskedNode()``), so it keeps no
state for them. ``freeze(mask)`` is ``masked(set_to_zero(), mask)``: exact zero updates where
``mask`` is true (the parameters stay as they are), the updates unchanged elsewhere.
"""

from __future__ import annotations

from typing import Any

from .._core.state import State
from .._core.struct import static
from .._core.transformation import GradientTransformation
from ..schedules._learning_rate import set_to_zero
from .common import as_inner, check_args, full_mask, restore, select, select_extra

__all__ = ["Masked", "masked", "freeze"]


class Masked(GradientTransformation):
    """``inner`` on the leaves where ``mask`` is true; the others pass through unchanged.

    The state is ``State(inner_state=...)``, as optax's ``MaskedState``; the inner state holds
    ``None`` where the mask is false. A callable mask is called with the params at ``init``
    and with the updates at ``update``, as in optax.
    """

    inner: Any = None
    mask: Any = static(None)
    mask_compatible_extra_args: bool = static(False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_inner(self.name, self.inner))
        if self.mask is None:
            raise TypeError(f"gradtx.{self.name}: mask is required (a tree of bools or a function)")
        super().__post_init__()

    def leaf_selection(self, tree: Any) -> Any:
        """The mask's value at every leaf of ``tree`` (:func:`gradtx.pack` groups by it)."""
        return full_mask(self.name, self.mask, tree)

    def init(self, params: Any) -> State:
        full = full_mask(self.name, self.mask, params)
        return State(inner_state=self.inner.init(select(full, params)))

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, ("inner_state",), updates, params)
        full = full_mask(self.name, self.mask, updates)
        if self.mask_compatible_extra_args:
            extra = select_extra(full, extra, updates)
        new, inner_state = self.inner.update(
            select(full, updates), state["inner_state"], select(full, params), **extra
        )
        return restore(full, new, updates), State(inner_state=inner_state)

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, state["inner_state"])]


def masked(inner: Any, mask: Any, *, mask_compatible_extra_args: bool = False) -> Masked:
    """Applies ``inner`` only where ``mask`` is true; the other updates pass through unchanged.

    As ``optax.masked``: ``mask`` is a tree of bools with the params' structure (or a prefix of
    it), or a function of the params (at ``init``) and of the updates (at ``update``) returning
    one; ``inner`` keeps no state for the masked-out leaves.

    Args:
      inner: a gradtx or optax transformation.
      mask: a tree of bools (or a prefix of the params' tree), or a function returning one.
      mask_compatible_extra_args: also mask the keyword arguments of ``update`` that have the
        structure of the updates.

    Returns:
      A :class:`Masked` transformation; its state is ``State(inner_state=...)``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
      >>> tx = gradtx.masked(gradtx.add_decayed_weights(0.5), lambda p: {"w": True, "b": False})
      >>> u, _ = tx.update({"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}, tx.init(params), params)
      >>> u["w"].tolist(), u["b"].tolist()
      ([[0.5, 0.5], [0.5, 0.5]], [0.0, 0.0])
    """
    return Masked(inner, mask, mask_compatible_extra_args)


def freeze(mask: Any) -> Masked:
    """Zero updates where ``mask`` is true (those parameters stay as they are), the updates
    unchanged elsewhere: ``masked(set_to_zero(), mask)``, as ``optax.freeze``.

    ``mask`` is a bool (everything frozen or nothing) or a tree of bools with the params'
    structure (or a prefix of it). Chained before an optimizer, the frozen leaves still get
    optimizer state (zero gradients); to give them none, wrap the optimizer instead:
    ``gradtx.masked(optimizer, not_frozen)`` chained with ``freeze(frozen)``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> params = {"a": jnp.ones(1), "b": jnp.ones(2)}
      >>> tx = gradtx.freeze({"a": True, "b": False})
      >>> u, _ = tx.update(params, tx.init(params))
      >>> u["a"].tolist(), u["b"].tolist()
      ([0.0], [1.0, 1.0])
    """
    return Masked(set_to_zero(), mask)
