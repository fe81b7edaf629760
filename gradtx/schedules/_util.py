r"""Helpers shared by the schedules: argument checks at construction and accurate ramps.

The checks run once, in ``__post_init__``, on Python values. A hyperparameter that is a tracer
(a schedule built inside ``jax.jit`` or ``jax.vmap``) is not checked: :func:`concrete` returns
``None`` for it.

The ramps avoid cancellation in float32. The cosine factor
:math:`\tfrac12(1 + \cos \pi p)` is computed as :math:`\sin^2(\tfrac\pi2 (1 - p))` from the
*remaining* fraction :math:`1 - p`, which is exact for integer steps, so the value keeps its
relative precision as it approaches zero at the end of a decay.

Integer steps stay exact. The step is an int32 for integer counts (see ``as_step``), and
every integer part of a phase (the steps since its start, the steps left, a position in a
cycle) is computed in int32 before a small count or a fraction is converted to float32, so a
schedule is as accurate at step :math:`2^{31} - 1` as at step 10 (a float32 step is exact only
up to :math:`2^{24}`). Step counts given at construction may exceed the int32 range: a
boundary past :math:`2^{31} - 1` is one an int32 count never reaches, which the helpers
decide when tracing instead of comparing with an out-of-range constant.
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
    "set_pairs",
    "INT_MAX",
    "is_integer",
    "reached",
    "elapsed",
    "left",
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


INT_MAX = 2**31 - 1  #: the largest int32 count


def is_integer(step: jax.Array) -> bool:
    """Whether the step is an (exact) integer array rather than a float one."""
    return bool(jnp.issubdtype(step.dtype, jnp.integer))


def reached(step: jax.Array, boundary: int) -> jax.Array:
    """``step >= boundary``; always False for an int32 step and a boundary past its range."""
    if is_integer(step) and boundary > INT_MAX:
        return jnp.zeros(jnp.shape(step), jnp.bool_)
    return step >= (boundary if is_integer(step) else float(boundary))


def elapsed(step: jax.Array, begin: int, limit: int | None = None) -> jax.Array:
    r"""Steps since ``begin``, :math:`\mathrm{clip}(s - b, 0, L)` (no upper clip without ``limit``).

    Exact int32 for an integer step (no overflow, whatever the size of ``begin`` and
    ``limit``); float32 for a float step.
    """
    if not is_integer(step):
        since = jnp.maximum(step - float(begin), 0.0)
        return since if limit is None else jnp.minimum(since, float(limit))
    if begin > INT_MAX:
        return jnp.zeros_like(step)
    since = jnp.maximum(step, begin) - begin  # in [0, INT_MAX - begin]: no overflow
    if limit is not None and limit < INT_MAX - begin:
        since = jnp.minimum(since, limit)
    return since


def left(step: jax.Array, begin: int, steps: int) -> jax.Array:
    r"""Steps left in the phase :math:`[b, b + T)`: :math:`\mathrm{clip}(b + T - s, 0, T)`, float32.

    For an integer step the difference is taken in int32 (split at :math:`2^{31} - 1` when
    :math:`b + T` is beyond it), so only the small result is rounded to float32.
    """
    if not is_integer(step):
        return jnp.clip(float(begin + steps) - step, 0.0, float(steps))
    end = begin + steps
    if begin > INT_MAX:
        return jnp.full(jnp.shape(step), float(steps), jnp.float32)
    if end <= INT_MAX:
        return (end - jnp.clip(step, begin, end)).astype(jnp.float32)
    # end - s = (end - INT_MAX) + (INT_MAX - s), the second term an exact int32 >= 0.
    return (INT_MAX - jnp.maximum(step, begin)).astype(jnp.float32) + float(end - INT_MAX)


def remaining(step: jax.Array, begin: int, steps: int) -> jax.Array:
    r"""Fraction of a transition still ahead: :math:`\mathrm{clip}((b + T - s) / T, 0, 1)`.

    1 before ``begin``, 0 from ``begin + steps`` on. ``steps`` must be positive. The steps
    left are exact for integer steps (see :func:`left`).
    """
    return left(step, begin, steps) / float(steps)


def half_cosine(rem: jax.Array) -> jax.Array:
    r"""The cosine factor :math:`\tfrac12(1 + \cos \pi p) = \sin^2(\tfrac\pi2 (1 - p))`.

    ``rem`` is the remaining fraction :math:`1 - p`; 1 at the start, 0 at the end.
    """
    return jnp.square(jnp.sin((0.5 * jnp.pi) * rem))


def warmup(step: jax.Array, init_value: Any, peak_value: Any, warmup_steps: int) -> jax.Array:
    r"""Linear warmup :math:`v_0 + (v_p - v_0)\,\min(s / W, 1)`; ``peak_value`` when ``W = 0``."""
    if warmup_steps == 0:
        return jnp.full([], peak_value, jnp.float32)
    frac = elapsed(step, 0, warmup_steps).astype(jnp.float32) / float(warmup_steps)
    return init_value + (peak_value - init_value) * frac


def set_pairs(schedule: Any, field: str) -> tuple[tuple[int, float], ...]:
    """Checks ``schedule.<field>``, a dict ``{step: scale}`` (or pairs, or None), and stores it
    as a tuple of ``(int, float)`` pairs sorted by step.

    Steps must be distinct integers ``>= 0`` (of any size) and scales numbers ``>= 0``.
    """
    pairs: Any = getattr(schedule, field)
    if pairs is None:
        pairs = ()
    if isinstance(pairs, dict):
        pairs = pairs.items()
    try:
        pairs = [(b, s) for b, s in pairs]
    except (TypeError, ValueError):
        fail(schedule, f"{field} must be a dict {{step: scale}}, got {pairs!r}")
    for b, s in pairs:
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 0:
            fail(schedule, f"boundaries must be integers >= 0, got {b!r}")
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not float(s) >= 0:
            fail(schedule, f"scales must be numbers >= 0, got {s!r} at step {b}")
    steps = [int(b) for b, _ in pairs]
    if len(set(steps)) != len(steps):
        fail(schedule, f"boundaries must be distinct, got {sorted(steps)}")
    out = tuple(sorted((int(b), float(s)) for b, s in pairs))
    object.__setattr__(schedule, field, out)
    return out
