"""The lecture's knobs as values, and the stage that turns a direction and a scale together.

The update of every adaptive optimizer is ``θ ← θ − η_t · m_t / σ_t``:

- a :class:`Direction` knob makes ``m_t`` from the gradients (momentum, EMA, Nesterov, sign);
- a :class:`Scale` knob makes the per-parameter ``σ_t`` from past gradient magnitudes and
  returns ``m_t / σ_t`` (Adagrad, RMSProp, Adam, ...);
- the schedule ``η_t`` is a separate stage (:func:`gradtx.scale_by_learning_rate`).

Both knobs of an Adam-like optimizer read the *raw* gradient ``g_t`` (σ is not computed from
``m``), so they cannot be two stages of a chain; :class:`Knobs` runs them side by side on one
array. With ``scale_first=True`` the direction is applied to the scaled gradient instead
(RMSProp with momentum as in PyTorch, Adafactor's momentum, LARS).

A knob is written for one array, like a :class:`~gradtx.Stage`: ``slots`` it keeps,
``init_leaf`` and ``step``. Its hyperparameters are fields made with :func:`gradtx.hyper`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .context import Context
from .stage import Stage
from .struct import Struct, static

__all__ = ["Knob", "Direction", "Scale", "Knobs"]


class Knob(Struct):
    """Base of direction and scale knobs: a rule for one array with named state slots."""

    slots: ClassVar[tuple[str, ...]] = ()
    needs_step: ClassVar[bool] = False
    needs_params: ClassVar[bool] = False
    #: One line saying what the knob computes, shown by ``describe()``.
    summary: ClassVar[str] = ""
    #: The rule works element by element (see :attr:`gradtx.Stage.elementwise`).
    elementwise: ClassVar[bool] = False

    def init_leaf(self, param: jax.Array) -> dict[str, jax.Array]:
        return {s: jnp.zeros_like(param, dtype=jnp.result_type(param)) for s in self.slots}

    def describe(self) -> str:
        return f"{self!r}: {self.summary}" if self.summary else repr(self)


class Direction(Knob):
    """The g knob: ``step(g, slots, ctx) -> (m, slots)``."""

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        raise NotImplementedError


class Scale(Knob):
    """The σ knob: ``step(g, m, slots, param, ctx) -> (m / σ, slots)``.

    ``g`` is the raw gradient the statistic is built from, ``m`` the direction to divide.
    A knob with ``reads_direction = True`` also receives ``direction=``, the direction knob's
    updated slots (AdaBelief's σ is built from ``g_t - m_t``).
    """

    reads_direction: ClassVar[bool] = False

    def step(
        self, g: jax.Array, m: jax.Array, slots: dict, param: jax.Array | None, ctx: Context
    ) -> tuple[jax.Array, dict]:
        raise NotImplementedError


class Knobs(Stage):
    """Runs a direction knob and a scale knob on each array: ``u = m_t / σ_t``.

    State: ``count`` (if a knob needs the step or a hyperparameter is scheduled) and the slots
    of both knobs (e.g. ``mu`` from the direction, ``nu`` from the scale).
    """

    name = "knobs"
    direction: Direction | None = None
    scale: Scale | None = None
    scale_first: bool = static(False)

    def __post_init__(self) -> None:
        if self.direction is not None and not isinstance(self.direction, Direction):
            raise TypeError(
                f"gradtx.knobs: direction must be a Direction knob, got "
                f"{type(self.direction).__name__}"
            )
        if self.scale is not None and not isinstance(self.scale, Scale):
            raise TypeError(
                f"gradtx.knobs: scale must be a Scale knob, got {type(self.scale).__name__}"
            )
        clash = set(self._dslots) & set(self._sslots)
        if clash:
            raise ValueError(f"gradtx.knobs: direction and scale both use slots {sorted(clash)}")
        super().__post_init__()

    @property
    def _dslots(self) -> tuple[str, ...]:
        return self.direction.slots if self.direction is not None else ()

    @property
    def _sslots(self) -> tuple[str, ...]:
        return self.scale.slots if self.scale is not None else ()

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return self._dslots + self._sslots

    @property
    def needs_step(self) -> bool:  # type: ignore[override]
        return any(k is not None and k.needs_step for k in (self.direction, self.scale))

    @property
    def needs_params(self) -> bool:  # type: ignore[override]
        return any(k is not None and k.needs_params for k in (self.direction, self.scale))

    @property
    def elementwise(self) -> bool:  # type: ignore[override]
        return all(k is None or k.elementwise for k in (self.direction, self.scale))

    def init_leaf(self, param: jax.Array) -> dict[str, jax.Array]:
        out: dict[str, Any] = {}
        for k in (self.direction, self.scale):
            if k is not None:
                out.update(k.init_leaf(param))
        return out

    def update_leaf(
        self, g: jax.Array, slots: dict, param: jax.Array | None, ctx: Context
    ) -> tuple[jax.Array, dict]:
        d = {k: slots[k] for k in self._dslots}
        s = {k: slots[k] for k in self._sslots}
        u = g
        if self.scale is not None and self.scale_first:
            u, s = self.scale.step(g, g, s, param, ctx)
        if self.direction is not None:
            u, d = self.direction.step(u, d, ctx)
        if self.scale is not None and not self.scale_first:
            kw = {"direction": d} if self.scale.reads_direction else {}
            u, s = self.scale.step(g, u, s, param, ctx, **kw)
        return u, {**d, **s}

    def __repr__(self) -> str:
        bits = [f"direction={self.direction!r}", f"scale={self.scale!r}"]
        if self.scale_first:
            bits.append("scale_first=True")
        return f"Knobs({', '.join(bits)})"
