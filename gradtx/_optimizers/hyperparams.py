"""Reading the current hyperparameters of a transformation from its state (for logging)."""

from __future__ import annotations

from typing import Any

from .._core.chain import Chain
from .._core.stage import Stage
from .._core.struct import Struct, fields, hyper_fields, resolve
from ..schedules._learning_rate import ScaleByLearningRate

__all__ = ["hyperparams", "current_learning_rate"]


def _values(obj: Struct) -> dict[str, Any]:
    out: dict[str, Any] = {n: getattr(obj, n) for n in hyper_fields(obj)}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("kind") is None and isinstance(value, Struct):
            out[f.name] = _values(value)
    return out


def hyperparams(tx: Any, state: Any) -> dict[str, Any]:
    """The hyperparameters of ``tx`` as they apply at the step recorded in ``state``.

    Scheduled values are evaluated at the stage's ``count``; constants are returned as given.
    A stage gives a dict of its hyperparameter fields (nested knobs as nested dicts). A chain
    gives one entry per stage, keyed by stage name: the stage's dict, or, when that dict has a
    single field named like the stage itself (the η stage, ``learning_rate``), its value, so the
    name is not repeated.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adam(gradtx.schedules.linear(1.0, 0.0, 10))
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> float(gradtx.hyperparams(tx, state)["learning_rate"])
      1.0
      >>> gradtx.hyperparams(tx, state)["knobs"]["scale"]["b2"]
      0.999
    """
    if isinstance(tx, Chain):
        out = {}
        for n, s in zip(tx.names, tx.stages):
            entry = hyperparams(s, state[n])
            if isinstance(s, Stage) and list(entry) == [s.name]:
                entry = entry[s.name]
            out[n] = entry
        return out
    if isinstance(tx, Stage):
        return _values(resolve(tx, state["count"] if tx.counts else None))
    return {}


def current_learning_rate(tx: Any, state: Any) -> Any:
    """The learning rate η_t the next update of ``tx`` will use (the last η stage in a chain).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> sched = gradtx.schedules.linear(1.0, 0.0, 10)
      >>> tx = gradtx.sgd(sched)
      >>> params = {"w": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     _, state = tx.update({"w": jnp.ones(2)}, state, params)
      >>> round(float(gradtx.current_learning_rate(tx, state)), 4)
      0.7
    """
    found = _find_lr(tx, state)
    if found is None:
        raise ValueError(f"gradtx.current_learning_rate: {type(tx).__name__} has no learning rate")
    return found


def _find_lr(tx: Any, state: Any) -> Any:
    if isinstance(tx, Chain):
        for n, s in reversed(list(zip(tx.names, tx.stages))):
            lr = _find_lr(s, state[n])
            if lr is not None:
                return lr
        return None
    if isinstance(tx, ScaleByLearningRate):
        return hyperparams(tx, state)["learning_rate"]
    return None
