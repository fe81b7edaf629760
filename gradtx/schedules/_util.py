r"""Helpers shared by the schedules: argument checks at construction and accurate ramps.

The checks run once, in ``__post_init__``, on Python values. A hyperparameter that is a tracer
(a schedule built inside ``jax.jit`` or ``jax.vmap``) is not checked: :func:`concrete` returns
``None`` for it.

The ramps avoid cancellation in float32. The cosine factor
:math:`\tfrac12(1 + \cos \pi p)` is computed as :math:`\sin^2(\tfrac\pi2 (1 - p))` from the
*remaining* fraction :math:`1 - p`, which is exact for integer steps, so the value keeps its
relative precision as it approaches zero at the end of a decay.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "fail",
    "set_steps",
    "set_choice",
    "concrete",
    "check_open_unit",
    "remaining",
    "half_cosine",
    "warmup",
]


def fail(schedule: Any, message: str) -> None:
    """Raises ``ValueError("gradtx.<schedule name>: <message>")``."""
    raise ValueError(f"gradtx.{schedule.name}: {message}")


def set_steps(schedule: Any, field: str, minimum: int = 0) -> int:
    """Checks that ``schedule.<field>`` is an integer step count ``>= minimum``; stores an int.

    Integer-valued floats (``1e4``) are accepted and stored as ``int``, so equal configurations
    hash equal however they were written.
    """
    value = getattr(schedule, field)
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, float) and value.is_integer()
    )
    if isinstance(value, bool) or not integral:
        fail(schedule, f"{field} must be an integer number of steps, got {value!r}")
    value = int(value)
    if value < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        fail(schedule, f"{field} must be {bound}, got {value}")
    object.__setattr__(schedule, field, value)
    return value


def set_choice(schedule: Any, field: str, choices: tuple[str, ...]) -> str:
    """Checks that ``schedule.<field>`` is one of ``choices``."""
    value = getattr(schedule, field)
    if value not in choices:
        fail(schedule, f"{field} must be one of {choices}, got {value!r}")
    return value


def concrete(value: Any) -> float | None:
    """The value of a hyperparameter given as a Python number, else ``None`` (a tracer)."""
    return value if isinstance(value, float) else None


def check_open_unit(schedule: Any, field: str) -> None:
    """Checks ``0 < schedule.<field> < 1`` when the value is concrete."""
    value = concrete(getattr(schedule, field))
    if value is not None and not 0.0 < value < 1.0:
        fail(schedule, f"{field} must be in (0, 1), got {value!r}")


def remaining(step: jax.Array, begin: Any, steps: Any) -> jax.Array:
    r"""Fraction of a transition still ahead: :math:`\mathrm{clip}((b + T - s) / T, 0, 1)`.

    1 before ``begin``, 0 from ``begin + steps`` on. ``steps`` must be positive.
    """
    return jnp.clip((begin + steps - step) / steps, 0.0, 1.0)


def half_cosine(rem: jax.Array) -> jax.Array:
    r"""The cosine factor :math:`\tfrac12(1 + \cos \pi p) = \sin^2(\tfrac\pi2 (1 - p))`.

    ``rem`` is the remaining fraction :math:`1 - p`; 1 at the start, 0 at the end.
    """
    return jnp.square(jnp.sin((0.5 * jnp.pi) * rem))


def warmup(step: jax.Array, init_value: Any, peak_value: Any, warmup_steps: int) -> jax.Array:
    r"""Linear warmup :math:`v_0 + (v_p - v_0)\,\min(s / W, 1)`; ``peak_value`` when ``W = 0``."""
    if warmup_steps == 0:
        return jnp.full([], peak_value, jnp.float32)
    frac = jnp.clip(step / warmup_steps, 0.0, 1.0)
    return init_value + (peak_value - init_value) * frac
