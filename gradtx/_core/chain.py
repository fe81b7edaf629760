"""Chaining transformations; the chain's state is a :class:`State` keyed by stage name."""

from __future__ import annotations

from typing import Any

from .state import State
from .struct import static
from .transformation import GradientTransformation
from .tree import TransformError

__all__ = ["Chain", "chain", "stage_name"]


def stage_name(tx: Any) -> str:
    """The name a transformation gets inside a chain (a foreign one: ``optax``)."""
    return tx.name if isinstance(tx, GradientTransformation) else "optax"


def _unique(names: list[str]) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}_{k}")
    return tuple(out)


def _is_transformation(tx: Any) -> bool:
    return callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))


class Foreign(GradientTransformation):
    """Wraps a transformation from another library (optax) as static data inside a chain."""

    name = "optax"
    tx: Any = static()

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, Any]:
        return _foreign_update(self.tx, updates, state, params, extra)

    def __repr__(self) -> str:
        return f"Foreign({self.tx!r})"


class Chain(GradientTransformation):
    """Applies transformations in order: the updates of one are the input of the next.

    ``stages`` holds gradtx transformations (pytree children: their hyperparameters stay
    traceable) and foreign ones such as optax's (static data). The state is a
    :class:`~gradtx.State` with one entry per stage, named after the stage (``state.knobs``,
    ``state["clip_by_global_norm"]``) and also reachable by position (``state[0]``).
    """

    stages: tuple = ()
    names: tuple = static(())

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        for i, tx in enumerate(stages):
            if not _is_transformation(tx):
                raise TypeError(
                    f"gradtx.chain: stage {i} is {type(tx).__name__}, not a transformation "
                    "(an object with init and update)"
                )
        names = tuple(self.names) or _unique([stage_name(t) for t in stages])
        if len(names) != len(stages) or len(set(names)) != len(names):
            raise ValueError(f"gradtx.chain: names {names} must be unique, one per stage")
        stages = tuple(t if isinstance(t, GradientTransformation) else Foreign(t) for t in stages)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "names", names)
        super().__post_init__()

    def init(self, params: Any) -> State:
        return State({n: tx.init(params) for n, tx in zip(self.names, self.stages)})

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        if not hasattr(state, "__len__"):
            raise TransformError(
                f"gradtx.{self.name}: state is not this transformation's state (expected one "
                f"entry per stage, {list(self.names)}, got {type(state).__name__})"
            )
        if len(state) != len(self.stages):
            raise TransformError(
                f"gradtx.chain: state has {len(state)} entries for {len(self.stages)} stages"
            )
        new = {}
        for n, tx, s in zip(self.names, self.stages, _entries(state)):
            updates, new[n] = tx.update(updates, s, params, **extra)
        return updates, State(new)

    def __repr__(self) -> str:
        return f"chain({', '.join(repr(t) for t in self.stages)})"


def _entries(state: Any) -> list:
    if isinstance(state, State):
        return list(dict.values(state))
    return list(state)


def _foreign_update(tx: Any, updates: Any, state: Any, params: Any, extra: dict) -> tuple:
    """Calls an optax transformation, passing extra arguments only if it accepts them."""
    try:
        import optax  # noqa: PLC0415  (optional dependency)

        if isinstance(tx, optax.GradientTransformationExtraArgs):
            return tx.update(updates, state, params, **extra)
    except ImportError:  # pragma: no cover
        pass
    return tx.update(updates, state, params)


def chain(*transformations: Any, names: tuple[str, ...] | None = None) -> Chain:
    """Composes transformations, applied left to right.

    Args:
      *transformations: gradtx or optax transformations.
      names: optional names of the stages in the state (default: each stage's own name,
        made unique with a suffix).

    Returns:
      A :class:`Chain`. Its state is a :class:`~gradtx.State` keyed by stage name.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(1e-3))
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> list(state)
      ['clip_by_global_norm', 'adam']
    """
    return Chain(tuple(transformations), tuple(names or ()))


def as_inner(owner: str, tx: Any, arg: str = "inner") -> Any:
    """``tx`` as a gradtx transformation: gradtx's as is (a pytree child, so its
    hyperparameters stay traceable), another library's (optax) as static data."""
    if isinstance(tx, GradientTransformation):
        return tx
    if callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None)):
        return Foreign(tx)
    raise TypeError(
        f"gradtx.{owner}: {arg} must be a transformation (an object with init and update), "
        f"got {type(tx).__name__}"
    )
