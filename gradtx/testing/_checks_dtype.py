"""Checks of types: update and state dtypes, strict promotion, and init on abstract params."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core.tree import flatten, path_str
from ._common import (
    abstract_params,
    cast_params,
    describe_difference,
    enable_x64,
    guard,
    jitted,
    make_grads,
    new_report,
    standard_promotion,
    stepper,
    strict_promotion,
    typeof,
)
from ._report import CheckReport

__all__ = ["check_dtypes", "check_strict_promotion", "check_abstract_init", "DEFAULT_DTYPES"]

#: The parameter dtypes :func:`check_dtypes` tries by default.
DEFAULT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _x64(dtype: np.dtype) -> Any:
    """64-bit types enabled for the duration of a float64 run only (restored afterwards)."""
    return enable_x64() if dtype.itemsize == 8 else contextlib.nullcontext()


def _declared(tx: Any) -> dict[str, Any]:
    """The storage dtypes ``tx`` declares by slot name (``tx.declared_state_dtypes()``, e.g.
    :func:`gradtx.with_state_dtypes`), which the policy accepts even when narrower."""
    fn = getattr(tx, "declared_state_dtypes", None)
    return dict(fn()) if callable(fn) else {}


def _is_declared(path: Any, dtype: Any, declared: dict[str, Any]) -> bool:
    names = {getattr(k, "name", getattr(k, "key", None)) for k in path}
    return any(n in declared and jnp.dtype(declared[n]) == dtype for n in names if n)


def _is_key_data(path: Any, aval: Any) -> bool:
    """Raw PRNG key data (``jax.random.key_data``: uint32) in an entry named ``key``."""
    last = path[-1] if path else None
    name = getattr(last, "name", getattr(last, "key", None))
    return aval.dtype == jnp.uint32 and name == "key"


def _policy_error(state: Any, dtype: np.dtype, declared: dict | None = None) -> str | None:
    """What in ``state`` (for ``dtype`` params) breaks gradtx's state dtype policy, or None."""
    for path, x in flatten(state)[0]:
        if x is None:
            continue
        if declared and _is_declared(path, typeof(x).dtype, declared):
            continue
        aval = typeof(x)
        where = f"with {dtype.name} params, the state leaf {path_str(path)}"
        if getattr(aval, "weak_type", False):
            return f"{where} is weakly typed ({aval}); state leaves should have a fixed dtype"
        if jnp.issubdtype(aval.dtype, jnp.floating):
            if aval.dtype != dtype and aval.dtype.itemsize <= dtype.itemsize:
                return (
                    f"{where} has dtype {aval.dtype.name}; a state slot should keep the param "
                    f"dtype ({dtype.name}) or be wider"
                )
        elif _is_key_data(path, aval):
            continue
        elif jnp.issubdtype(aval.dtype, jnp.integer):
            if aval.dtype != jnp.int32:
                return f"{where} has dtype {aval.dtype.name}; step counters should be int32"
        elif not (aval.dtype == jnp.bool_ and aval.ndim == 0):  # a scalar flag is fine
            return (
                f"{where} has dtype {aval.dtype.name}; expected a floating slot, an int32 count "
                "or a scalar bool flag"
            )
    return None


def _nonfinite(tree: Any) -> str | None:
    for path, x in flatten(tree)[0]:
        if x is not None and jnp.issubdtype(x.dtype, jnp.inexact):
            if not bool(np.all(np.isfinite(np.asarray(x, np.float64)))):
                return path_str(path)
    return None


def _update_dtype_error(updates: Any, params: Any, i: int) -> str | None:
    for (path, u), (_, pl) in zip(flatten(updates)[0], flatten(params)[0]):
        if (u is None) != (pl is None):
            return (
                f"at {path_str(path)}, the update is {type(u).__name__} for a "
                f"{type(pl).__name__} param ({'None' if pl is None else 'an array'})"
            )
        if u is None:
            continue
        aval = typeof(u)
        if aval.dtype != pl.dtype or getattr(aval, "weak_type", False):
            return (
                f"update {i} at {path_str(path)} is {aval} for a {pl.dtype.name} "
                "param; updates must come back in the param dtype"
            )
    return None


