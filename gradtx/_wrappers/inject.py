"""``inject_hyperparams``: optax's wrapper, with its arguments, state and semantics.

``inject_hyperparams(factory)(*args, **kwargs)`` binds the arguments to ``factory``'s signature
and sorts them as optax does: names in ``static_args`` and booleans are static; callables are
schedules (an object with ``init``/``update`` is a stateful schedule, called with its state and
the update's extra arguments; any other callable is called with a step count); ints, floats and
arrays are numeric hyperparameters; anything else is static. Per step::

    hparams  = {numeric: state.hyperparams[k] as hyperparam_dtype}
             ∪ {scheduled: schedule(state.hyperparams_states[k])}
    u, inner = factory(**static, **hparams).update(g, state.inner_state, params, **extra)
    state'   = State(count + 1, hparams, advanced schedule states, inner)

so ``state.hyperparams`` holds the values the last update used (at ``init``: those of step 0),
and a numeric value changed there (``gradtx.set_hyperparams``, or in place as optax allows)
is used by the next update; a scheduled one is recomputed. Floats are cast to
``hyperparam_dtype`` (default: float64 if the params have float64 leaves, else float32 --
optax uses the params' highest float dtype, which for bfloat16 params rounds ``b2=0.999`` to
1.0); a JAX array that is not weakly typed keeps its dtype, as in optax; a schedule's float
value is cast to it (optax keeps a schedule's float32 output beside float64 params).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core.chain import _foreign_update
from .._core.stage import increment, scalar_like
from .._core.state import State
from .._core.struct import static
from .._core.transformation import GradientTransformation
from .common import check_args, thaw

__all__ = ["InjectHyperparams", "inject_hyperparams"]

_ENTRIES = ("count", "hyperparams", "hyperparams_states", "inner_state")


def _stateful(schedule: Any) -> bool:
    return callable(getattr(schedule, "init", None)) and callable(getattr(schedule, "update", None))


def _highest_float(params: Any) -> Any:
    """float64 if a leaf of ``params`` is float64, else float32 (never narrower: a decay rate
    such as 0.999 is 1.0 in bfloat16)."""
    leaves = jax.tree_util.tree_leaves(params)
    if any(getattr(x, "dtype", None) == jnp.float64 for x in leaves):
        return jnp.float64
    return jnp.float32


def _scheduled(value: Any, dtype: Any) -> Any:
    """A schedule's value: a float as ``dtype`` (gradtx's schedules give float32 arrays)."""
    value = jnp.asarray(value)
    return value.astype(dtype) if jnp.issubdtype(value.dtype, jnp.floating) else value


def _convert(value: Any, dtype: Any) -> Any:
    """Floats (Python, NumPy, weakly typed JAX) as ``dtype``; anything else unchanged."""
    if isinstance(value, jax.Array) and not getattr(value, "weak_type", False):
        return value
    kind = value.dtype if hasattr(value, "dtype") else type(value)
    if jnp.issubdtype(kind, jnp.floating):
        return jnp.asarray(value, dtype)
    return value


class InjectHyperparams(GradientTransformation):
    """``factory(**hyperparameters)`` with its numeric hyperparameters in the state; see the
    module docstring for the rule."""

    factory: Any = static(None)
    numeric: tuple = static(())
    schedules: tuple = static(())
    others: tuple = static(())
    hyperparam_dtype: Any = static(None)

    def _items(self, field: str) -> dict[str, Any]:
        return dict(thaw(getattr(self, field)))

    def _dtype(self, params: Any) -> Any:
        return self.hyperparam_dtype or _highest_float(params)

    def _build(self, hparams: dict[str, Any]) -> Any:
        return self.factory(**self._items("others"), **hparams)

    def init(self, params: Any) -> State:
        dtype = self._dtype(params)
        hparams = {k: jnp.asarray(_convert(v, dtype)) for k, v in self._items("numeric").items()}
        sched = self._items("schedules")
        sched_states = {
            k: f.init() if _stateful(f) else State(count=scalar_like(params, 0, jnp.int32))
            for k, f in sched.items()
        }
        hparams.update(
            {k: _scheduled(_evaluate(f, sched_states[k], {}), dtype) for k, f in sched.items()}
        )
        return State(
            count=scalar_like(params, 0, jnp.int32),
            hyperparams=hparams,
            hyperparams_states=sched_states,
            inner_state=self._build(hparams).init(params),
        )

    def next_values(self, state: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The hyperparameters the next update will use."""
        dtype = self.hyperparam_dtype or _highest_float(state["hyperparams"])
        hparams = {k: _convert(v, dtype) for k, v in state["hyperparams"].items()}
        for k, f in self._items("schedules").items():
            hparams[k] = _scheduled(
                _evaluate(f, state["hyperparams_states"][k], extra or {}), dtype
            )
        return hparams

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, _ENTRIES, updates, params)
        dtype = self._dtype(params if params is not None else updates)
        hparams = {k: _convert(v, dtype) for k, v in state["hyperparams"].items()}
        sched = self._items("schedules")
        for k, f in sched.items():
            hparams[k] = _scheduled(_evaluate(f, state["hyperparams_states"][k], extra), dtype)
        sched_states = {
            k: f.update(state["hyperparams_states"][k], **extra)
            if _stateful(f)
            else State(count=increment(state["hyperparams_states"][k]["count"]))
            for k, f in sched.items()
        }
        updates, inner_state = _foreign_update(
            self._build(hparams), updates, state["inner_state"], params, extra
        )
        return updates, State(
            count=increment(state["count"]),
            hyperparams=hparams,
            hyperparams_states=sched_states,
            inner_state=inner_state,
        )

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self._build(self.next_values(state)), state["inner_state"])]


