"""The schedule value type: a frozen dataclass pytree called with the step count."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.struct import Struct

__all__ = ["Schedule", "as_step"]


def as_step(count: Any) -> jax.Array:
    """The step count as a scalar array: int32 for integer (and bool) counts, else float32.

    Integer counts stay integers so that the schedules can do their phase arithmetic (steps
    since a boundary, periods, floor divisions) exactly: a float32 count is exact only up to
    :math:`2^{24}`.
    """
    step = jnp.asarray(count)
    if jnp.issubdtype(step.dtype, jnp.integer) or step.dtype == jnp.bool_:
        return step.astype(jnp.int32)
    return step.astype(jnp.float32)


class Schedule(Struct):
    """Base of gradtx schedules: ``schedule(count) -> float32`` value of η (or any knob).

    ``count`` is the number of updates already applied: 0 at the first update. Float
    parameters (values) are pytree leaves, so a schedule passed through ``jax.jit`` can change
    its peak value without recompiling; integer step counts are static.

    A subclass implements either :meth:`value` (called with the step as a float32 scalar) or,
    to keep integer steps exact past :math:`2^{24}`, :meth:`evaluate` (called with an int32
    step for integer counts, a float32 step for float counts).
    """

    def __call__(self, count: Any) -> jax.Array:
        return jnp.asarray(self.evaluate(as_step(count))).astype(jnp.float32)

    def evaluate(self, step: jax.Array) -> jax.Array:
        """The schedule at ``step``: an int32 scalar for integer counts, float32 otherwise.

        The default converts ``step`` to float32 and calls :meth:`value`.
        """
        return self.value(step.astype(jnp.float32))

    def value(self, step: jax.Array) -> jax.Array:
        """The schedule at ``step`` (a float32 scalar); implemented by subclasses."""
        if type(self).evaluate is Schedule.evaluate:
            raise NotImplementedError(
                f"{type(self).__name__} implements neither value nor evaluate"
            )
        return self.evaluate(jnp.asarray(step))
