"""Helpers shared by the checks: names, tree signatures and their differences, sample inputs."""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from .._core.tree import _describe_mismatch, flatten, path_str
from ._report import CheckFailure, CheckReport

__all__ = [
    "tx_name",
    "signature",
    "describe_difference",
    "make_grads",
    "cast_params",
    "abstract_params",
    "required_extras",
    "vary_hyperparams",
    "has_hyperparams",
    "guard",
    "assert_close",
    "new_report",
    "error_names",
    "names_in",
    "stack_trees",
    "traceable_tx",
    "typeof",
    "enable_x64",
    "stepper",
    "standard_promotion",
    "strict_promotion",
]

F = TypeVar("F", bound=Callable[..., Any])


def tx_name(tx: Any) -> str:
    """The name a transformation goes by in its error messages (``tx.name`` for gradtx)."""
    name = getattr(tx, "name", None)
    return name if isinstance(name, str) and name else type(tx).__name__


def error_names(tx: Any, report: CheckReport) -> tuple[str, ...]:
    """Names an error about ``tx`` may use: the report's, and for a chain (an object with
    ``stages``) also those of its stages, since the stage that raised names itself."""
    names = [report.transformation]
    if report.transformation == tx_name(tx):
        todo = list(getattr(tx, "stages", ()) or ())
        while todo:
            stage = todo.pop(0)
            names.append(tx_name(stage))
            todo += list(getattr(stage, "stages", ()) or ())
    return tuple(dict.fromkeys(names))


def names_in(message: str, names: tuple[str, ...], key: str) -> str | None:
    """What ``message`` fails to name (the transformation or ``key``), or ``None``."""
    missing = []
    if not any(n in message for n in names):
        missing.append("the transformation " + (" or ".join(map(repr, names)) if names else ""))
    if key not in message:
        missing.append(repr(key))
    return " nor ".join(missing) or None


def new_report(
    tx: Any, report: CheckReport | None, name: str | None, strict: bool = False
) -> CheckReport:
    return report if report is not None else CheckReport(name or tx_name(tx), strict=strict)


# --- promotion settings -----------------------------------------------------------------------
@contextlib.contextmanager
def _promotion(dtype: str, rank: str) -> Iterator[None]:
    with jax.numpy_dtype_promotion(dtype), jax.numpy_rank_promotion(rank):
        yield


def strict_promotion() -> Any:
    """``jax_numpy_dtype_promotion="strict"`` and ``jax_numpy_rank_promotion="raise"`` for a
    block (restored afterwards): the settings of the advisory ``strict_promotion`` check."""
    return _promotion("strict", "raise")


def standard_promotion(fn: F) -> F:
    """Runs a check under JAX's default promotion (``"standard"`` dtypes, ``"allow"`` ranks),
    whatever the caller's settings, so the required tier does not depend on them."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _promotion("standard", "allow"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --- JAX version shims ------------------------------------------------------------------------
def typeof(x: Any) -> Any:
    """The abstract value (shape, dtype, weak type) of an array, tracer or Python scalar."""
    if hasattr(jax, "typeof"):
        return jax.typeof(x)
    return jax.core.get_aval(x)  # type: ignore[attr-defined]  # JAX before jax.typeof


def enable_x64() -> Any:
    """A context manager turning 64-bit types on, restoring the setting on exit."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as legacy  # type: ignore[attr-defined]  # noqa: PLC0415

    return legacy()


# --- signatures of trees ----------------------------------------------------------------------
def _leaf_sig(x: Any) -> tuple | None:
    if x is None:
        return None
    if isinstance(x, jax.ShapeDtypeStruct):
        return (tuple(x.shape), jnp.dtype(x.dtype), bool(x.weak_type))
    try:
        aval = typeof(x)
    except TypeError:
        return ("not an array", type(x).__name__)
    return (tuple(aval.shape), jnp.dtype(aval.dtype), bool(getattr(aval, "weak_type", False)))


def signature(tree: Any) -> tuple[Any, list[tuple[str, tuple | None]]]:
    """``(treedef, [(path, (shape, dtype, weak_type) or None), ...])`` with ``None`` as a leaf."""
    leaves, treedef = flatten(tree)
    return treedef, [(path_str(p), _leaf_sig(x)) for p, x in leaves]


