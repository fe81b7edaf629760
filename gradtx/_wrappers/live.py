"""``live``: an optimizer's numeric hyperparameters kept in its *state*, not its configuration.

flax keeps the transformation as static data (``nnx.Optimizer.tx``, linen ``TrainState.tx``),
so a transformation with another learning rate is another program. ``live(tx)`` moves every
numeric hyperparameter of ``tx`` into the state, where a new value is a new *input* of the same
program::

    state = State(hyperparams={name: value},
                  schedules={name: State(multiplier, override, overridden)},
                  inner_state=tx.init(params))
    update:  tx' = tx with each constant hyperparameter ``name`` replaced by
                   hyperparams[name], and each scheduled one ``s`` by
                   s'(t) = override            if overridden
                           multiplier · s(t)   otherwise
             u, inner_state = tx'.update(g, inner_state, params)

``t`` is the step count of the stage that owns the hyperparameter, as without ``live``, so a
schedule goes on from where it was. Names are the hyperparameter's field name
(``learning_rate``, ``weight_decay``, ``b2``, ``eps``, ``decay``) where it is unique, else the
shortest unambiguous dotted name from its path in :func:`gradtx.hyperparams`'s nesting: its
last parts (``scale.eps``) or one earlier part with the field (``no_decay.b2`` in a group).
:func:`set_hyperparams` changes values, :func:`set_schedule_multipliers` scales schedules,
:func:`gradtx.hyperparams` reads the values that apply.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._core.chain import Chain, Foreign
from .._core.stage import scalar_like
from .._core.state import State
from .._core.struct import Struct, fields, hyper, is_schedule_like, static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError
from ..schedules._base import Schedule
from .common import check_args

__all__ = ["Live", "live", "Adjusted", "live_names"]

_ENTRIES = ("hyperparams", "schedules", "inner_state")


class Adjusted(Schedule):
    """``schedule`` with a multiplier and an override, as :func:`live` runs it.

    Rule: ``override`` if ``overridden`` (non-zero), else ``multiplier · schedule(count)``.
    """

    schedule: Any = None
    multiplier: Any = hyper(1.0)
    override: Any = hyper(0.0)
    overridden: Any = hyper(0.0)

    def __call__(self, count: Any) -> jax.Array:
        value = jnp.asarray(self.schedule(count), jnp.float32)
        m = jnp.asarray(self.multiplier, jnp.float32)
        o = jnp.asarray(self.override, jnp.float32)
        return jnp.where(jnp.asarray(self.overridden).astype(jnp.bool_), o, m * value)


class _Entry(NamedTuple):
    parts: tuple[str, ...]  # the path of names in gradtx.hyperparams' nesting
    key: str  # jax.tree_util.keystr of the leaf (constant) or of the Adjusted (schedule)
    scheduled: bool
    value: Any


def _copy(obj: Struct, **changes: Any) -> Any:
    new = object.__new__(type(obj))
    for f in fields(obj):
        object.__setattr__(new, f.name, changes.get(f.name, getattr(obj, f.name)))
    return new


def _template(obj: Any, kp: tuple, parts: tuple, out: list[_Entry]) -> Any:
    """``obj`` with each scheduled hyperparameter wrapped in :class:`Adjusted`; ``out``
    collects one entry per numeric hyperparameter."""
    attr = jax.tree_util.GetAttrKey
    if isinstance(obj, Chain):
        stages = tuple(
            _template(s, (*kp, attr("stages"), jax.tree_util.SequenceKey(i)), (*parts, n), out)
            for i, (n, s) in enumerate(zip(obj.names, obj.stages))
        )
        return _copy(obj, stages=stages)
    if isinstance(obj, Foreign) or not isinstance(obj, Struct) or isinstance(obj, Live):
        return obj
    changes: dict[str, Any] = {}
    labels = getattr(obj, "labels", None)
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = f.metadata.get("kind")
        here = (*kp, attr(f.name))
        if kind == "hyper" and value is not None:
            scheduled = is_schedule_like(value)
            key = jax.tree_util.keystr(here)
            out.append(_Entry((*parts, f.name), key, scheduled, value))
            if scheduled:
                changes[f.name] = Adjusted(value, 1.0, 0.0, 0.0)
        elif kind is None and isinstance(value, Struct):
            inner_parts = parts if f.name in ("inner", "opt") else (*parts, f.name)
            changes[f.name] = _template(value, here, inner_parts, out)
        elif kind is None and isinstance(value, tuple) and value:
            names = [str(x) for x in labels] if labels else [str(i) for i in range(len(value))]
            changes[f.name] = tuple(
                _template(v, (*here, jax.tree_util.SequenceKey(i)), (*parts, names[i]), out)
                for i, v in enumerate(value)
            )
    return _copy(obj, **changes) if changes else obj


def _collapse(parts: tuple[str, ...]) -> tuple[str, ...]:
    """Drops a name repeated by its owner (the η stage ``learning_rate.learning_rate``)."""
    out: list[str] = []
    for p in parts:
        if not out or out[-1] != p:
            out.append(p)
    return tuple(out)


def _candidates(p: tuple[str, ...]) -> list[str]:
    """Names for the path ``p``, shortest first: at each length the last parts
    (``scale.b2``), then one earlier part with the last ones (``no_decay.b2``: a group's)."""
    out: list[str] = []
    for k in range(1, len(p) + 1):
        out.append(".".join(p[-k:]))
        if 1 < k < len(p):
            out += [".".join((p[j], *p[-(k - 1) :])) for j in range(len(p) - k + 1)]
    return out


def _names(entries: list[_Entry]) -> list[str]:
    """The first candidate name of each entry's path that no other path could be called."""
    paths = [_collapse(e.parts) for e in entries]
    cands = [_candidates(p) for p in paths]
    names = []
    for i, mine in enumerate(cands):
        others = set().union(*(set(c) for j, c in enumerate(cands) if j != i))
        names.append(next((c for c in mine if c not in others), ".".join(paths[i])))
    return names


def live_names(tx: Any) -> dict[str, tuple[str, bool]]:
    """``{name: (dotted path, scheduled)}`` for each numeric hyperparameter :func:`live` keeps."""
    entries: list[_Entry] = []
    _template(tx, (), (), entries)
    return {
        n: (".".join(_collapse(e.parts)), e.scheduled) for n, e in zip(_names(entries), entries)
    }


def _float_dtype(params: Any) -> Any:
    leaves = jax.tree_util.tree_leaves(params)
    if any(getattr(x, "dtype", None) == jnp.float64 for x in leaves):
        return jnp.float64
    return jnp.float32


class Live(GradientTransformation):
    """``inner`` with its numeric hyperparameters in the state; see the module docstring."""

    inner: Any = None
    dtype: Any = static(None)

    def __post_init__(self) -> None:
        if not isinstance(self.inner, GradientTransformation) or isinstance(self.inner, Foreign):
            raise TypeError(
                f"gradtx.live: inner must be a gradtx transformation, got "
                f"{type(self.inner).__name__} (an optax transformation keeps its hyperparameters "
                "in closures; wrap its factory with gradtx.inject_hyperparams instead)"
            )
        super().__post_init__()

    def _parts(self) -> tuple[Any, list[_Entry], list[str]]:
        entries: list[_Entry] = []
        template = _template(self.inner, (), (), entries)
        return template, entries, _names(entries)

    def init(self, params: Any) -> State:
        _, entries, names = self._parts()
        dtype = self.dtype or _float_dtype(params)

        def leaf(v: Any) -> Any:
            return scalar_like(params, v, dtype) if jnp.ndim(v) == 0 else jnp.asarray(v, dtype)

        values = {n: leaf(e.value) for n, e in zip(names, entries) if not e.scheduled}
        schedules = {
            n: State(
                multiplier=leaf(1.0),
                override=leaf(0.0),
                overridden=scalar_like(params, False, jnp.bool_),
            )
            for n, e in zip(names, entries)
            if e.scheduled
        }
        return State(hyperparams=values, schedules=schedules, inner_state=self.inner.init(params))

    def current(self, state: Any) -> Any:
        """``inner`` with the hyperparameters that ``state`` holds (the transformation run)."""
        template, entries, names = self._parts()
        sub: dict[str, Any] = {}
        for n, e in zip(names, entries):
            try:
                if e.scheduled:
                    s = state["schedules"][n]
                    sub[e.key + ".multiplier"] = s["multiplier"]
                    sub[e.key + ".override"] = s["override"]
                    sub[e.key + ".overridden"] = s["overridden"]
                else:
                    sub[e.key] = state["hyperparams"][n]
            except KeyError:
                raise TransformError(
                    f"gradtx.live: state holds no hyperparameter {n!r} (was it built by "
                    "another transformation?)"
                ) from None
        flat, treedef = jax.tree_util.tree_flatten_with_path(template)
        leaves = [sub.get(jax.tree_util.keystr(kp), x) for kp, x in flat]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, _ENTRIES, updates, params)
        out, inner_state = self.current(state).update(
            updates, state["inner_state"], params, **extra
        )
        return out, State(
            hyperparams=state["hyperparams"],
            schedules=state["schedules"],
            inner_state=inner_state,
        )

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.current(state), state["inner_state"])]


def live(tx: Any, dtype: Any = None) -> Live:
    """``tx`` with every numeric hyperparameter in its state, changeable without recompiling.

    Under ``nnx.Optimizer`` + ``nnx.jit`` or a linen ``TrainState`` + ``jax.jit``, the
    transformation is static data: a new learning rate given as a new transformation is a new
    program. Kept in the state, it is a new input of the same program. The exact rule and the
    names are in :mod:`gradtx._wrappers.live`.

    Args:
      tx: a gradtx transformation (a named optimizer, a chain, a wrapper).
      dtype: the dtype of the values in the state (default: float64 if the params have
        float64 leaves, else float32).

    Returns:
      A :class:`Live`; its state is ``State(hyperparams, schedules, inner_state)``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.live(gradtx.adamw(1e-3, weight_decay=0.1))
      >>> state = tx.init({"w": jnp.ones(2)})
      >>> float(state.hyperparams["learning_rate"])
      0.0010000000474974513
      >>> state = gradtx.set_hyperparams(state, learning_rate=5e-4)
      >>> float(gradtx.current_learning_rate(tx, state))
      0.0005000000237487257
    """
    return Live(tx, dtype)
