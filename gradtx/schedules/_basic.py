"""Basic schedules: constant and linear."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.struct import hyper, static
from ._base import Schedule
from ._util import elapsed, remaining, set_steps

__all__ = ["Constant", "Linear", "constant", "linear"]


class Constant(Schedule):
    r"""``init_value`` at every step: :math:`\eta_s = v_0`.

    optax: ``optax.constant_schedule``; torch: no scheduler (a fixed ``lr``).
    """

    init_value: float = hyper(1.0)

    def evaluate(self, step: jax.Array) -> jax.Array:
        return jnp.full(jnp.shape(step), self.init_value, jnp.float32)


class Linear(Schedule):
    r"""Linear interpolation from ``init_value`` to ``end_value`` over ``transition_steps``,
    starting at ``transition_begin``: :math:`v_0 + (v_1 - v_0)\,\mathrm{clip}((s - b)/T, 0, 1)`.

    optax: ``optax.linear_schedule``; torch: ``LinearLR(start_factor=v_0/lr, end_factor=v_1/lr,
    total_iters=T)`` when ``b = 0``. Unlike optax, ``transition_steps = 0`` is an error rather
    than a constant ``init_value``.
    """

    init_value: float = hyper()
    end_value: float = hyper()
    transition_steps: int = static()
    transition_begin: int = static(0)

    def __post_init__(self) -> None:
        super().__post_init__()
        set_steps(self, "transition_steps", minimum=1)
        set_steps(self, "transition_begin", minimum=0)

    def evaluate(self, step: jax.Array) -> jax.Array:
        # From the steps done in the first half and from the steps left in the second (both
        # exact in int32), so the value keeps its relative precision at either end.
        t = float(self.transition_steps)
        done = elapsed(step, self.transition_begin, self.transition_steps).astype(jnp.float32)
        rem = remaining(step, self.transition_begin, self.transition_steps)
        d = self.end_value - self.init_value
        return jnp.where(done < t / 2, self.init_value + d * (done / t), self.end_value - d * rem)


def constant(value: float) -> Constant:
    """A constant schedule: ``value`` at every step (see :class:`Constant`).

    Example:
      >>> float(gradtx.schedules.constant(0.1)(1000))
      0.10000000149011612
    """
    return Constant(value)


def linear(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Linear:
    r"""Linear from ``init_value`` to ``end_value`` over ``transition_steps`` steps.

    :math:`v_0 + (v_1 - v_0)\,\mathrm{clip}((s - b)/T, 0, 1)`, ``b = transition_begin``;
    ``end_value`` from step ``b + T`` on (see :class:`Linear`).

    Example:
      >>> sched = gradtx.schedules.linear(1.0, 0.0, transition_steps=10)
      >>> [round(float(sched(s)), 4) for s in (0, 5, 10, 20)]
      [1.0, 0.5, 0.0, 0.0]
    """
    return Linear(init_value, end_value, transition_steps, transition_begin)
