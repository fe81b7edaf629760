r"""Joining schedules in sequence at given boundaries."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from .._core.struct import is_schedule_like, static
from ._base import Schedule
from ._util import INT_MAX, fail, reached

__all__ = ["JoinSchedules", "join_schedules"]


class JoinSchedules(Schedule):
    r"""Schedules applied one after another, each restarted at its boundary.

    With schedules :math:`f_0, \dots, f_n` and boundaries :math:`b_1 \le \dots \le b_n`:

    .. math::
        \eta_s = f_k(s - b_k) \quad\text{for } b_k \le s < b_{k+1}
        \qquad (b_0 = 0,\ b_{n+1} = \infty)

    so the schedule after a boundary sees the steps since that boundary, and
    :math:`f_0` sees the step itself.

    optax: ``optax.join_schedules`` (same arguments). torch: ``SequentialLR(schedulers,
    milestones)`` is the closest.

    ``schedules`` is a tuple of gradtx :class:`Schedule` values (pytree children: their values
    are traced, so changing one does not recompile) or, less usefully, any callables of the
    step (then the whole tuple is static data); ``boundaries`` is a static tuple of ints.
    """

    schedules: tuple = dataclasses.field()
    boundaries: tuple = static()

    def __post_init__(self) -> None:
        if isinstance(self.schedules, (list, tuple)):
            object.__setattr__(self, "schedules", tuple(self.schedules))
        if isinstance(self.boundaries, (list, tuple)):
            object.__setattr__(self, "boundaries", tuple(self.boundaries))
        super().__post_init__()
        scheds, bounds = self.schedules, self.boundaries
        if not isinstance(scheds, tuple) or not scheds:
            fail(self, f"schedules must be a non-empty sequence, got {scheds!r}")
        for s in scheds:
            if not is_schedule_like(s):
                fail(self, f"schedules must be schedules (callables of the step), got {s!r}")
        if not isinstance(bounds, tuple) or len(bounds) != len(scheds) - 1:
            fail(
                self,
                f"boundaries must be a sequence of len(schedules) - 1 = {len(scheds) - 1} "
                f"step counts, got {bounds!r}",
            )
        for b in bounds:
            if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 0:
                fail(self, f"boundaries must be integers >= 0, got {bounds!r}")
        if list(bounds) != sorted(bounds):
            fail(self, f"boundaries must be non-decreasing, got {bounds!r}")
        object.__setattr__(self, "boundaries", tuple(int(b) for b in bounds))

    def evaluate(self, step: jax.Array) -> jax.Array:
        out = _at(self.schedules[0], step)
        for boundary, schedule in zip(self.boundaries, self.schedules[1:]):
            if not bool(jnp.issubdtype(step.dtype, jnp.integer)):
                out = jnp.where(step < float(boundary), out, _at(schedule, step - float(boundary)))
            elif boundary <= INT_MAX:  # the steps since it are exact in int32
                out = jnp.where(reached(step, boundary), _at(schedule, step - boundary), out)
        return out


def _at(schedule: Any, step: jax.Array) -> jax.Array:
    return jnp.asarray(schedule(step)).astype(jnp.float32)


def join_schedules(schedules: Any, boundaries: Any) -> JoinSchedules:
    r"""Sequentially applies ``schedules``, switching at ``boundaries`` (one fewer than them).

    The schedule after boundary :math:`b_k` is called with :math:`s - b_k` (see
    :class:`JoinSchedules`).

    Example:
      >>> warm = gradtx.schedules.linear(0.0, 1.0, transition_steps=10)
      >>> decay = gradtx.schedules.cosine_decay(1.0, decay_steps=100)
      >>> sched = gradtx.schedules.join_schedules((warm, decay), boundaries=(10,))
      >>> [round(float(sched(s)), 4) for s in (0, 5, 10, 60, 110)]
      [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    return JoinSchedules(schedules, boundaries)