def _fmt(sig: tuple | None) -> str:
    if sig is None:
        return "None"
    if sig[0] == "not an array":
        return f"a {sig[1]} (not an array)"
    shape, dtype, weak = sig
    return f"{'weak ' if weak else ''}{dtype.name}{list(shape)}"


def describe_difference(a: Any, b: Any, a_label: str, b_label: str) -> str | None:
    """The first difference between two trees' structure, ``None``-ness, shapes, dtypes and
    weak types, in words; ``None`` if they match."""
    ta, la = signature(a)
    tb, lb = signature(b)
    if ta != tb:
        return (
            f"the tree structure of {b_label} differs from {a_label}: "
            f"{_describe_mismatch(a, b)} ({a_label}: {_short(ta)}; {b_label}: {_short(tb)})"
        )
    for (path, sa), (_, sb) in zip(la, lb):
        if sa != sb:
            return f"at {path}, {a_label} is {_fmt(sa)} but {b_label} is {_fmt(sb)}"
    return None


def _short(treedef: Any, n: int = 240) -> str:
    s = str(treedef)
    return s if len(s) <= n else s[: n - 3] + "..."


# --- sample inputs ----------------------------------------------------------------------------
def make_grads(params: Any, seed: int = 0, scale: float = 1.0) -> Any:
    """Deterministic pseudo-random gradients shaped, typed and sharded like ``params``.

    ``None`` leaves stay ``None``; ``ShapeDtypeStruct`` leaves are returned unchanged.
    """
    leaves, treedef = flatten(params)
    out = []
    for i, (_, p) in enumerate(leaves):
        if p is None or isinstance(p, jax.ShapeDtypeStruct):
            out.append(p)
            continue
        rng = np.random.default_rng(seed * 1_000_003 + i)
        x = (scale * rng.standard_normal(np.shape(p))).astype(np.dtype(p.dtype))
        sharding = getattr(p, "sharding", None) if isinstance(p, jax.Array) else None
        out.append(jax.device_put(x, sharding) if sharding is not None else jnp.asarray(x))  # type: ignore[arg-type]
    return treedef.unflatten(out)


def cast_params(params: Any, dtype: Any) -> Any:
    """``params`` with every floating leaf cast to ``dtype`` (others and ``None`` kept)."""

    def cast(p: Any) -> Any:
        if p is None or not jnp.issubdtype(p.dtype, jnp.floating):
            return p
        return jnp.asarray(np.asarray(p).astype(np.dtype(dtype)))

    return jax.tree_util.tree_map(cast, params)


def abstract_params(params: Any) -> Any:
    """``params`` as ``jax.ShapeDtypeStruct`` leaves (``None`` kept)."""
    return jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(np.shape(p), p.dtype), params)


