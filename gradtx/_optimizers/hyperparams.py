"""Reading the current hyperparameters of a transformation from its state (for logging).

The readers see through wrappers: a gradtx wrapper says what it wraps with a
``views(state) -> [(label, inner, inner_state)]`` method (``label`` ``None`` for a single inner
transformation, a group's label otherwise); an optax wrapper or chain around gradtx
transformations is looked into through the functions it closes over (:func:`_optax_views`).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import jax

from .._core.chain import Chain, Foreign
from .._core.stage import Stage
from .._core.state import State
from .._core.struct import Struct, fields, hyper_fields, resolve
from .._core.transformation import GradientTransformation
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
    name is not repeated. A wrapper gives what it wraps (:func:`gradtx.live`: the live values;
    ``inject_hyperparams``, gradtx's or optax's: its ``hyperparams``; a partition: one entry
    per label); an optax chain or wrapper around gradtx transformations is seen through too.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adam(gradtx.schedules.linear(1.0, 0.0, 10))
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> float(gradtx.hyperparams(tx, state)["learning_rate"])
      1.0
      >>> gradtx.hyperparams(tx, state)["knobs"]["scale"]["b2"]
      0.999
    """
    state = _pure(state)
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
    if callable(getattr(tx, "next_values", None)):  # inject_hyperparams
        return tx.next_values(state)
    if _is_optax_inject(state):
        return dict(state.hyperparams)
    views = _views(tx, state)
    if len(views) == 1 and views[0][0] is None:
        return hyperparams(views[0][1], views[0][2])
    return {label: hyperparams(inner, s) for label, inner, s in views}


def current_learning_rate(tx: Any, state: Any) -> Any:
    """The learning rate η_t the next update of ``tx`` will use (the last η stage in a chain).

    Wrappers are seen through, gradtx's and optax's (for ``optax.inject_hyperparams``: the
    value in its state). A partition gives ``{label: learning rate}`` for the groups that have
    one.

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
    found = _find_lr(tx, _pure(state))
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
    if isinstance(tx, Stage):
        return None
    if callable(getattr(tx, "next_values", None)) or _is_optax_inject(state):
        lr = hyperparams(tx, state).get("learning_rate")
        if lr is not None:
            return lr
    views = _views(tx, state)
    if len(views) == 1 and views[0][0] is None:
        return _find_lr(views[0][1], views[0][2])
    found = {label: _find_lr(inner, s) for label, inner, s in views}
    found = {k: v for k, v in found.items() if v is not None}
    if not found:
        return None
    if views and views[0][0] is None:  # an optax chain: the last η
        return list(found.values())[-1]
    return found


def _pure(state: Any) -> Any:
    """``state`` with flax nnx variables (``nnx.Optimizer.opt_state``) replaced by values."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return state
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    if not any(is_var(x) for x in jax.tree_util.tree_leaves(state, is_leaf=is_var)):
        return state
    return jax.tree_util.tree_map(
        lambda x: x.get_value() if is_var(x) else x, state, is_leaf=is_var
    )


def _is_optax_inject(state: Any) -> bool:
    return (
        hasattr(state, "_fields")
        and "hyperparams" in state._fields
        and isinstance(state.hyperparams, dict)
    )


def _views(tx: Any, state: Any) -> list[tuple[Any, Any, Any]]:
    if isinstance(tx, Foreign):
        tx = tx.tx
    own = getattr(tx, "views", None)
    if isinstance(tx, GradientTransformation) and callable(own):
        return list(own(state))
    return _optax_views(tx, state)


def _gradtx_inside(obj: Any, depth: int = 0) -> list[Any]:
    """The gradtx transformations an optax object holds: in its fields, the functions it
    closes over and the methods bound to them (a few levels deep)."""
    if depth > 4:
        return []
    if isinstance(obj, GradientTransformation):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return _dedupe([t for x in obj for t in _gradtx_inside(x, depth + 1)])
    owner = getattr(obj, "__self__", None)
    if owner is not None:
        return _gradtx_inside(owner, depth + 1)
    if isinstance(obj, functools.partial):
        return _gradtx_inside((obj.func, *obj.args), depth + 1)
    cells = getattr(obj, "__closure__", None)
    if cells:
        found: list[Any] = []
        for c in cells:
            try:
                found += _gradtx_inside(c.cell_contents, depth + 1)
            except ValueError:  # an empty cell
                continue
        return _dedupe(found)
    inner = getattr(obj, "_opt", None)  # optax.MultiSteps keeps its inner as _opt
    if inner is not None:
        return _gradtx_inside(inner, depth + 1)
    update = getattr(obj, "update", None)
    if update is not None and not isinstance(obj, type):
        return _dedupe(
            _gradtx_inside(update, depth + 1)
            + _gradtx_inside(getattr(obj, "init", None), depth + 1)
        )
    return []


def _dedupe(txs: list[Any]) -> list[Any]:
    out: list[Any] = []
    for t in txs:
        if not any(t is u for u in out):
            out.append(t)
    return out


def _optax_views(tx: Any, state: Any) -> list[tuple[Any, Any, Any]]:
    """``[(None, inner, inner_state)]`` for an optax wrapper of one gradtx transformation
    (its state has ``inner_state`` or ``inner_opt_state``), one per gradtx stage for an optax
    chain (a tuple state), else ``[]``."""
    if tx is None or isinstance(tx, GradientTransformation):
        return []
    inside = _gradtx_inside(tx)
    if not inside:
        return []
    for field in ("inner_state", "inner_opt_state"):
        inner_state = getattr(state, field, None)
        if inner_state is not None and len(inside) == 1:
            return [(None, inside[0], inner_state)]
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        # an optax chain: its state is one entry per transformation, in order; pair each gradtx
        # transformation with the entry that is a gradtx State of its own
        entries = [s for s in state if isinstance(s, State)]
        if len(entries) == len(inside):
            return [(None, t, s) for t, s in zip(inside, entries)]
    return []
