"""``check_transformation``: every check of the kit, in order, on one transformation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ._checks_dtype import (
    DEFAULT_DTYPES,
    check_abstract_init,
    check_dtypes,
    check_strict_promotion,
)
from ._checks_jit import check_jit, check_stability
from ._checks_sharding import check_sharding
from ._checks_structure import check_declared_extras, check_extra_args, check_structure
from ._checks_vmap import check_vmap
from ._common import standard_promotion, tx_name
from ._report import CheckReport

__all__ = ["CHECKS", "check_transformation", "default_params"]

#: The checks in the order :func:`check_transformation` runs them. Each holds required and/or
#: advisory parts; :data:`TIERS` gives the tier of every part.
CHECKS: dict[str, Callable[..., CheckReport]] = {
    "jit": check_jit,
    "stability": check_stability,
    "dtypes": check_dtypes,
    "strict_promotion": check_strict_promotion,
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


@standard_promotion
def check_transformation(
    tx: Any,
    params: Any = None,
    *,
    strict: bool = False,
    checks: Iterable[str] | None = None,
    dtypes: Sequence[Any] = DEFAULT_DTYPES,
    extra_args: Mapping[str, Any] | None = None,
    mesh: Mesh | None = None,
    devices: int | None = None,
    finite: bool = True,
    name: str | None = None,
) -> CheckReport:
    """Runs the conformance kit on a transformation; raises on the first required rule it breaks.

    Every check has **required** parts -- contracts any transformation with optax's
    ``init``/``update`` protocol must keep to work in a jitted, sharded, batched training loop
    -- and **advisory** parts -- contracts gradtx holds itself to that a third party need not
    (error messages naming the transformation, strict dtype promotion, gradtx's dtype policy,
    hyperparameters as traced pytree leaves, optax's extra-arguments protocol). A required
    failure raises :class:`CheckFailure`. An advisory miss is recorded in the returned report's
    ``misses`` (check -> reason) and the run goes on, unless ``strict`` is true: then it raises
    too. :data:`TIERS` gives the tier of every part.

    The checks, in order (each also callable alone, e.g. :func:`check_jit`); tiers in brackets:

    - ``jit`` [required]: init and update run under ``jax.jit``; init is traced once for two
      calls and update once for three steps; results match eager execution.
      ``jit.hyperparameters`` [advisory]: a transformation that is a pytree of numbers works as
      a jit argument, and a step with new hyperparameter values does not retrace.
    - ``stability`` [required]: the state keeps its structure, shapes, dtypes and weak types
      through ``update``, also traced, inside ``lax.cond`` and as a ``lax.scan`` carry.
    - ``dtypes`` [required per dtype, ``dtypes.float16``, ...]: with params in each of
      ``dtypes`` (float64 with 64-bit types enabled for that run only), updates come back in
      the param dtype and the state keeps the dtypes ``init`` gave it.
      ``dtypes.policy`` [advisory]: state slots in the param dtype or wider, step counters
      int32, no weakly typed state. ``dtypes.finite`` [advisory, with ``finite``]: finite
      gradients give finite results.
    - ``strict_promotion`` [advisory]: init and update trace in each dtype with
      ``jax_numpy_dtype_promotion="strict"`` and ``jax_numpy_rank_promotion="raise"``. Every
      other check runs with JAX's default promotion, whatever the caller's settings.
    - ``abstract_init`` [required]: ``init`` works on ``jax.ShapeDtypeStruct`` leaves
      (``jax.eval_shape``), as does an update.
    - ``sharding`` [required]: on a device mesh, slots get the params' ``NamedSharding`` and a
      jitted step keeps it (skipped, with a reason, on fewer than 2 devices).
    - ``structure`` [required]: ``None`` leaves, empty containers, 0-d leaves and nested
      dict/list/tuple/named tuple work and keep their structure. ``structure.errors``
      [advisory]: a gradient tree that does not match raises naming the transformation and
      the key.
    - ``extra_args`` [advisory]: unknown ``update`` keyword arguments are ignored and a missing
      required one (``requires``) is an error naming it. ``extra_args.declared`` [required,
      checked before every check]: the required ones are given in ``extra_args``.
    - ``vmap`` [required ``vmap.params``]: vmapping over a batch of params matches separate
      runs. ``vmap.hyperparameters`` [advisory]: so does vmapping over a batch of
      hyperparameters.

    Args:
      tx: the transformation (an object with ``init`` and ``update``; a gradtx transformation
        or any pytree of numeric hyperparameters gets the hyperparameter checks too).
      params: the parameter tree to run it on (default: :func:`default_params`).
      strict: whether advisory misses raise too (gradtx's own transformations pass with
        ``strict=True``).
      checks: names of the checks to run (default: all, in the order above).
      dtypes: parameter dtypes for the ``dtypes`` and ``strict_promotion`` checks.
      extra_args: keyword arguments every ``update`` call gets (those ``tx`` requires).
      mesh: the mesh whose devices and axis names the ``sharding`` check uses.
      devices: without ``mesh``, how many devices the 1-d mesh takes (default: all).
      finite: whether the ``dtypes`` check also looks for non-finite results.
      name: the name error messages must use (default ``tx.name``, else the type's name).

    Returns:
      A :class:`CheckReport` of the checks that passed, those skipped (with reasons) and the
      advisory misses (with reasons); ``str(report)`` lists them with their tiers.

    Raises:
      CheckFailure: naming the check, its tier, the transformation and what was wrong.

    Example:
      >>> import gradtx
      >>> from gradtx.testing import check_transformation
      >>> report = check_transformation(gradtx.sgd(0.1), checks=["jit", "stability"])
      >>> sorted(report.passed), report.misses
      (['extra_args.declared', 'jit', 'jit.hyperparameters', 'stability'], {})
    """
    selected = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; the checks are {list(CHECKS)}")
    if params is None:
        params = default_params()
    report = CheckReport(name or tx_name(tx), strict=strict)
    check_declared_extras(tx, extra_args, report)
    common = {"extra_args": extra_args, "report": report}
    for check in CHECKS:
        if check not in selected:
            continue
        kwargs: dict[str, Any] = dict(common)
        if check == "dtypes":
            kwargs.update(dtypes=dtypes, finite=finite)
        elif check == "strict_promotion":
            kwargs.update(dtypes=dtypes)
        elif check == "sharding":
            kwargs.update(mesh=mesh, devices=devices)
        CHECKS[check](tx, params, **kwargs)
    return report
