"""Named optimizer state: one container type for every transformation and for chains."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import jax

from . import flax_hook

__all__ = ["State", "builder", "with_builder"]


class State(dict):
    """An immutable, ordered record of named state entries, registered as a pytree.

    A read-only ``dict`` subclass (mutating methods raise), so that tools which look into
    state by key find gradtx's entries: ``optax.tree.get(state, "mu")`` and
    ``optax.tree_utils.tree_get_all_with_path`` work on it as on optax's own state.

    Entries are read by attribute (``state.mu``), by name (``state["mu"]``) or, like optax's
    tuples, by position (``state[0]``). A chain's state holds one :class:`State` per stage,
    keyed by the stage's name, so ``opt_state.knobs.nu`` reaches Adam's second moment.

    Pytree paths use attribute keys (``.knobs.mu['w']``), so errors and checkpoints name entries
    by what they are rather than by their position.

    A state may also record what built it (:func:`builder`; e.g. ``"adam(Ema, AdamScale)"``
    for the state of :func:`gradtx.adam`). The record is static pytree data, not a leaf: it
    survives ``jit``, ``tree_map`` and ``eval_shape`` and adds no entry or leaf path; msgpack
    checkpoints store it and check it on restore (see :mod:`gradtx._interop.checkpoint`).

    The entries are the ``dict``'s own (insertion-ordered) storage; nothing else is kept but
    the builder record.
    """

    __slots__ = ("_builder",)

    def __init__(self, entries: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        dict.__init__(self, entries or {}, **kwargs)
        object.__setattr__(self, "_builder", None)
        if not flax_hook.registered and "flax.serialization" in sys.modules:
            flax_hook.maybe_register()

    # --- access -------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return dict.__getitem__(self, name)
        except KeyError:
            names = ", ".join(dict.keys(self)) or "none"
            raise AttributeError(f"State has no entry {name!r}; entries: {names}") from None

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return list(dict.values(self))[key]
        return dict.__getitem__(self, key)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("State is immutable; use state.replace(name=value)")

    def _immutable(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("State is immutable; use state.replace(name=value)")

    __setitem__ = __delitem__ = __ior__ = _immutable
    clear = pop = popitem = setdefault = update = _immutable

    def copy(self) -> State:
        return self

    def replace(self, **changes: Any) -> State:
        """A copy with some entries replaced (names must exist)."""
        unknown = set(changes) - set(dict.keys(self))
        if unknown:
            raise KeyError(f"State has no entries {sorted(unknown)}")
        new = State({n: changes.get(n, v) for n, v in dict.items(self)})
        return with_builder(new, self._builder)

    def __reduce__(self) -> tuple:
        return (_rebuild, (dict(self), self._builder))

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return False if isinstance(other, dict) else NotImplemented
        return tuple(dict.keys(self)) == tuple(dict.keys(other)) and all(
            a is b or _eq(a, b) for a, b in zip(dict.values(self), dict.values(other))
        )

    __hash__ = None  # holds arrays

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={_short(v)}" for n, v in dict.items(self))
        return f"State({inner})"


def builder(state: State) -> str | None:
    """What built ``state`` (a short description of the transformation), or ``None``."""
    return object.__getattribute__(state, "_builder")


def with_builder(state: State, tag: str | None) -> State:
    """``state`` with the record of what built it set to ``tag`` (the same entries)."""
    if tag is None and builder(state) is None:
        return state
    new = State(dict(state))
    object.__setattr__(new, "_builder", tag)
    return new


def _rebuild(entries: dict, tag: str | None) -> State:
    return with_builder(State(entries), tag)


def _eq(a: Any, b: Any) -> bool:
    try:
        la, ta = jax.tree_util.tree_flatten(a)
        lb, tb = jax.tree_util.tree_flatten(b)
        return bool(ta == tb) and all(  # type: ignore[operator]
            bool((x == y).all()) if hasattr(x, "all") else x == y for x, y in zip(la, lb)
        )
    except Exception:
        return False


def _short(value: Any) -> str:
    if isinstance(value, jax.Array) and value.ndim == 0:
        return (
            f"{value.dtype.name}({value.item()!r})"
            if not isinstance(value, jax.core.Tracer)
            else repr(value)
        )
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}{list(value.shape)}"
    if isinstance(value, State):
        return repr(value)
    if isinstance(value, (dict, list, tuple)):
        n = len(jax.tree_util.tree_leaves(value))
        return f"<tree of {n} leaves>"
    return repr(value)


def _aux(s: State) -> tuple:
    names = tuple(dict.keys(s))
    return (names, s._builder) if s._builder is not None else names


def _unflatten(aux: tuple, values: Any) -> State:
    if len(aux) == 2 and isinstance(aux[0], tuple):  # (names, builder)
        return _rebuild(dict(zip(aux[0], values)), aux[1])
    return State(dict(zip(aux, values)))


jax.tree_util.register_pytree_with_keys(
    State,
    lambda s: ([(jax.tree_util.GetAttrKey(n), v) for n, v in dict.items(s)], _aux(s)),
    _unflatten,
    lambda s: (list(dict.values(s)), _aux(s)),
)
