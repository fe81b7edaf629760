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
``TrainState.tx``, ``nnx.Optimizer``) does not cause a retrace when it is rebuilt *equal*; a
different value (a new learning rate) there is a new program, as with optax.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, ClassVar

try:  # Python >= 3.11
    from typing import dataclass_transform
except ImportError:  # pragma: no cover - Python 3.10
    from typing_extensions import dataclass_transform

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Struct", "hyper", "static", "hyper_fields", "resolve", "is_schedule_like"]

# Checks a hyperparameter given as a concrete number must pass: name -> (predicate on a float64
# NumPy array, description, whether +inf is allowed, whether the value is checked as float32).
_CHECKS: dict[str, tuple[Any, str, bool, bool]] = {
    "positive": (lambda v: v > 0, "must be > 0", False, False),
    "nonnegative": (lambda v: v >= 0, "must be >= 0", False, False),
    "positive_or_inf": (lambda v: v > 0, "must be > 0 (inf allowed)", True, False),
    "nonnegative_or_inf": (lambda v: v >= 0, "must be >= 0 (inf allowed)", True, False),
    "step_size": (lambda v: v >= 0, "must be finite and >= 0", False, False),
    # a decay rate of an EMA: checked after rounding to float32 (1 - 1e-9 is 1.0 there)
    "unit": (lambda v: (v >= 0) & (v < 1), "must be in [0, 1)", False, True),
    "unit_closed": (lambda v: (v >= 0) & (v <= 1), "must be in [0, 1]", False, True),
    "any": (lambda v: np.ones_like(v, dtype=bool), "", False, False),
}


def hyper(default: Any = dataclasses.MISSING, check: str = "any") -> Any:
    """A numeric hyperparameter field: a pytree leaf (or a schedule) validated on construction.

    The rule, applied by :meth:`Struct._check_hyper` to the value given:

    - a concrete number (Python ``int``/``float``, NumPy or concrete JAX scalar or array of a
      real integer or floating dtype) must be finite (unless ``check`` ends in ``_or_inf``,
      which allows ``+inf``), not NaN, and pass ``check``; ``"unit"``/``"unit_closed"`` (decay
      rates) are checked after rounding to float32, the dtype the update runs in. Scalars are
      stored as Python floats.
    - ``bool``, complex numbers, strings and other objects are rejected (``TypeError``).
    - ``None`` is rejected unless the field's default is ``None`` or its annotation admits
      ``None`` (there ``None`` means "off").
    - a schedule (any callable) is evaluated abstractly at an int32 step
      (``jax.eval_shape``): its output must be a real integer or floating value, a scalar unless
      the schedule itself holds arrays. A schedule that cannot be traced (Python control flow on
      the step) is not checked.
    - a tracer (a hyperparameter under ``jit``/``vmap``/``grad``) is never checked.
    """
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
    """``CamelCase`` to ``snake_case``, an acronym counting as one word.

    A ``_`` goes before an upper-case letter that follows a lower-case letter or digit, and
    before the last capital of a run of capitals followed by a lower-case letter:
    ``AdamScale`` -> ``adam_scale``, ``RMSPropScale`` -> ``rms_prop_scale``,
    ``LARSTrust`` -> ``lars_trust``, ``SGD`` -> ``sgd``.
    """
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def is_schedule_like(value: Any) -> bool:
    """True for a value that is evaluated at the step count: a schedule or any callable."""
    return callable(value) and not isinstance(value, type)


def _concrete_bool(x: Any) -> Any:
    """A concrete scalar boolean (Python, NumPy or JAX) as a Python ``bool``; else ``x``."""
    if isinstance(x, (np.bool_, np.ndarray)) or (
        isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
    ):
        if np.ndim(x) == 0 and np.asarray(x).dtype == np.bool_:
            return bool(x)
    return x


def _freeze(value: Any) -> Any:
    """Turns unhashable static data (a pytree of bools, a list) into a hashable equivalent.

    Concrete scalar booleans of NumPy or JAX (``jnp.bool_(True)``, ``x > 0`` of a 0-d array)
    become Python bools first, so a mask made of them hashes and compares by value.
    """
    value = _concrete_bool(value)
    try:
        hash(value)
        return value
    except TypeError:
        leaves, treedef = jax.tree_util.tree_flatten(value)
        return FrozenTree(treedef, tuple(_concrete_bool(x) for x in leaves))


