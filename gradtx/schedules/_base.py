"""The schedule value type: a frozen dataclass pytree called with the step count."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._struct import Struct

__all__ = ["Schedule", "as_step"]


def as_step(count: Any) -> jax.Array:
    """The step count as a float32 scalar (ints, int32 tracers and floats all accepted)."""
    return jnp.asarray(count).astype(jnp.float32)


class Schedule(Struct):
    """Base of gradtx schedules: ``schedule(count) -> float32`` value of η (or any knob).

    ``count`` is the number of updates already applied: 0 at the first update. Float
    parameters (values) are pytree leaves, so a schedule passed through ``jax.jit`` can change
    its peak value without recompiling; integer step counts are static.
    """

    def __call__(self, count: Any) -> jax.Array:
        return self.value(as_step(count)).astype(jnp.float32)

    def value(self, step: jax.Array) -> jax.Array:
        """The schedule at ``step`` (a float32 scalar); implemented by subclasses."""
        raise NotImplementedError
