"""Basic schedules: constant and linear."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._struct import hyper, static
from ._base import Schedule

__all__ = ["Constant", "Linear", "constant", "linear"]


class Constant(Schedule):
    """``value`` at every step."""

    init_value: float = hyper(1.0)

    def value(self, step: jax.Array) -> jax.Array:
        return jnp.full([], self.init_value, jnp.float32)


class Linear(Schedule):
    r"""Linear interpolation from ``init_value`` to ``end_value`` over ``transition_steps``,
    starting at ``transition_begin``: :math:`v_0 + (v_1 - v_0)\,\mathrm{clip}((s - b)/T, 0, 1)`."""

    init_value: float = hyper()
    end_value: float = hyper()
    transition_steps: int = static()
    transition_begin: int = static(0)

    def value(self, step: jax.Array) -> jax.Array:
        frac = jnp.clip((step - self.transition_begin) / max(self.transition_steps, 1), 0, 1)
        return self.init_value + (self.end_value - self.init_value) * frac


def constant(value: float) -> Constant:
    """A constant schedule."""
    return Constant(value)


def linear(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Linear:
    """Linear from ``init_value`` to ``end_value`` over ``transition_steps`` steps."""
    return Linear(init_value, end_value, transition_steps, transition_begin)