def _admits_none(f: dataclasses.Field) -> bool:
    """Whether ``None`` is a meaningful value of a hyper field ("off")."""
    return f.default is None or "None" in str(f.type) or "Optional" in str(f.type)


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
        """Validates one hyper field's value; the rule is in :func:`hyper`'s docstring."""
        where = f"gradtx.{self.name}: {f.name}"
        if isinstance(value, jax.core.Tracer):
            return value  # jit/vmap/grad over hyperparameters: never truth-tested
        if value is None:
            if _admits_none(f):
                return None
            raise TypeError(f"{where} must be a number or a schedule, got None")
        if is_schedule_like(value):
            _check_schedule(where, value)
            return value
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{where} must be a real number, got the bool {value!r}")
        if isinstance(value, (int, float)):
            arr = np.asarray(float(value))
        elif isinstance(value, (np.ndarray, np.generic, jax.Array)):
            dtype = np.asarray(value).dtype if not isinstance(value, jax.Array) else value.dtype
            if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
                raise TypeError(f"{where} must be a real number, got an array of dtype {dtype}")
            arr = np.asarray(value, np.float64)
        else:
            raise TypeError(
                f"{where} must be a real number or a schedule, got {type(value).__name__} {value!r}"
            )
        ok, what, allow_inf, as_f32 = _CHECKS[f.metadata["check"]]
        shown = float(arr) if arr.ndim == 0 else arr
        if np.any(np.isnan(arr)) or (not allow_inf and np.any(np.isinf(arr))):
            raise ValueError(f"{where} must be a finite number, got {shown!r}")
        checked = arr.astype(np.float32).astype(np.float64) if as_f32 else arr
        if not np.all(ok(checked)):
            note = ""
            if as_f32 and np.all(ok(arr)):
                note = " after rounding to float32"
            raise ValueError(f"{where} {what}{note}, got {shown!r}")
        if arr.ndim == 0:
            return float(arr)  # a concrete scalar: keep the value, not the array
        return value

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


def _check_schedule(where: str, schedule: Any) -> None:
    """Evaluates ``schedule`` abstractly at an int32 step; its output must be a real number."""
    try:
        out = jax.eval_shape(schedule, jax.ShapeDtypeStruct((), jnp.int32))
    except (
        jax.errors.ConcretizationTypeError,  # Python control flow on the step
        jax.errors.TracerArrayConversionError,  # NumPy on the step
    ):
        return  # a schedule usable only outside jit: not checked here
    except Exception as e:
        raise TypeError(f"{where} is a schedule that fails at an int32 step: {e}") from e
    dtype = getattr(out, "dtype", None)
    if dtype is None or not (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ):
        raise TypeError(
            f"{where} is a schedule whose output is {out!r}, not a real number "
            "(a scalar of a floating or integer dtype)"
        )
    own_leaves = jax.tree_util.tree_leaves(schedule) if isinstance(schedule, Struct) else []
    if out.shape != () and all(np.ndim(x) == 0 for x in own_leaves):
        raise TypeError(f"{where} is a schedule whose output has shape {out.shape}, not a scalar")


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def _child(f: dataclasses.Field, value: Any, marked: frozenset | None) -> bool:
    """Whether a field's value is traced (a pytree child) or static (aux data).

    A value made by unflattening (``jax.tree.map`` and friends) keeps its fields' decisions in
    ``marked``, whatever its children were replaced with: ``eqx.partition`` puts ``None`` where
    a number was, and the partitioned halves must keep the original's structure.
    """
    kind = f.metadata.get("kind")
    if kind == "static":
        return False
    if marked is not None:
        return f.name in marked
    if isinstance(value, Struct):
        return True
    if isinstance(value, tuple) and value and all(isinstance(v, Struct) for v in value):
        return True  # a sequence of stages (a chain)
    if kind == "hyper":
        return value is not None and not is_schedule_like(value)
    return False  # anything else (an optax transformation, a callable) is static


def _split(obj: Struct) -> tuple[list, list, tuple]:
    keys, children, aux = [], [], []
    marked = obj.__dict__.get(_MARK)
    for f in fields(obj):
        value = getattr(obj, f.name)
        if _child(f, value, marked):
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


#: Attribute of an unflattened value naming its child fields (not a dataclass field: not
#: compared, hashed or shown).
_MARK = "_tree_children"


def _unflatten(cls: type, aux: tuple, children: Any) -> Any:
    obj: Any = object.__new__(cls)
    it = iter(children)
    for name, is_child, value in aux:
        object.__setattr__(obj, name, next(it) if is_child else value)
    object.__setattr__(obj, _MARK, frozenset(name for name, is_child, _ in aux if is_child))
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
