"""Changing live hyperparameters: :func:`set_hyperparams` and :func:`set_schedule_multipliers`.

Both find, anywhere in an optimizer state, the states that hold hyperparameters -- those of
:func:`gradtx.live`, of :func:`gradtx.inject_hyperparams` and of ``optax.inject_hyperparams``
-- and return the state with the named values replaced. A new value keeps the old one's dtype,
shape and sharding, so a jitted step given the new state is the same program (no retrace).

The target may be a state, a linen ``TrainState`` (a new one is returned) or an
``nnx.Optimizer`` (its state variables are set in place and the optimizer is returned).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._core.state import State, builder, with_builder

__all__ = ["set_hyperparams", "set_schedule_multipliers"]


def _is_variable(x: Any) -> bool:
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Variable)


def _holder(node: Any) -> bool:
    """A state that keeps hyperparameters: ``hyperparams`` (a dict) beside ``inner_state``."""
    if isinstance(node, State):
        return "hyperparams" in node and "inner_state" in node
    return hasattr(node, "_fields") and {"hyperparams", "inner_state"} <= set(node._fields)


def _entries(node: Any) -> dict[str, Any]:
    return dict(node) if isinstance(node, State) else node._asdict()


def _rebuild(node: Any, entries: dict[str, Any]) -> Any:
    if isinstance(node, State):
        return with_builder(State(entries), builder(node))
    return node._replace(**entries)


def _value(new: Any, old: Any, name: str) -> Any:
    """``new`` with the dtype, shape and placement of ``old`` (a variable is set in place)."""
    if _is_variable(old):
        current = old.get_value() if hasattr(old, "get_value") else old.value
        new_value = _value(new, current, name)
        if hasattr(old, "set_value"):
            old.set_value(new_value)
        else:  # pragma: no cover - older flax
            old.value = new_value
        return old
    arr = jnp.asarray(new, dtype=jnp.result_type(old))
    if arr.shape != jnp.shape(old):
        if arr.ndim != 0:
            raise ValueError(
                f"gradtx.set_hyperparams: {name} has shape {jnp.shape(old)}, got a value of "
                f"shape {arr.shape} (a new shape would be a new program)"
            )
        arr = jnp.broadcast_to(arr, jnp.shape(old))
    tracing = isinstance(old, jax.core.Tracer) or isinstance(arr, jax.core.Tracer)
    if isinstance(old, jax.Array) and not tracing:
        arr = jax.device_put(arr, old.sharding)
    return arr


def _walk(node: Any, edit: Callable[[Any], Any]) -> Any:
    if _holder(node):
        node = edit(node)
    if isinstance(node, State):
        return with_builder(State({k: _walk(v, edit) for k, v in dict.items(node)}), builder(node))
    if hasattr(node, "_fields"):  # a NamedTuple (optax's states)
        return type(node)(*(_walk(v, edit) for v in node))
    if isinstance(node, tuple):
        return tuple(_walk(v, edit) for v in node)
    if isinstance(node, list):
        return [_walk(v, edit) for v in node]
    if isinstance(node, dict):
        return type(node)({k: _walk(v, edit) for k, v in node.items()})
    return node


def _apply(target: Any, fn: Callable[[Any], Any]) -> Any:
    if hasattr(target, "opt_state") and hasattr(target, "tx"):
        if hasattr(target, "apply_gradients"):  # a linen TrainState
            return target.replace(opt_state=fn(target.opt_state))
        fn(target.opt_state)  # nnx.Optimizer: its variables are set in place
        return target
    return fn(target)


def _edit(who: str, target: Any, values: dict[str, Any], field: str) -> Any:
    found: set[str] = set()
    known: set[str] = set()

    def edit(node: Any) -> Any:
        entries = _entries(node)
        hp = dict(entries["hyperparams"])
        sched = dict(entries["schedules"]) if "schedules" in entries else {}
        known.update(hp if field == "value" else ())
        known.update(sched)
        for name, v in values.items():
            if field == "value" and name in hp:
                if v is None:
                    raise ValueError(f"gradtx.{who}: {name} is a constant; None is for schedules")
                hp[name] = _value(v, hp[name], name)
            elif name in sched:
                s = sched[name]
                if field == "multiplier":
                    s = s.replace(multiplier=_value(v, s["multiplier"], name))
                elif v is None:  # back to the schedule
                    s = s.replace(overridden=_value(False, s["overridden"], name))
                else:
                    s = s.replace(
                        override=_value(v, s["override"], name),
                        overridden=_value(True, s["overridden"], name),
                    )
                sched[name] = s
            else:
                continue
            found.add(name)
        entries["hyperparams"] = type(entries["hyperparams"])(hp)
        if "schedules" in entries:
            entries["schedules"] = type(entries["schedules"])(sched)
        return _rebuild(node, entries)

    out = _apply(target, lambda state: _walk(state, edit))
    missing = sorted(set(values) - found)
    if missing:
        raise KeyError(
            f"gradtx.{who}: no live hyperparameter {', '.join(missing)}; the state has "
            f"{sorted(known) or 'none'} (wrap the optimizer with gradtx.live or "
            "inject_hyperparams to keep hyperparameters in the state)"
        )
    return out


def set_hyperparams(state: Any, **values: Any) -> Any:
    """The state with hyperparameters set to new values; the next update uses them.

    A constant hyperparameter is replaced. A scheduled one (kept by :func:`gradtx.live`) is
    overridden: the value is used instead of the schedule until it is set to ``None``, which
    returns to the schedule (times its multiplier). Every live state in ``state`` holding a
    name is set (a chain of two live optimizers: both).

    Args:
      state: an optimizer state, a linen ``TrainState`` or an ``nnx.Optimizer``.
      **values: name -> value (a number or a scalar array; traced values work under ``jit``).

    Returns:
      The state with the new values (for an ``nnx.Optimizer``: the same object, updated).

    Raises:
      KeyError: a name is not a live hyperparameter of ``state`` (the message lists those
        that are).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.live(gradtx.sgd(0.1))
      >>> state = gradtx.set_hyperparams(tx.init({"w": jnp.ones(2)}), learning_rate=0.01)
      >>> u, _ = tx.update({"w": jnp.ones(2)}, state)
      >>> [round(x, 6) for x in u["w"].tolist()]
      [-0.01, -0.01]
    """
    return _edit("set_hyperparams", state, values, "value")


def set_schedule_multipliers(state: Any, **multipliers: Any) -> Any:
    """The state with scheduled hyperparameters scaled: ``value(t) = m · schedule(t)``.

    The multiplier replaces the previous one (it does not compound); ``1.0`` restores the
    schedule. Only hyperparameters that :func:`gradtx.live` keeps as schedules have one.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.live(gradtx.sgd(gradtx.schedules.linear(1.0, 0.0, 10)))
      >>> state = gradtx.set_schedule_multipliers(tx.init({"w": jnp.ones(1)}), learning_rate=0.5)
      >>> float(gradtx.current_learning_rate(tx, state))
      0.5
    """
    return _edit("set_schedule_multipliers", state, multipliers, "multiplier")
