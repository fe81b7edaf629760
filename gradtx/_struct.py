"""Frozen-dataclass pytrees: the value type behind every gradtx transformation and schedule.

A subclass of :class:`Struct` is turned into a frozen dataclass and registered as a JAX pytree
when it is defined. Its fields come in three kinds, chosen with the helpers below:

- :func:`hyper` -- a numeric hyperparameter (a float, or a schedule of the step). Numbers are
  pytree *leaves*, so a transformation passed through ``jax.jit`` as an argument can change its
  learning rate without recompiling, and ``jax.vmap`` can sweep over it. A schedule that is a
  :class:`Struct` is a subtree; any other callable is static data.
- :func:`static` -- configuration that shapes the computation (booleans, integer step counts,
  masks, names). Static data is hashed and compared, never traced.
- a plain field holding another :class:`Struct` (a knob inside an optimizer) -- a subtree.

Equal configurations compare and hash equal, so a transformation held as static data (flax's
``TrainState.tx``) never causes a retrace when it is rebuilt.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, ClassVar

try:  # Python >= 3.11
    from typing import dataclass_transform
except ImportError:  # pragma: no cover - Python 3.10
    from typing_extensions import dataclass_transform

import jax
import numpy as np

__all__ = ["Struct", "hyper", "static", "hyper_fields", "resolve", "is_schedule_like"]

# Checks a hyperparameter given as a Python number must pass: (predicate, description).
_CHECKS = {
    "positive": (lambda v: v > 0, "must be > 0"),
    "nonnegative": (lambda v: v >= 0, "must be >= 0"),
    "step_size": (lambda v: 0 <= v < math.inf, "must be finite and >= 0"),
    "unit": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "unit_closed": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "any": (lambda v: True, ""),
}


def hyper(default: Any = dataclasses.MISSING, check: str = "any") -> Any:
    """A numeric hyperparameter field: a pytree leaf (or a schedule) validated on construction."""
    if check not in _CHECKS:
        raise ValueError(f"unknown check {check!r}")
    return dataclasses.field(default=default, metadata={"kind": "hyper", "check": check})


def static(default: Any = dataclasses.MISSING) -> Any:
    """A static configuration field: hashed and compared, never traced."""
    return dataclasses.field(default=default, metadata={"kind": "static"})


def fields(obj: Any) -> tuple[dataclasses.Field, ...]:
    """``dataclasses.fields`` of a :class:`Struct` (a dataclass made in ``__init_subclass__``)."""
    return dataclasses.fields(obj)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def is_schedule_like(value: Any) -> bool:
    """True for a value that is evaluated at the step count: a schedule or any callable."""
    return callable(value) and not isinstance(value, type)


def _is_concrete_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        return True
    return False


def _freeze(value: Any) -> Any:
    """Turns unhashable static data (a pytree of bools, a list) into a hashable equivalent."""
    try:
        hash(value)
        return value
    except TypeError:
        leaves, treedef = jax.tree_util.tree_flatten(value)
        return FrozenTree(treedef, tuple(leaves))


@dataclasses.dataclass(frozen=True)
class FrozenTree:
    """A hashable snapshot of a small static pytree (e.g. a weight-decay mask of bools)."""

    treedef: Any
    leaves: tuple

    def thaw(self) -> Any:
        return jax.tree_util.tree_unflatten(self.treedef, list(self.leaves))


@dataclass_transform(frozen_default=True, eq_default=True, field_specifiers=(dataclasses.field,))
class Struct:
    """Base of gradtx values: subclasses become frozen dataclasses registered as pytrees."""

    #: Public name used in error messages and chain-state keys; defaults to the snake-cased class.
    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ or not cls.__dict__["name"]:
            cls.name = _snake(cls.__name__)
        dataclasses.dataclass(frozen=True, eq=True, repr=False)(cls)
        jax.tree_util.register_pytree_with_keys(
            cls, _flatten_with_keys, functools.partial(_unflatten, cls), _flatten
        )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = f.metadata.get("kind")
            if kind == "hyper":
                value = self._check_hyper(f, value)
            elif kind == "static":
                value = _freeze(value)
            object.__setattr__(self, f.name, value)

    def _check_hyper(self, f: dataclasses.Field, value: Any) -> Any:
        if value is None or is_schedule_like(value):
            return value
        if _is_concrete_number(value):
            value = float(value)
            ok, what = _CHECKS[f.metadata["check"]]
            if math.isnan(value) or not ok(value):
                raise ValueError(
                    f"gradtx.{self.name}: {f.name} {what or 'must not be NaN'}, got {value!r}"
                )
            return value
        if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
            if value.ndim == 0:  # a concrete jax scalar: keep the value, not the array
                return self._check_hyper(f, float(value))
        return value  # a tracer (jit/vmap/grad over hyperparameters): checked by nobody

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            hidden = f.metadata.get("kind") != "hyper" or value is None
            if hidden and f.default is not dataclasses.MISSING and _same(value, f.default):
                continue
            if isinstance(value, FrozenTree):
                value = value.thaw()
            parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (validated like a new construction)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def _child(f: dataclasses.Field, value: Any) -> bool:
    """Whether a field's value is traced (a pytree child) or static (aux data)."""
    kind = f.metadata.get("kind")
    if kind == "static":
        return False
    if isinstance(value, Struct):
        return True
    if isinstance(value, tuple) and value and all(isinstance(v, Struct) for v in value):
        return True  # a sequence of stages (a chain)
    if kind == "hyper":
        return value is not None and not is_schedule_like(value)
    return False  # anything else (an optax transformation, a callable) is static


def _split(obj: Struct) -> tuple[list, list, tuple]:
    keys, children, aux = [], [], []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if _child(f, value):
            keys.append(jax.tree_util.GetAttrKey(f.name))
            children.append(value)
            aux.append((f.name, True, None))
        else:
            aux.append((f.name, False, value))
    return keys, children, tuple(aux)


def _flatten(obj: Struct) -> tuple[list, tuple]:
    _, children, aux = _split(obj)
    return children, aux


def _flatten_with_keys(obj: Struct) -> tuple[list, tuple]:
    keys, children, aux = _split(obj)
    return list(zip(keys, children)), aux


def _unflatten(cls: type, aux: tuple, children: Any) -> Any:
    obj: Any = object.__new__(cls)
    it = iter(children)
    for name, is_child, value in aux:
        object.__setattr__(obj, name, next(it) if is_child else value)
    return obj


def hyper_fields(obj: Struct) -> list[str]:
    """Names of the numeric hyperparameter fields of ``obj``."""
    return [f.name for f in fields(obj) if f.metadata.get("kind") == "hyper"]


def has_schedule(obj: Any) -> bool:
    """Whether any hyperparameter of ``obj`` (or of a nested knob) is a function of the step."""
    if not isinstance(obj, Struct):
        return False
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("kind") == "hyper" and is_schedule_like(value):
            return True
        if f.metadata.get("kind") != "static" and isinstance(value, Struct) and has_schedule(value):
            return True
    return False


def resolve(obj: Any, step: Any) -> Any:
    """A copy of ``obj`` whose scheduled hyperparameters are evaluated at ``step``.

    Nested knobs are resolved too. Nothing is validated or copied when nothing is scheduled.
    """
    if not isinstance(obj, Struct) or not has_schedule(obj):
        return obj
    new = object.__new__(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = f.metadata.get("kind")
        if kind == "hyper" and is_schedule_like(value):
            value = value(step)
        elif kind != "static" and isinstance(value, Struct):
            value = resolve(value, step)
        object.__setattr__(new, f.name, value)
    return new
