"""Checks of batching: ``jax.vmap`` over a batch of params and over a batch of hyperparameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._common import (
    assert_close,
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
from ._report import CheckReport

__all__ = ["check_vmap"]


def _two_steps(step: Any, tx: Any, params: Any, g1: Any, g2: Any) -> Any:
    state = tx.init(params)
    u1, state = step(tx, g1, state, params)
    u2, state = step(tx, g2, state, params)
    return u1, u2, state


def _shifted(params: Any) -> Any:
    def shift(p: Any) -> Any:
        x = np.asarray(p, np.float64) * 1.5 + 0.25
        return jnp.asarray(x.astype(np.dtype(p.dtype)))

    return jax.tree_util.tree_map(shift, params)


@standard_promotion
def check_vmap(
    tx: Any,
    params: Any,
    *,
    extra_args: Mapping[str, Any] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    name: str | None = None,
    strict: bool = False,
    report: CheckReport | None = None,
) -> CheckReport:
    """``jax.vmap`` over two sets of params, and over two sets of hyperparameters, gives what
    two separate runs give.

    Each run is ``init`` and two updates. ``vmap.params`` (required): a batch of two param sets
    (and their gradients), the transformation closed over. ``vmap.hyperparameters``
    (advisory): the batch stacks ``tx`` with a copy whose numeric leaves are halved and maps
    over it (``in_axes`` 0 for the transformation); skipped, with the reason recorded, when
    ``tx`` is not a pytree of numbers or has no numeric leaves.
    """
    report = new_report(tx, report, name, strict)
    step = stepper(tx, dict(extra_args or {}))
    run = lambda tx, p, g1, g2: _two_steps(step, tx, p, g1, g2)  # noqa: E731
    # Every run is jitted (one compilation, shared by all separate runs when ``tx`` is a pytree
    # argument) instead of dispatching each batched primitive eagerly, which made the vmap of a
    # wrapped optimizer several times slower. The jit check compares jit with eager.
    if traceable_tx(tx):
        jrun = jax.jit(run)
        solo = lambda tx, *args: jrun(tx, *args)  # noqa: E731
    else:
        solo = lambda tx, *args: jax.jit(lambda *a: run(tx, *a))(*args)  # noqa: E731

    p_a, p_b = params, _shifted(params)
    g1a, g2a, g1b, g2b = (make_grads(params, seed=s) for s in range(4))
    with guard(report, "vmap.params", "separate runs"):
        expected = stack_trees([solo(tx, p_a, g1a, g2a), solo(tx, p_b, g1b, g2b)])
    with guard(report, "vmap.params", "jax.vmap over a batch of params and gradients"):
        got = jax.jit(jax.vmap(lambda p, g1, g2: run(tx, p, g1, g2)))(
            stack_trees([p_a, p_b]), stack_trees([g1a, g1b]), stack_trees([g2a, g2b])
        )
    what = "vmapped over params vs separate runs"
    assert_close(report, "vmap.params", what, expected, got, rtol, atol)
    report.ok("vmap.params", "2 param sets, init and 2 updates")

    if not traceable_tx(tx):
        report.skip(
            "vmap.hyperparameters",
            "the transformation is not a pytree of numeric leaves, so it cannot be a vmap argument",
        )
    elif not has_hyperparams(tx):
        report.skip("vmap.hyperparameters", "the transformation has no numeric pytree leaves")
    else:
        with report.advisory():
            _hyperparameters(tx, run, solo, p_a, g1a, g2a, rtol, atol, report)
    report.ok("vmap", "batched runs match separate runs")
    return report


def _hyperparameters(
    tx: Any,
    run: Any,
    solo: Any,
    p_a: Any,
    g1a: Any,
    g2a: Any,
    rtol: float,
    atol: float,
    report: CheckReport,
) -> None:
    tx_b = vary_hyperparams(tx)
    with guard(report, "vmap.hyperparameters", "separate runs with halved hyperparameters"):
        expected = stack_trees([solo(tx, p_a, g1a, g2a), solo(tx_b, p_a, g1a, g2a)])
    with guard(report, "vmap.hyperparameters", "jax.vmap over stacked hyperparameters"):
        txs = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), tx, tx_b)
        got = jax.jit(jax.vmap(lambda t: run(t, p_a, g1a, g2a)))(txs)
    assert_close(
        report,
        "vmap.hyperparameters",
        "vmapped over hyperparameters vs separate runs",
        expected,
        got,
        rtol,
        atol,
    )
    report.ok("vmap.hyperparameters", "2 hyperparameter sets (x1, x0.5)")
