r"""Piecewise interpolation between accumulated scales (optax's ``piecewise_interpolate``)."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from .._core.struct import Struct, hyper, static
from ._base import Schedule
from ._util import concrete, elapsed, fail, half_cosine, reached, remaining, set_choice

__all__ = ["PiecewiseInterpolate", "Scale"]

_TYPES = ("linear", "cosine")


class Scale(Struct):
    """One scale factor of :class:`PiecewiseInterpolate`: a traced leaf in a static-length tuple."""

    name = "piecewise_interpolate_schedule"

    value: float = hyper()


class PiecewiseInterpolate(Schedule):
    r"""Interpolation between the values :math:`v_k = v_0 \prod_{i \le k} c_i` at boundaries.

    With boundaries :math:`b_1 < \dots < b_n` (and :math:`b_0 = 0`) and scales
    :math:`c_1, \dots, c_n`, the value moves from :math:`v_{k-1}` at step :math:`b_{k-1}` to
    :math:`v_k` at step :math:`b_k`:

    .. math::
        \eta_s = \begin{cases}
            v_{k-1} + (v_k - v_{k-1})\, f\bigl(\tfrac{s - b_{k-1}}{b_k - b_{k-1}}\bigr)
                & b_{k-1} \le s < b_k \\
            v_n & s \ge b_n
        \end{cases}

    with :math:`f(p) = p` for ``interpolate_type="linear"`` and
    :math:`f(p) = 1 - \tfrac12(1 + \cos \pi p)` for ``"cosine"``. The scales multiply: the
    value at :math:`b_k` is :math:`v_0` times every scale up to :math:`c_k`, not :math:`c_k`.

    ``scales`` holds one :class:`Scale` per boundary (floats are wrapped on construction) so
    that each is a traced leaf.

    optax: ``optax.piecewise_interpolate_schedule(interpolate_type, init_value,
    boundaries_and_scales)`` (the factory
    :func:`~gradtx.schedules.piecewise_interpolate_schedule` takes the same arguments). Unlike
    optax, boundaries must be integers ``>= 0``. The scales are traced leaves (changing one does
    not recompile); the boundaries are static.
    """

    name = "piecewise_interpolate_schedule"

    interpolate_type: str = static()
    init_value: float = hyper()
    boundaries: tuple = static(())
    scales: tuple = dataclasses.field(default=())

    def __post_init__(self) -> None:
        bounds: Any = self.boundaries
        scales: Any = self.scales
        if not isinstance(bounds, (list, tuple)) or not isinstance(scales, (list, tuple)):
            fail(self, f"boundaries and scales must be sequences, got {bounds!r}, {scales!r}")
        if len(bounds) != len(scales):
            fail(
                self, f"boundaries and scales must have the same length, got {bounds!r}, {scales!r}"
            )
        for b in bounds:
            if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 0:
                fail(self, f"boundaries must be integers >= 0, got {b!r}")
        bounds = tuple(int(b) for b in bounds)
        if list(bounds) != sorted(set(bounds)):
            fail(self, f"boundaries must be increasing, got {bounds!r}")
        checked = []
        for b, c in zip(bounds, scales):
            c = c.value if isinstance(c, Scale) else c
            if isinstance(c, bool):
                fail(self, f"scales must be numbers >= 0, got {c!r} at step {b}")
            if isinstance(c, numbers.Real):
                c = float(c)
            if concrete(c) is not None and not c >= 0:
                fail(self, f"scales must be numbers >= 0, got {c!r} at step {b}")
            checked.append(Scale(c))
        object.__setattr__(self, "boundaries", bounds)
        object.__setattr__(self, "scales", tuple(checked))
        super().__post_init__()
        set_choice(self, "interpolate_type", _TYPES)

    def evaluate(self, step: jax.Array) -> jax.Array:
        bounds = (0, *self.boundaries)
        values = [self.init_value]
        for c in self.scales:
            values.append(values[-1] * c.value)
        out = jnp.where(reached(step, bounds[-1]), values[-1], 0.0)  # 0 at negative steps
        for k in range(1, len(bounds)):
            lo, hi = bounds[k - 1], bounds[k]
            if hi <= lo:
                continue  # an empty interval (a boundary at step 0)
            start, end = values[k - 1], values[k]
            if self.interpolate_type == "linear":
                frac = elapsed(step, lo, hi - lo).astype(jnp.float32) / float(hi - lo)
                mid = start + (end - start) * frac
            else:  # the cosine factor from the exact remaining fraction
                mid = end + (start - end) * half_cosine(remaining(step, lo, hi - lo))
            inside = jnp.logical_and(reached(step, lo), jnp.logical_not(reached(step, hi)))
            out = jnp.where(inside, mid, out)
        return jnp.asarray(out, jnp.float32)
