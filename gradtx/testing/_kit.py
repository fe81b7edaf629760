"""``check_transformation``: every check of the kit, in order, on one transformation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ._checks_dtype import DEFAULT_DTYPES, check_abstract_init, check_dtypes
from ._checks_jit import check_jit, check_stability
from ._checks_sharding import check_sharding
from ._checks_structure import check_extra_args, check_structure
from ._checks_vmap import check_vmap
from ._common import tx_name
from ._report import CheckReport

__all__ = ["CHECKS", "check_transformation", "default_params"]

#: The checks in the order :func:`check_transformation` runs them.
CHECKS: dict[str, Callable[..., CheckReport]] = {
    "jit": check_jit,
    "stability": check_stability,
    "dtypes": check_dtypes,
    "abstract_init": check_abstract_init,
    "sharding": check_sharding,
    "structure": check_structure,
    "extra_args": check_extra_args,
    "vmap": check_vmap,
}


def default_params() -> dict[str, Any]:
    """The params used when none are given: a matrix, a vector and a scalar (float32)."""
    rng = np.random.default_rng(42)
    return {
        "w": jnp.asarray(rng.standard_normal((8, 4)).astype(np.float32)),
        "b": jnp.asarray(rng.standard_normal((8,)).astype(np.float32)),
        "s": jnp.asarray(np.float32(0.5)),
    }


def check_transformation(
    tx: Any,
    params: Any = None,
    *,
    checks: Iterable[str] | None = None,
    dtypes: Sequence[Any] = DEFAULT_DTYPES,
    extra_args: Mapping[str, Any] | None = None,
    mesh: Mesh | None = None,
    devices: int | None = None,
    finite: bool = True,
    name: str | None = None,
) -> CheckReport:
    """Runs the conformance kit on a transformation; raises on the first rule it breaks.

    The checks, in order (each also callable alone, e.g. :func:`check_jit`):

    - ``jit``: init and update run under ``jax.jit``; later steps and a step with new
      hyperparameter values do not retrace; results match eager execution.
    - ``stability``: the state keeps its structure, shapes, dtypes and weak types through
      ``update``, also inside ``lax.cond`` and ``lax.scan``.
    - ``dtypes``: with params in each of ``dtypes`` (float64 with 64-bit types enabled for that
      run only), updates come back in the param dtype, state slots in the param dtype and step
      counters in int32; with ``finite``, finite gradients give finite results.
    - ``abstract_init``: ``init`` works on ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape``).
    - ``sharding``: on a device mesh, slots get the params' ``NamedSharding`` and a jitted step
      keeps it (skipped, with a reason, on fewer than 2 devices).
    - ``structure``: ``None`` leaves, empty containers, 0-d leaves and nested dict/list/tuple/
      named tuple work; a gradient tree that does not match raises naming the transformation and
      the key.
    - ``extra_args``: unknown ``update`` keyword arguments are ignored; declared required ones
      (``requires``) must be passed in ``extra_args`` and their absence is a clear error.
    - ``vmap``: vmapping over a batch of params and over a batch of hyperparameters matches
      separate runs.

    Args:
      tx: the transformation (an object with ``init`` and ``update``; a gradtx transformation
        or any pytree of numeric hyperparameters gets the hyperparameter checks too).
      params: the parameter tree to run it on (default: :func:`default_params`).
      checks: names of the checks to run (default: all, in the order above).
      dtypes: parameter dtypes for the ``dtypes`` check.
      extra_args: keyword arguments every ``update`` call gets (those ``tx`` requires).
      mesh: the mesh whose devices and axis names the ``sharding`` check uses.
      devices: without ``mesh``, how many devices the 1-d mesh takes (default: all).
      finite: whether the ``dtypes`` check also requires finite results.
      name: the name error messages must use (default ``tx.name``, else the type's name).

    Returns:
      A :class:`CheckReport` of the checks that passed and those skipped, with reasons.

    Raises:
      CheckFailure: naming the check, the transformation and what was wrong.

    Example:
      >>> import gradtx
      >>> from gradtx.testing import check_transformation
      >>> report = check_transformation(gradtx.sgd(0.1), checks=["jit", "stability"])
      >>> sorted(report.passed)
      ['jit', 'jit.hyperparameters', 'stability']
    """
    selected = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; the checks are {list(CHECKS)}")
    if params is None:
        params = default_params()
    report = CheckReport(name or tx_name(tx))
    common = {"extra_args": extra_args, "report": report}
    for check in CHECKS:
        if check not in selected:
            continue
        kwargs: dict[str, Any] = dict(common)
        if check == "dtypes":
            kwargs.update(dtypes=dtypes, finite=finite)
        elif check == "sharding":
            kwargs.update(mesh=mesh, devices=devices)
        CHECKS[check](tx, params, **kwargs)
    return report
