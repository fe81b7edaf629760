"""Checks of types: updates and state in the documented dtypes, and init on abstract params."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._tree import flatten, path_str
from ._common import (
    abstract_params,
    cast_params,
    describe_difference,
    enable_x64,
    guard,
    make_grads,
    new_report,
    stepper,
    typeof,
)
from ._report import CheckReport

__all__ = ["check_dtypes", "check_abstract_init", "DEFAULT_DTYPES"]

#: The parameter dtypes :func:`check_dtypes` tries by default.
DEFAULT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _x64(dtype: np.dtype) -> Any:
    """64-bit types enabled for the duration of a float64 run only (restored afterwards)."""
    return enable_x64() if dtype.itemsize == 8 else contextlib.nullcontext()


def _state_dtype_error(state: Any, dtype: np.dtype, label: str) -> str | None:
    for path, x in flatten(state)[0]:
        if x is None:
            continue
        aval = typeof(x)
        where = f"{label} leaf {path_str(path)}"
        if getattr(aval, "weak_type", False):
            return f"{where} is weakly typed ({aval}); state leaves must have a fixed dtype"
        if jnp.issubdtype(aval.dtype, jnp.floating):
            if aval.dtype != dtype:
                return (
                    f"{where} has dtype {aval.dtype.name} with {dtype.name} params; the "
                    f"contract is that state slots keep the param dtype ({dtype.name})"
                )
        elif jnp.issubdtype(aval.dtype, jnp.integer):
            if aval.dtype != jnp.int32:
                return f"{where} has dtype {aval.dtype.name}; step counters are int32"
        else:
            return f"{where} has dtype {aval.dtype.name}; expected a float slot or int32 count"
    return None


def _nonfinite(tree: Any) -> str | None:
    for path, x in flatten(tree)[0]:
        if x is not None and jnp.issubdtype(x.dtype, jnp.inexact):
            if not bool(np.all(np.isfinite(np.asarray(x, np.float64)))):
                return path_str(path)
    return None


def check_dtypes(
    tx: Any,
    params: Any,
    *,
    dtypes: Sequence[Any] = DEFAULT_DTYPES,
    steps: int = 2,
    finite: bool = True,
    extra_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    report: CheckReport | None = None,
) -> CheckReport:
    """Updates come back in the param dtype and the state in its documented dtype.

    For each dtype (float64 with 64-bit types enabled only for that run), the floating leaves of
    ``params`` are cast to it and ``steps`` updates are made. Every update leaf must have the
    param dtype (and not be weakly typed); every floating state leaf must have the param dtype
    and every integer one (a step counter) must be int32, none weakly typed. With ``finite``,
    finite gradients must give finite updates and state.
    """
    report = new_report(tx, report, name)
    step = stepper(tx, dict(extra_args or {}))
    done = []
    for dt in dtypes:
        dt = jnp.dtype(dt)
        check = f"dtypes.{dt.name}"
        with _x64(dt):
            p = cast_params(params, dt)
            g = make_grads(p)
            with guard(report, check, f"init with {dt.name} params"):
                state = tx.init(p)
            why = _state_dtype_error(state, dt, "the state from init:")
            if why:
                raise report.fail(check, why)
            for i in range(1, steps + 1):
                with guard(report, check, f"update {i} with {dt.name} params"):
                    updates, state = step(tx, g, state, p)
                for (path, u), (_, pl) in zip(flatten(updates)[0], flatten(p)[0]):
                    if (u is None) != (pl is None):
                        raise report.fail(
                            check,
                            f"at {path_str(path)}, the update is {type(u).__name__} for a "
                            f"{type(pl).__name__} param ({'None' if pl is None else 'an array'})",
                        )
                    if u is None:
                        continue
                    aval = typeof(u)
                    if aval.dtype != pl.dtype or getattr(aval, "weak_type", False):
                        raise report.fail(
                            check,
                            f"update {i} at {path_str(path)} is {aval} for a {pl.dtype.name} "
                            "param; updates must come back in the param dtype",
                        )
                why = _state_dtype_error(state, dt, f"the state after update {i}:")
                if why:
                    raise report.fail(check, why)
                if finite:
                    for label, tree in (("update", updates), ("state", state)):
                        bad = _nonfinite(tree)
                        if bad:
                            raise report.fail(
                                check,
                                f"finite {dt.name} gradients gave a non-finite {label} at "
                                f"{bad} after update {i}",
                            )
        report.ok(check, f"{steps} updates: updates {dt.name}, state slots {dt.name}, count int32")
        done.append(dt.name)
    report.ok("dtypes", ", ".join(done))
    return report


def check_abstract_init(
    tx: Any,
    params: Any,
    *,
    extra_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    report: CheckReport | None = None,
) -> CheckReport:
    """``init`` (and ``update``) work on ``jax.ShapeDtypeStruct`` leaves under ``jax.eval_shape``.

    The abstract state must have the structure, shapes and dtypes of the concrete one, and an
    abstract update must return it unchanged.
    """
    report = new_report(tx, report, name)
    step = stepper(tx, dict(extra_args or {}))
    aparams = abstract_params(params)
    with guard(report, "abstract_init", "jax.eval_shape(tx.init, <ShapeDtypeStruct params>)"):
        astate = jax.eval_shape(tx.init, aparams)
    with guard(report, "abstract_init", "init on concrete params"):
        state = tx.init(params)
    why = describe_difference(state, astate, "init on arrays", "init on ShapeDtypeStruct leaves")
    if why:
        raise report.fail("abstract_init", why)
    with guard(report, "abstract_init", "jax.eval_shape of update on the abstract state"):
        aupdates, astate1 = jax.eval_shape(
            lambda g, s, p: step(tx, g, s, p), aparams, astate, aparams
        )
    why = describe_difference(astate, astate1, "the abstract state", "the abstract update's state")
    if why:
        raise report.fail("abstract_init", why)
    why = describe_difference(aparams, aupdates, "the abstract params", "the abstract updates")
    if why:
        raise report.fail("abstract_init", why)
    report.ok("abstract_init", "init and update under jax.eval_shape match concrete shapes")
    return report
