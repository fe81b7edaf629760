"""Checks of compilation: ``jax.jit`` without retracing, and a state whose type never changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from jax import lax

from ._common import (
    assert_close,
    describe_difference,
    guard,
    has_hyperparams,
    make_grads,
    new_report,
    stack_trees,
    standard_promotion,
    stepper,
    traceable_tx,
    vary_hyperparams,
)
from ._report import CheckFailure, CheckReport

__all__ = ["check_jit", "check_stability"]


def _jitted(tx: Any, as_arg: bool, step: Any, traces: dict[str, int]) -> tuple[Any, Any]:
    """``(jinit(tx, params), jstep(tx, grads, state, params))`` counting traces in ``traces``;
    with ``as_arg`` the transformation is a jit argument, else a closed-over constant."""

    def init_fn(tx: Any, params: Any) -> Any:
        traces["init"] += 1
        return tx.init(params)

    def step_fn(tx: Any, grads: Any, state: Any, params: Any) -> Any:
        traces["update"] += 1
        return step(tx, grads, state, params)

    if as_arg:
        return jax.jit(init_fn), jax.jit(step_fn)
    jinit_c = jax.jit(lambda p: init_fn(tx, p))
    jstep_c = jax.jit(lambda g, s, p: step_fn(tx, g, s, p))
    return (lambda _, p: jinit_c(p)), (lambda _, g, s, p: jstep_c(g, s, p))


@standard_promotion
def check_jit(
    tx: Any,
    params: Any,
    *,
    extra_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    strict: bool = False,
    report: CheckReport | None = None,
) -> CheckReport:
    """``init`` and ``update`` run under ``jax.jit`` and are traced once.

    ``jit`` (required): runs ``jax.jit(init)`` twice and three jitted update steps, counting
    traces: the second and third steps (which get the state the previous step returned) must
    not retrace, and the jitted results must match an eager run (rtol 1e-4).

    ``jit.hyperparameters`` (advisory): a transformation that is a pytree of numbers is passed
    to ``jax.jit`` as an argument, and a step with every numeric hyperparameter halved must not
    retrace. If tracing with the transformation as an argument raises, that is this part's miss
    and ``jit`` is run with the transformation closed over as a constant (as flax keeps it:
    static data). A transformation that is not a pytree of numbers is always closed over, and
    this part is skipped with that reason.
    """
    report = new_report(tx, report, name, strict)
    extra = dict(extra_args or {})
    grads = make_grads(params)
    step = stepper(tx, extra)
    traces = {"init": 0, "update": 0}
    as_arg = traceable_tx(tx)
    jinit, jstep = _jitted(tx, as_arg, step, traces)
    if as_arg:  # try the transformation as a jit argument; fall back to a constant
        try:
            what = "init and update under jax.jit with the transformation as a jit argument"
            with guard(report, "jit.hyperparameters", what):
                jstep(tx, grads, jinit(tx, params), params)
        except CheckFailure as e:
            report.note(e)
            as_arg = False
            traces.update(init=0, update=0)
            jinit, jstep = _jitted(tx, as_arg, step, traces)

    with guard(report, "jit", "init under jax.jit"):
        state0 = jinit(tx, params)
        jinit(tx, params)
    if traces["init"] != 1:
        raise report.fail("jit", f"init retraced: traced {traces['init']} times for 2 calls")

    states = [state0]
    with guard(report, "jit", "update under jax.jit"):
        updates, state = jstep(tx, grads, state0, params)
        states.append(state)
    for i in (2, 3):
        with guard(report, "jit", f"jitted update step {i}"):
            _, state = jstep(tx, grads, state, params)
        states.append(state)
        if traces["update"] != 1:
            why = describe_difference(
                states[-3], states[-2], f"the state given to step {i - 1}", f"the one to step {i}"
            )
            raise report.fail(
                "jit",
                f"update retraced at step {i} (traced {traces['update']} times): "
                + (
                    why
                    or "the state kept its types, so the retrace comes from the "
                    "transformation's static data or from Python state read while tracing"
                ),
            )
    with guard(report, "jit", "eager init/update (to compare with jit)"):
        e_state0 = tx.init(params)
        e_updates, e_state1 = step(tx, grads, e_state0, params)
    assert_close(report, "jit", "jitted updates vs eager", e_updates, updates)
    assert_close(report, "jit", "jitted state vs eager", e_state1, states[1])
    report.ok(
        "jit",
        "init and update traced once each over 2 init calls and 3 steps; "
        "results match eager execution",
    )

    if "jit.hyperparameters" in report.misses:
        pass  # tracing with the transformation as an argument failed: recorded above
    elif not as_arg:
        report.skip(
            "jit.hyperparameters",
            "the transformation is not a pytree of numeric leaves; it was closed over as a "
            "constant, so a hyperparameter change would recompile by design",
        )
    elif not has_hyperparams(tx):
        report.skip("jit.hyperparameters", "the transformation has no numeric hyperparameters")
    else:
        with report.advisory():
            tx2 = vary_hyperparams(tx)
            with guard(report, "jit.hyperparameters", "a jitted step with halved hyperparameters"):
                jstep(tx2, grads, state, params)
            if traces["update"] != 1:
                why = describe_difference(tx, tx2, "the transformation", "the one with new values")
                raise report.fail(
                    "jit.hyperparameters",
                    "changing a hyperparameter value retraced update"
                    + (
                        f": {why}"
                        if why
                        else " (its leaves kept their types; a hyperparameter is "
                        "probably static data or is read as a Python number while tracing)"
                    ),
                )
            report.ok("jit.hyperparameters", "halving every numeric hyperparameter did not retrace")

    return report


@standard_promotion
def check_stability(
    tx: Any,
    params: Any,
    *,
    extra_args: Mapping[str, Any] | None = None,
    name: str | None = None,
    strict: bool = False,
    report: CheckReport | None = None,
) -> CheckReport:
    """The state keeps its tree structure, shapes, dtypes and weak types through ``update``
    (required).

    Compared with the state ``init`` returns: the state after eager updates, after an update
    traced by ``jax.eval_shape`` (as under jit), after an update inside ``lax.cond`` (whose other
    branch returns the state unchanged) and after two updates as the carry of ``lax.scan``. The
    updates must have the gradients' structure, shapes and dtypes.
    """
    report = new_report(tx, report, name, strict)
    step = stepper(tx, dict(extra_args or {}))
    grads = make_grads(params)
    grads2 = make_grads(params, seed=1)

    with guard(report, "stability", "init"):
        state0 = tx.init(params)
    with guard(report, "stability", "eager update"):
        updates, state1 = step(tx, grads, state0, params)
        _, state2 = step(tx, grads2, state1, params)
    for label, other in (("one update", state1), ("two updates", state2)):
        why = describe_difference(state0, other, "the state from init", f"the state after {label}")
        if why:
            raise report.fail("stability", why)
    why = describe_difference(grads, updates, "the gradients", "the updates")
    if why:
        raise report.fail("stability", why)

    with guard(report, "stability.jit", "update traced by jax.eval_shape"):
        traced = jax.eval_shape(lambda s: step(tx, grads, s, params)[1], state0)
    why = describe_difference(state0, traced, "the state from init", "the traced update's state")
    if why:
        raise report.fail("stability.jit", why)

    def in_cond(pred: Any, s: Any) -> Any:
        return lax.cond(pred, lambda s: step(tx, grads, s, params)[1], lambda s: s, s)

    with guard(report, "stability.cond", "update inside lax.cond (other branch: state unchanged)"):
        out = jax.eval_shape(in_cond, True, state0)
    why = describe_difference(state0, out, "the state from init", "the state out of lax.cond")
    if why:
        raise report.fail("stability.cond", why)

    def in_scan(s: Any, gs: Any) -> Any:
        def body(s: Any, g: Any) -> Any:
            u, s = step(tx, g, s, params)
            return s, u

        return lax.scan(body, s, gs, length=2)

    with guard(report, "stability.scan", "two updates as the carry of lax.scan"):
        out, _ = jax.eval_shape(in_scan, state0, stack_trees([grads, grads2]))
    why = describe_difference(state0, out, "the state from init", "the state out of lax.scan")
    if why:
        raise report.fail("stability.scan", why)
    report.ok(
        "stability",
        "state type unchanged after eager, traced, lax.cond and lax.scan updates",
    )
    return report