def _evaluate(schedule: Any, sched_state: Any, extra: dict[str, Any]) -> Any:
    if _stateful(schedule):
        return schedule(sched_state, **extra)
    return schedule(sched_state["count"])


def inject_hyperparams(
    inner_factory: Callable[..., Any],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., InjectHyperparams]:
    """Moves a factory's numeric hyperparameters into the state, as ``optax.inject_hyperparams``.

    Args:
      inner_factory: a function returning a transformation (``gradtx.adamw``, an optax one).
      static_args: names of arguments that are callables but not schedules.
      hyperparam_dtype: the dtype of float hyperparameters (default: float64 for float64
        params, else float32; optax: the params' highest float dtype).

    Returns:
      A function taking ``inner_factory``'s arguments (schedules allowed for numeric ones)
      and returning an :class:`InjectHyperparams`, whose state is ``State(count, hyperparams,
      hyperparams_states, inner_state)`` as optax's ``InjectStatefulHyperparamsState``.

    Raises:
      ValueError: ``static_args`` names an argument ``inner_factory`` does not have.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.inject_hyperparams(gradtx.adamw)(learning_rate=1e-3, weight_decay=0.1)
      >>> state = tx.init({"w": jnp.ones(2)})
      >>> state = gradtx.set_hyperparams(state, learning_rate=2e-4)
      >>> round(float(state.hyperparams["learning_rate"]), 6)
      0.0002
    """
    names = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    if not names <= set(signature.parameters):
        raise ValueError(
            f"gradtx.inject_hyperparams: static_args {sorted(names)} must name parameters of "
            f"inner_factory, which has {list(signature.parameters)}"
        )

    @functools.wraps(inner_factory)
    def wrapped(*args: Any, **kwargs: Any) -> InjectHyperparams:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        numeric, schedules, others = [], [], []
        arguments = dict(bound.arguments)
        for pname, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(pname, {}))
            elif param.kind is inspect.Parameter.VAR_POSITIONAL and arguments.get(pname):
                raise TypeError(
                    f"gradtx.inject_hyperparams: {inner_factory.__name__} takes *{pname}; "
                    "only arguments that can be passed by name can be injected"
                )
            elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                arguments.pop(pname, None)
        for name, value in arguments.items():
            if name in names or isinstance(value, (bool, np.bool_)):
                others.append((name, value))
            elif callable(value):
                schedules.append((name, value))
            elif isinstance(value, (int, float, jax.Array, np.ndarray, np.number)):
                numeric.append((name, value))
            else:
                others.append((name, value))
        return InjectHyperparams(
            inner_factory, tuple(numeric), tuple(schedules), tuple(others), hyperparam_dtype
        )

    return wrapped
