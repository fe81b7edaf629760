"""Named optimizer state: one container type for every transformation and for chains."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

import jax

__all__ = ["State", "builder", "with_builder"]

#: Whether State is registered with flax.serialization (see gradtx/_checkpoint.py).
_flax_registered = False


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
    checkpoints store it and check it on restore (see :mod:`gradtx._checkpoint`).
    """

    __slots__ = ("_names", "_values", "_builder")

    def __init__(self, entries: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        items = dict(entries or {}, **kwargs)
        dict.__init__(self, items)
        object.__setattr__(self, "_names", tuple(items))
        object.__setattr__(self, "_values", tuple(items.values()))
        object.__setattr__(self, "_builder", None)
        if not _flax_registered and "flax.serialization" in sys.modules:
            _register_with_flax()

    # --- access -------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        names = object.__getattribute__(self, "_names")
        if name in names:
            return object.__getattribute__(self, "_values")[names.index(name)]
        raise AttributeError(f"State has no entry {name!r}; entries: {', '.join(names) or 'none'}")

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return self._values[key]
        try:
            return self._values[self._names.index(key)]
        except ValueError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("State is immutable; use state.replace(name=value)")

    def _immutable(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("State is immutable; use state.replace(name=value)")

    __setitem__ = __delitem__ = __ior__ = _immutable
    clear = pop = popitem = setdefault = update = _immutable

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def keys(self):
        return Mapping.keys(self)

    def values(self):
        return Mapping.values(self)

    def items(self):
        return Mapping.items(self)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self._names else default

    def copy(self) -> State:
        return self

    def replace(self, **changes: Any) -> State:
        """A copy with some entries replaced (names must exist)."""
        unknown = set(changes) - set(self._names)
        if unknown:
            raise KeyError(f"State has no entries {sorted(unknown)}")
        new = State({n: changes.get(n, v) for n, v in zip(self._names, self._values)})
        return with_builder(new, self._builder)

    def __reduce__(self) -> tuple:
        return (_rebuild, (dict(zip(self._names, self._values)), self._builder))

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return False if isinstance(other, dict) else NotImplemented
        return self._names == other._names and all(
            a is b or _eq(a, b) for a, b in zip(self._values, other._values)
        )

    __hash__ = None  # holds arrays

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={_short(v)}" for n, v in zip(self._names, self._values))
        return f"State({inner})"


def builder(state: State) -> str | None:
    """What built ``state`` (a short description of the transformation), or ``None``."""
    return object.__getattribute__(state, "_builder")


def with_builder(state: State, tag: str | None) -> State:
    """``state`` with the record of what built it set to ``tag`` (the same entries)."""
    if tag is None and builder(state) is None:
        return state
    new = State(dict(zip(state._names, state._values)))
    object.__setattr__(new, "_builder", tag)
    return new


def _rebuild(entries: dict, tag: str | None) -> State:
    return with_builder(State(entries), tag)


def _register_with_flax() -> None:
    from ._checkpoint import register_if_flax_loaded  # noqa: PLC0415  (import cycle)

    register_if_flax_loaded()


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
    return (s._names, s._builder) if s._builder is not None else s._names


def _unflatten(aux: tuple, values: Any) -> State:
    if len(aux) == 2 and isinstance(aux[0], tuple):  # (names, builder)
        return _rebuild(dict(zip(aux[0], values)), aux[1])
    return State(dict(zip(aux, values)))


jax.tree_util.register_pytree_with_keys(
    State,
    lambda s: ([(jax.tree_util.GetAttrKey(n), v) for n, v in zip(s._names, s._values)], _aux(s)),
    _unflatten,
    lambda s: (list(s._values), _aux(s)),
)
