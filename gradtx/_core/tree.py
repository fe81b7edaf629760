"""Tree helpers shared by every transformation: ``None``-aware flattening and precise errors."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "is_none",
    "flatten",
    "path_str",
    "check_structure",
    "check_float_leaves",
    "TransformError",
    "is_own_error",
    "renamed",
]


class TransformError(ValueError):
    """Raised for bad input to a transformation; the message names it and the leaf path."""


#: The exception types gradtx raises for bad input. Only these, with a message starting
#: ``gradtx.``, are gradtx's own validation errors (see :func:`is_own_error`).
_OWN_TYPES = (TypeError, ValueError, TransformError)


def is_own_error(e: BaseException) -> bool:
    """Whether ``e`` is one of gradtx's own validation errors.

    The rule: its type is exactly ``TypeError``, ``ValueError`` or :class:`TransformError`
    (not a subclass such as JAX's ``TracerBoolConversionError``) and its message starts with
    ``gradtx.``. Only such errors are re-raised with more context (the optimizer's name, a
    leaf path); every other exception passes through unchanged: same type, same object.
    """
    return type(e) in _OWN_TYPES and str(e).startswith("gradtx.")


def renamed(e: BaseException, message: str) -> BaseException:
    """A copy of gradtx's own error ``e`` (see :func:`is_own_error`) with a new message."""
    assert is_own_error(e), e
    return type(e)(message)


def is_none(x: Any) -> bool:
    return x is None


def flatten(tree: Any) -> tuple[list[tuple[Any, Any]], Any]:
    """Flattens with paths, keeping ``None`` as a leaf (a parameter that is filtered out)."""
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)


def path_str(path: Any) -> str:
    return jax.tree_util.keystr(tuple(path)) or "<root>"


def _describe_mismatch(ref: Any, other: Any) -> str:
    ref_paths = {path_str(p) for p, _ in flatten(ref)[0]}
    other_paths = {path_str(p) for p, _ in flatten(other)[0]}
    missing = sorted(ref_paths - other_paths)
    extra = sorted(other_paths - ref_paths)
    if missing or extra:
        bits = []
        if missing:
            bits.append(f"missing {', '.join(missing[:3])}")
        if extra:
            bits.append(f"unexpected {', '.join(extra[:3])}")
        return "; ".join(bits)
    return "same leaf paths but different container types"


def check_structure(owner: str, ref_label: str, ref: Any, other_label: str, other: Any) -> None:
    """Raises :class:`TransformError` if two trees differ in structure or leaf shapes."""
    ref_leaves, ref_def = flatten(ref)
    other_leaves, other_def = flatten(other)
    if ref_def != other_def:
        raise TransformError(
            f"gradtx.{owner}: {other_label} does not match the structure of {ref_label}: "
            f"{_describe_mismatch(ref, other)}"
        )
    for (path, a), (_, b) in zip(ref_leaves, other_leaves):
        if (a is None) != (b is None):
            raise TransformError(
                f"gradtx.{owner}: at {path_str(path)}, {ref_label} is "
                f"{'None' if a is None else 'an array'} but {other_label} is "
                f"{'None' if b is None else 'an array'}"
            )
        if a is not None and jnp.shape(a) != jnp.shape(b):
            raise TransformError(
                f"gradtx.{owner}: at {path_str(path)}, {other_label} has shape {jnp.shape(b)} "
                f"but {ref_label} has shape {jnp.shape(a)}"
            )


def check_float_leaves(owner: str, label: str, tree: Any) -> None:
    """Raises :class:`TypeError` naming the first leaf of ``tree`` that is not floating point.

    Real and complex floating-point leaves (complex64, complex128) are accepted, as in optax;
    integer and boolean leaves are not.
    """
    for path, leaf in flatten(tree)[0]:
        if leaf is None:
            continue
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            raise TypeError(
                f"gradtx.{owner}: {label} leaf at {path_str(path)} is {type(leaf).__name__}, "
                "not an array"
            )
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"gradtx.{owner}: {label} leaf at {path_str(path)} has dtype {dtype}; "
                "optimizers need floating-point (real or complex) leaves (leave integer or "
                "boolean leaves out of the optimized tree, or set them to None)"
            )