@standard_promotion
def check_dtypes(
    tx: Any,
    params: Any,
    *,
    dtypes: Sequence[Any] = DEFAULT_DTYPES,
    steps: int = 2,
    finite: bool = True,
    extra_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    strict: bool = False,
    report: CheckReport | None = None,
) -> CheckReport:
    """Updates come back in the param dtype and the state keeps its dtypes.

    For each dtype (float64 with 64-bit types enabled only for that run), the floating leaves of
    ``params`` are cast to it and ``steps`` updates are made: eagerly for 16-bit dtypes (so no
    excess precision of a compiled program hides an overflow), jitted for wider ones.

    - ``dtypes.<dtype>`` (required): every update leaf has the param dtype and is not weakly
      typed; the state after each update has the structure, shapes, dtypes and weak types of
      the state from ``init``.
    - ``dtypes.policy`` (advisory): every floating state leaf has the param dtype or a wider
      one (more bytes: float32 moments for bfloat16 params are fine, float16 ones for float32
      params are not) unless the transformation declares that slot's storage dtype
      (``declared_state_dtypes()``, as ``gradtx.with_state_dtypes`` does), every integer one (a step
      counter) is int32 or uint32 PRNG key data in an entry named ``key``, every bool one is
      a scalar flag, none is weakly typed.
    - ``dtypes.finite`` (advisory, with ``finite``): finite gradients give finite updates and
      state.

    An advisory miss names the dtype; it is recorded once, for the first dtype that misses.
    """
    report = new_report(tx, report, name, strict)
    step = stepper(tx, dict(extra_args or {}))
    declared = _declared(tx)
    done = []
    for dt in dtypes:
        dt = jnp.dtype(dt)
        check = f"dtypes.{dt.name}"
        # 16-bit params run eagerly: jitted, XLA may keep their intermediates in float32
        # (excess precision) and hide an overflow; wider ones jitted (one compilation).
        run = step if dt.itemsize < 4 else jitted(step, tx)
        with _x64(dt):
            p = cast_params(params, dt)
            g = make_grads(p)
            with guard(report, check, f"init with {dt.name} params"):
                state0 = state = tx.init(p)
            trees = [("the state from init", state0)]
            for i in range(1, steps + 1):
                with guard(report, check, f"update {i} with {dt.name} params"):
                    updates, state = run(tx, g, state, p)
                why = _update_dtype_error(updates, p, i)
                if why:
                    raise report.fail(check, why)
                why = describe_difference(
                    state0, state, "the state from init", f"the state after update {i}"
                )
                if why:
                    raise report.fail(check, f"with {dt.name} params, {why}")
                trees += [(f"update {i}", updates), (f"the state after update {i}", state)]
            if "dtypes.policy" not in report.misses:
                with report.advisory():
                    why = _policy_error(state0, dt, declared)
                    if why:
                        raise report.fail("dtypes.policy", why)
            if finite and "dtypes.finite" not in report.misses:
                with report.advisory():
                    for label, tree in trees:
                        bad = _nonfinite(tree)
                        if bad:
                            raise report.fail(
                                "dtypes.finite",
                                f"finite {dt.name} gradients gave a non-finite value in "
                                f"{label} at {bad}",
                            )
        report.ok(check, f"{steps} updates: updates in {dt.name}, state dtypes kept")
        done.append(dt.name)
    if "dtypes.policy" not in report.misses:
        report.ok("dtypes.policy", "state slots in the param dtype or wider, count int32")
    if not finite:
        report.skip("dtypes.finite", "finite=False")
    elif "dtypes.finite" not in report.misses:
        report.ok("dtypes.finite", "finite gradients gave finite updates and state")
    report.ok("dtypes", ", ".join(done))
    return report


@standard_promotion
def check_strict_promotion(
    tx: Any,
    params: Any,
    *,
    dtypes: Sequence[Any] = DEFAULT_DTYPES,
    extra_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    strict: bool = False,
    report: CheckReport | None = None,
) -> CheckReport:
    """``init`` and ``update`` trace under strict promotion (advisory).

    ``strict_promotion``: for params in each of ``dtypes``, ``jax.eval_shape`` of ``init`` and
    of an ``update`` must not raise with ``jax_numpy_dtype_promotion="strict"`` and
    ``jax_numpy_rank_promotion="raise"`` (set for the check only). A miss means the
    transformation mixes dtypes (e.g. a float32 constant with bfloat16 gradients) or ranks
    implicitly; gradtx's own test suite runs with these settings.
    """
    report = new_report(tx, report, name, strict)
    step = stepper(tx, dict(extra_args or {}))
    with report.advisory():
        for dt in dtypes:
            dt = jnp.dtype(dt)
            with _x64(dt), strict_promotion():
                p = abstract_params(cast_params(params, dt))
                what = f"tracing init and update with {dt.name} params under strict promotion"
                with guard(report, "strict_promotion", what):
                    s = jax.eval_shape(tx.init, p)
                    jax.eval_shape(lambda g, s, p: step(tx, g, s, p), p, s, p)
        names = ", ".join(jnp.dtype(d).name for d in dtypes)
        report.ok("strict_promotion", f"init and update trace with {names} params")
    return report


@standard_promotion
def check_abstract_init(
    tx: Any,
    params: Any,
    *,
    extra_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    strict: bool = False,
    report: CheckReport | None = None,
) -> CheckReport:
    """``init`` (and ``update``) work on ``jax.ShapeDtypeStruct`` leaves under ``jax.eval_shape``
    (required).

    The abstract state must have the structure, shapes and dtypes of the concrete one, and an
    abstract update must return it unchanged.
    """
    report = new_report(tx, report, name, strict)
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