def stack_trees(trees: list) -> Any:
    """Stacks trees of the same structure along a new leading axis (``None`` kept)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


# --- transformations --------------------------------------------------------------------------
def required_extras(tx: Any) -> tuple[str, ...]:
    """Extra ``update`` keyword arguments ``tx`` declares as required (its ``requires``, and
    those of its stages for a chain)."""
    out: list[str] = list(getattr(tx, "requires", ()) or ())
    for stage in getattr(tx, "stages", ()) or ():
        out += required_extras(stage)
    return tuple(dict.fromkeys(out))


def _is_float_leaf(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, float):
        return True
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def has_hyperparams(tx: Any) -> bool:
    """Whether ``tx`` has numeric hyperparameters as pytree leaves."""
    return any(_is_float_leaf(x) for x in jax.tree_util.tree_leaves(tx))


def vary_hyperparams(tx: Any, factor: float = 0.5) -> Any:
    """``tx`` with every floating pytree leaf (numeric hyperparameter) multiplied by ``factor``."""
    return jax.tree_util.tree_map(lambda x: x * factor if _is_float_leaf(x) else x, tx)


# --- failures ---------------------------------------------------------------------------------
@contextlib.contextmanager
def guard(report: CheckReport, check: str, what: str) -> Iterator[None]:
    """Turns an exception raised by the transformation into a :class:`CheckFailure`."""
    try:
        yield
    except CheckFailure:
        raise
    except Exception as e:  # noqa: BLE001  (any error of the transformation is a failure)
        msg = str(e).strip().splitlines()
        first = " ".join(msg[:6]) if msg else ""
        raise report.fail(check, f"{what} raised {type(e).__name__}: {first}") from e


def assert_close(
    report: CheckReport,
    check: str,
    what: str,
    expected: Any,
    actual: Any,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> None:
    """Fails ``check`` naming the first leaf where ``actual`` differs from ``expected``."""
    diff = describe_difference(expected, actual, "expected", "actual")
    if diff is not None and "weak" not in diff:
        raise report.fail(check, f"{what}: {diff}")
    for (path, e), (_, a) in zip(flatten(expected)[0], flatten(actual)[0]):
        if e is None:
            continue
        e64 = np.asarray(e, np.float64) if _is_float_leaf(e) else np.asarray(e)
        a64 = np.asarray(a, np.float64) if _is_float_leaf(a) else np.asarray(a)
        if not np.allclose(e64, a64, rtol=rtol, atol=atol, equal_nan=True):
            err = np.max(np.abs(e64 - a64)) if e64.size else 0.0
            raise report.fail(
                check,
                f"{what}: at {path_str(path)} values differ (max abs difference {err:.3g}; "
                f"expected {_preview(e64)}, got {_preview(a64)})",
            )


def _preview(x: np.ndarray) -> str:
    flat = x.ravel()
    s = np.array2string(flat[:4], precision=5)
    return s if flat.size <= 4 else s[:-1] + " ...]"


# --- running a transformation -----------------------------------------------------------------
def traceable_tx(tx: Any) -> bool:
    """Whether ``tx`` can be passed to ``jax.jit``/``jax.vmap`` as an argument (a pytree whose
    leaves are numbers or arrays), rather than closed over as a constant."""
    try:
        leaves = jax.tree_util.tree_leaves(tx)
    except Exception:  # noqa: BLE001
        return False
    return all(isinstance(x, (int, float, np.ndarray, np.generic, jax.Array)) for x in leaves)


#: Steps and their jitted runners of the last few (transformation, extra arguments): the
#: checks of one kit run share them, so a program two checks run on the same inputs (the
#: dtypes check's float32 step and the structure check's default tree, say) compiles once.
#: The keys are object ids; the values keep those objects alive, so an id is not reused
#: while its entry exists.
_STEPS: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 8


def _remember(key: tuple, keep: tuple, make: Callable[[], Any]) -> Any:
    hit = _STEPS.get(key)
    if hit is not None:
        _STEPS.move_to_end(key)
        return hit[1]
    value = make()
    _STEPS[key] = (keep, value)
    while len(_STEPS) > _CACHE_SIZE:
        _STEPS.popitem(last=False)
    return value


def stepper(tx: Any, extra: Mapping[str, Any]) -> Callable[..., Any]:
    """``step(tx, grads, state, params) -> (updates, state)`` with the extra arguments bound
    (one function per transformation and extra arguments, shared by the checks)."""
    extra = dict(extra)

    def make() -> Callable[..., Any]:
        def step(tx: Any, grads: Any, state: Any, params: Any) -> Any:
            return tx.update(grads, state, params, **extra)

        return step

    items = tuple(sorted(extra.items(), key=lambda kv: kv[0]))
    key = ("step", id(tx), tuple((k, id(v)) for k, v in items))
    return _remember(key, (tx, items), make)


def jitted(step: Callable[..., Any], tx: Any) -> Callable[..., Any]:
    """``step`` (as :func:`stepper` makes it) jitted with ``tx`` a closed-over constant, so a
    transformation need not be hashable; called as ``step`` is, ``tx`` ignored. One runner
    per (step, transformation): ``jax.jit``'s cache then serves every check that runs the
    step on inputs of the same types."""

    def make() -> Callable[..., Any]:
        run = jax.jit(lambda g, s, p: step(tx, g, s, p))
        return lambda _tx, g, s, p: run(g, s, p)

    return _remember(("jit", id(step), id(tx)), (step, tx), make)
