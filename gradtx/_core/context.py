"""What a per-array rule reads besides its own array: :class:`Context` (the step, ``t`` and the
stage's global values) and, on a packed buffer, :class:`SegmentContext`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .pieces import leaf_sums

__all__ = ["Context", "SegmentContext"]


class Context:
    """What a per-array rule may read besides its own array: the step and global values.

    Besides the attributes below, every value returned by the stage's :meth:`Stage.prepare`
    (e.g. a global norm) is an attribute, in the rule's compute dtype.

    Attributes:
      step: int32 number of updates already applied (0 at the first update), or ``None`` when
        the stage keeps no counter.
      t: ``step + 1`` (saturating at the int32 maximum) as a float in the rule's compute dtype
        (for bias corrections), or ``None``.
      extra: the keyword arguments given to ``update``.
    """

    def __getattr__(self, name: str) -> Any:  # only called for names prepare() did not give
        given = sorted(k for k in vars(self) if k not in ("step", "t", "extra") and k[0] != "_")
        raise AttributeError(
            f"Context has no value {name!r} (values come from the stage's prepare(); "
            f"this one gave {given})"
        )

    def __init__(self, step: Any, t: Any, values: Mapping[str, Any], extra: Mapping[str, Any]):
        self.step = step
        self.t = t
        self.extra = extra
        self.__dict__.update(values)

    def leaf_sum(self, x: jax.Array) -> jax.Array:
        """The sum of ``x`` over the whole parameter array, broadcastable against ``x``.

        A rule that reduces only through this and :meth:`leaf_mean` can declare
        :attr:`Stage.leafwise`: on a packed buffer it then gets each leaf's own sum per element.
        """
        return jnp.sum(x)

    def leaf_mean(self, x: jax.Array) -> jax.Array:
        """The mean of ``x`` over the whole parameter array (see :meth:`leaf_sum`)."""
        return jnp.mean(x)


class SegmentContext(Context):
    """The context of a :attr:`Stage.leafwise` rule run on a whole packed buffer: the same
    values, but ``leaf_sum``/``leaf_mean`` reduce over each leaf's segment of the buffer and
    return one value per element."""

    def __init__(self, base: Context, group: Any):
        self.__dict__.update(vars(base))
        self._group = group

    def leaf_sum(self, x: jax.Array) -> jax.Array:
        return leaf_sums(x, self._group)

    def leaf_mean(self, x: jax.Array) -> jax.Array:
        return leaf_sums(x, self._group, mean=True)
