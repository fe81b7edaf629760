"""``apply_every``: sums the updates of ``k`` steps and emits the sum every ``k``-th step
(``optax.apply_every``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core.context import Context
from .._core.stage import Stage
from .._core.struct import static
from .linesearch import count_arg

__all__ = ["ApplyEvery", "apply_every"]


class ApplyEvery(Stage):
    r"""Accumulates the updates and emits their sum every ``k`` steps, zeros in between.

    At step ``s`` (``count``, 0 at the first update), with ``c = s mod k`` and ``a`` the
    accumulator (``grad_acc``)::

        a = g            if c == 0
        a = a + g        otherwise
        u = a if c == k - 1 else 0

    State: ``count`` (int32) and ``grad_acc`` (param-shaped, in the param dtype). The updates
    equal ``optax.apply_every``'s. Differences: gradtx's ``count`` is the number of updates
    (saturating at 2³¹−1; ``c`` then stops advancing), optax's is ``s mod k``; a NaN left in
    the accumulator is dropped at the next ``c == 0`` (optax multiplies it by 0, which keeps
    it NaN).

    Note:
      As optax says, the stages before and after this one still update their state at every
      step, so ``apply_every(k)`` with ``k`` batches of size ``N/k`` is not the same as one
      batch of size ``N``: wrap the optimizer in :class:`gradtx.MultiSteps` for that.
    """

    elementwise = True

    name = "apply_every"
    slots = ("grad_acc",)
    needs_step = True
    k: int = static(1)

    def __post_init__(self) -> None:
        k: Any = self.k
        concrete = isinstance(k, np.integer) or (
            isinstance(k, jax.Array) and not isinstance(k, jax.core.Tracer) and k.ndim == 0
        )
        if concrete and jnp.issubdtype(k.dtype, jnp.integer):
            k = int(k)
        object.__setattr__(self, "k", count_arg(self.name, "k", k, 1))
        super().__post_init__()

    def update_leaf(self, g, slots, param, ctx: Context):
        c = ctx.step % self.k
        acc = jnp.where(c != 0, slots["grad_acc"], jnp.zeros_like(g)) + g
        return jnp.where(c == self.k - 1, acc, jnp.zeros_like(acc)), {"grad_acc": acc}


def apply_every(k: int = 1) -> ApplyEvery:
    """Accumulates updates and applies their sum every ``k`` steps (``optax.apply_every``).

    Args:
      k: the period, an int >= 1 (static: a new ``k`` is a new program).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.apply_every(2)
      >>> state = tx.init(jnp.zeros(1))
      >>> u, state = tx.update(jnp.array([1.0]), state)
      >>> u.tolist()
      [0.0]
      >>> u, state = tx.update(jnp.array([3.0]), state)
      >>> u.tolist()
      [4.0]
    """
    return ApplyEvery(k)
