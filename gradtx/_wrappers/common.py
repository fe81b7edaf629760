"""What the wrappers share: the inner transformation as a pytree child, and prefix masks."""

from __future__ import annotations

from typing import Any

import jax

from .._core.chain import as_inner
from .._core.packed import Packed, flat_segments, logical_tree
from .._core.state import State
from .._core.struct import FrozenTree
from .._core.tree import TransformError, check_structure, is_none

__all__ = ["check_args", "as_inner", "thaw", "full_mask", "select", "restore", "select_extra"]


def thaw(value: Any) -> Any:
    return value.thaw() if isinstance(value, FrozenTree) else value


def full_mask(owner: str, mask: Any, tree: Any, what: str = "mask") -> Any:
    """``mask`` (a tree of values with the structure of ``tree`` or a prefix of it, or a
    function of ``tree`` returning one) broadcast to one value per leaf of ``tree``.

    On a packed tree (:func:`gradtx.pack`) the mask is read on the logical tree (the params'
    own structure, with ``jax.ShapeDtypeStruct`` leaves where they are packed) and gives one
    value per buffer: that of its leaves, which must agree (``pack(params, tx=tx)`` groups
    leaves so that they do), else the error names the leaves of the buffer.
    """
    if tree is not None and flat_segments(tree) is not None:
        return _packed_full_mask(owner, mask, tree, what)
    mask = thaw(mask)
    if callable(mask):  # thawed above: a FrozenTree is never a function
        mask = mask(tree)
    try:
        return jax.tree_util.tree_map(
            lambda m, sub: jax.tree_util.tree_map(lambda _: m, sub, is_leaf=is_none),
            mask,
            tree,
            is_leaf=is_none,
        )
    except (ValueError, TypeError) as e:
        raise TransformError(
            f"gradtx.{owner}: {what} does not match the parameter tree (it must have the "
            f"params' structure or a prefix of it): {e}"
        ) from None


def _packed_full_mask(owner: str, mask: Any, tree: Any, what: str) -> Any:
    """:func:`full_mask` of a tree holding :class:`Packed` nodes: one value per buffer."""
    logical = full_mask(owner, mask, logical_tree(tree), what)
    values = iter(jax.tree_util.tree_leaves(logical, is_leaf=is_none))
    nodes, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_packed_or_none)
    out: list[Any] = []
    mixed: list[str] = []
    for x in nodes:
        if not isinstance(x, Packed):
            out.append(next(values))
            continue
        lay = x.layout
        vals = [next(values) for _ in range(lay.num_leaves)]
        per = []
        for g in lay.groups:
            got = [vals[i] for i in g.indices]
            if any(not _same(v, got[0]) for v in got[1:]):
                shown = ", ".join(f"{lay.paths[i]}={vals[i]!r}" for i in g.indices[:4])
                mixed.append(shown + (", ..." if len(g.indices) > 4 else ""))
            per.append(got[0])
        out.append(Packed(tuple(per), tuple(vals[i] for i in lay.big), lay))
    if mixed:
        raise TransformError(
            f"gradtx.{owner}: the {what} gives different values to leaves packed into one "
            f"buffer ({'; '.join(mixed[:3])}); pack with gradtx.pack(params, tx=tx) so that "
            "pack groups the leaves by it, or keep them apart with pack(..., include=...)"
        )
    return jax.tree_util.tree_unflatten(treedef, out)


def _packed_or_none(x: Any) -> bool:
    return x is None or isinstance(x, Packed)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values without a scalar ==
        return a is b


def select(full: Any, tree: Any, keep: Any = bool) -> Any:
    """``tree`` with the leaves whose mask value fails ``keep`` replaced by ``None``."""
    if tree is None:
        return None
    return jax.tree_util.tree_map(lambda m, x: x if keep(m) else None, full, tree, is_leaf=is_none)


def restore(full: Any, new: Any, old: Any, keep: Any = bool) -> Any:
    """``new`` where the mask value passes ``keep``, ``old`` elsewhere."""
    return jax.tree_util.tree_map(
        lambda m, n, o: n if keep(m) else o, full, new, old, is_leaf=is_none
    )


def select_extra(full: Any, extra: dict[str, Any], updates: Any, keep: Any = bool) -> dict:
    """The keyword arguments of ``update`` with those shaped like ``updates`` selected as
    :func:`select` does (optax's ``mask_compatible_extra_args``)."""
    structure: Any = jax.tree_util.tree_structure(updates)
    return {
        k: select(full, v, keep) if jax.tree_util.tree_structure(v) == structure else v
        for k, v in extra.items()
    }


def check_args(owner: str, state: Any, entries: tuple[str, ...], updates: Any, params: Any) -> None:
    """Raises :class:`TransformError` naming ``owner`` if ``state`` is not a :class:`State`
    with ``entries`` or ``params`` does not have the structure of ``updates``."""
    if not isinstance(state, State) or any(e not in state for e in entries):
        raise TransformError(
            f"gradtx.{owner}: state is not this transformation's state (expected entries "
            f"{list(entries)}, got {type(state).__name__})"
        )
    if params is not None:
        check_structure(owner, "updates", updates, "params", params)
