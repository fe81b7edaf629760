"""Checks of the interface: odd parameter trees, wrong trees, and extra ``update`` arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from .._core.tree import flatten
from ._common import (
    assert_close,
    describe_difference,
    error_names,
    guard,
    jitted,
    make_grads,
    names_in,
    new_report,
    required_extras,
    standard_promotion,
    stepper,
)
from ._report import CheckReport

__all__ = [
    "check_structure",
    "check_extra_args",
    "check_declared_extras",
    "structure_zoo",
    "KitPair",
]


class KitPair(NamedTuple):
    """A named tuple node for :func:`structure_zoo`."""

    first: Any
    second: Any


def structure_zoo(dtype: Any = jnp.float32) -> dict[str, Any]:
    """A parameter tree with every awkward node: ``None`` leaves, empty dict/list/tuple, a 0-d
    leaf, and dicts, lists, tuples and a named tuple nested in each other."""

    def a(*shape: int) -> Any:
        n = int(np.prod(shape))
        return jnp.asarray(np.linspace(0.5, 1.5, n).reshape(shape).astype(np.dtype(dtype)))

    return {
        "kit_dense": {"kernel": a(3, 2), "bias": a(2)},
        "kit_none": None,
        "kit_empty_dict": {},
        "kit_empty_list": [],
        "kit_empty_tuple": (),
        "kit_scalar": a(),
        "kit_nested": [(a(2, 2), None), KitPair(a(2), {"z": a(1), "n": None})],
    }


def _one_tree(report: CheckReport, tx: Any, step: Any, label: str, params: Any) -> None:
    grads = make_grads(params)
    with guard(report, "structure", f"init on {label}"):
        state0 = tx.init(params)
    with guard(report, "structure", f"update on {label}"):
        updates, state1 = step(tx, grads, state0, params)
        _, state2 = step(tx, grads, state1, params)
    why = describe_difference(grads, updates, "the gradients", "the updates")
    if why:
        raise report.fail("structure", f"on {label}: {why}")
    for n, s in (("one update", state1), ("two updates", state2)):
        why = describe_difference(state0, s, "the state from init", f"the state after {n}")
        if why:
            raise report.fail("structure", f"on {label}: {why}")


def _must_raise(
    report: CheckReport, tx: Any, step: Any, label: str, params: Any, grads: Any, key: str
) -> None:
    state = tx.init(params)
    try:
        step(tx, grads, state, params)
    except Exception as e:  # noqa: BLE001  (any exception is acceptable if its message is clear)
        absent = names_in(str(e), error_names(tx, report), key)
        if absent:
            raise report.fail(
                "structure.errors",
                f"update with {label} raised {type(e).__name__}, but its message does not name "
                f"{absent}: {str(e)[:300]!r}",
            ) from e
        return
    raise report.fail("structure.errors", f"update with {label} did not raise")


@standard_promotion
def check_structure(
    tx: Any,
    params: Any = None,
    *,
    zoo: bool = True,
    extra_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    strict: bool = False,
    report: CheckReport | None = None,
) -> CheckReport:
    """Any parameter tree works, and a gradient tree that does not match is a clear error.

    ``structure`` (required): on ``params`` and (with ``zoo``) on :func:`structure_zoo` (in the
    dtype of the first leaf of ``params``), ``init`` and two updates run; the updates have the
    gradients' structure with ``None`` leaves kept as ``None``, shapes and dtypes; the state
    keeps its structure.

    ``structure.errors`` (advisory, with ``zoo``): gradients with an extra key and with a key
    missing must raise an error whose message names the transformation and the key.
    """
    report = new_report(tx, report, name, strict)
    step = stepper(tx, dict(extra_args or {}))
    jstep = jitted(step, tx)  # one compilation per tree, not one per operation
    leaves = [x for _, x in flatten(params)[0] if x is not None]
    trees = [] if params is None else [("the given params", params)]
    if zoo:
        trees.append(("the structure zoo", structure_zoo(leaves[0].dtype if leaves else "float32")))
    for label, tree in trees:
        _one_tree(report, tx, jstep, label, tree)
    report.ok("structure", ", ".join(label for label, _ in trees) + " ran and kept their structure")
    if zoo:
        tree = trees[-1][1]
        grads = make_grads(tree)
        more = dict(grads, kit_unexpected=jnp.ones(2, tree["kit_scalar"].dtype))
        fewer = {k: v for k, v in grads.items() if k != "kit_scalar"}
        with report.advisory():
            _must_raise(
                report, tx, step, "an unexpected gradient key", tree, more, "kit_unexpected"
            )
            _must_raise(report, tx, step, "a gradient key missing", tree, fewer, "kit_scalar")
            report.ok(
                "structure.errors", "wrong gradient trees raise naming the transformation, key"
            )
    else:
        report.skip("structure.errors", "zoo=False: no tree with known keys to break")
    return report


def check_declared_extras(
    tx: Any, extra_args: Mapping[str, Any] | None, report: CheckReport
) -> tuple[str, ...]:
    """``extra_args.declared`` (required, a precondition of every check): the ``update``
    arguments ``tx`` declares as required (its ``requires``, and its stages' for a chain) are
    given in ``extra_args``. Returns them."""
    required = required_extras(tx)
    missing = [r for r in required if r not in (extra_args or {})]
    if missing:
        raise report.fail(
            "extra_args.declared",
            f"the transformation requires update argument(s) {', '.join(missing)}; pass "
            f"values with extra_args={{{', '.join(repr(m) + ': ...' for m in missing)}}}",
        )
    given = f"{', '.join(required)} given" if required else "the transformation declares none"
    report.ok("extra_args.declared", given)
    return required


@standard_promotion
def check_extra_args(
    tx: Any,
    params: Any,
    *,
    extra_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    strict: bool = False,
    report: CheckReport | None = None,
) -> CheckReport:
    """Unknown ``update`` keyword arguments are ignored; declared required ones are enforced.

    ``extra_args.declared`` (required): the arguments ``tx`` declares as required (its
    ``requires``, and its stages' for a chain) must be given in ``extra_args``.

    ``extra_args`` (advisory): an update with two unknown keyword arguments added must return
    exactly what it returns without them (optax's ``GradientTransformationExtraArgs``
    protocol; a plain ``update(updates, state, params=None)`` misses it), and an update
    without a required argument must raise an error naming the transformation and the
    argument.
    """
    report = new_report(tx, report, name, strict)
    extra = dict(extra_args or {})
    required = check_declared_extras(tx, extra, report)
    with report.advisory():
        _extra_args(tx, params, extra, required, report)
    return report


def _extra_args(
    tx: Any, params: Any, extra: dict[str, Any], required: tuple[str, ...], report: CheckReport
) -> None:
    grads = make_grads(params)
    step = stepper(tx, extra)
    noisy = stepper(tx, dict(extra, kit_unknown_value=jnp.ones([], jnp.float32), kit_flag="x"))
    with guard(report, "extra_args", "init"):
        state = tx.init(params)
    with guard(report, "extra_args", "update with the declared extra arguments"):
        expected = step(tx, grads, state, params)
    with guard(report, "extra_args", "update with unknown keyword arguments added"):
        got = noisy(tx, grads, state, params)
    what = "unknown keyword arguments changed the result"
    assert_close(report, "extra_args", what, expected, got, 0, 0)
    for r in required:
        without = stepper(tx, {k: v for k, v in extra.items() if k != r})
        try:
            without(tx, grads, state, params)
        except Exception as e:  # noqa: BLE001
            absent = names_in(str(e), error_names(tx, report), r)
            if absent:
                raise report.fail(
                    "extra_args",
                    f"update without the required argument {r!r} raised {type(e).__name__} "
                    f"whose message does not name {absent}: {str(e)[:300]!r}",
                ) from e
            continue
        raise report.fail("extra_args", f"update without the required argument {r!r} did not raise")
    detail = "unknown keyword arguments ignored"
    if required:
        detail += f"; required {', '.join(required)} enforced"
    report.ok("extra_args", detail)
