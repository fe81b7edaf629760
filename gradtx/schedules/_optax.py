r"""optax's schedule names, with optax's signatures, as gradtx schedules.

Where gradtx has the same schedule with the same arguments, the optax name is the same object
(``gradtx.schedules.linear_schedule is gradtx.schedules.linear``). The others are factories
with optax's signature that build a gradtx schedule value (a frozen pytree: changing a float
argument under ``jax.jit`` does not recompile). See the table in docs/schedules.md.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ._basic import Constant, Linear, constant, linear
from ._decay import (
    ExponentialDecay,
    cosine_decay,
    exponential_decay,  # noqa: F401  (an optax name: in __all__ through OPTAX_NAMES)
    piecewise_constant,
    polynomial,
)
from ._interpolate import PiecewiseInterpolate
from ._join import JoinSchedules, join_schedules  # noqa: F401  (an optax name, as above)
from ._warmup import warmup_constant, warmup_cosine_decay

#: Every schedule name of ``optax.schedules`` (optax 0.2.8) that gradtx provides, with
#: optax's signature; ``inject_hyperparams`` and the stateful schedules are not schedules.
OPTAX_NAMES = (
    "constant_schedule",
    "linear_schedule",
    "polynomial_schedule",
    "exponential_decay",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_constant_schedule",
    "warmup_exponential_decay_schedule",
    "sgdr_schedule",
    "cosine_onecycle_schedule",
    "linear_onecycle_schedule",
    "join_schedules",
)

__all__ = ["OPTAX_NAMES", *OPTAX_NAMES]

#: optax's ``constant_schedule``: :func:`constant`.
constant_schedule = constant
#: optax's ``linear_schedule``: :func:`linear`.
linear_schedule = linear
#: optax's ``polynomial_schedule``: :func:`polynomial`.
polynomial_schedule = polynomial
#: optax's ``piecewise_constant_schedule``: :func:`piecewise_constant`.
piecewise_constant_schedule = piecewise_constant
#: optax's ``cosine_decay_schedule``: :func:`cosine_decay`.
cosine_decay_schedule = cosine_decay
#: optax's ``warmup_cosine_decay_schedule``: :func:`warmup_cosine_decay`.
warmup_cosine_decay_schedule = warmup_cosine_decay
#: optax's ``warmup_constant_schedule``: :func:`warmup_constant`.
warmup_constant_schedule = warmup_constant

_T = TypeVar("_T")


def _named(name: str, build: Callable[[], _T]) -> _T:
    """``build()``, with a ``ValueError`` of a part renamed ``gradtx.<name>: <part>: ...``."""
    try:
        return build()
    except ValueError as error:
        message = str(error).removeprefix("gradtx.")
        raise ValueError(f"gradtx.{name}: {message}") from error


def _int_steps(name: str, field: str, value: Any, minimum: int) -> int:
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, float) and value.is_integer()
    )
    if isinstance(value, bool) or not integral or int(value) < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"gradtx.{name}: {field} must be an integer {bound}, got {value!r}")
    return int(value)


def _python_number(name: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"gradtx.{name}: {field} must be a Python number (it places a boundary step), "
            f"got {value!r}"
        )
    return float(value)


def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: float,
    boundaries_and_scales: dict[int, float] | None = None,
) -> PiecewiseInterpolate:
    r"""optax's ``piecewise_interpolate_schedule``: interpolation between accumulated scales.

    From step :math:`b_{k-1}` to :math:`b_k` the value moves (linearly or along a half
    cosine, ``interpolate_type``) from :math:`v_0 \prod_{i<k} c_i` to
    :math:`v_0 \prod_{i \le k} c_i`, and stays at :math:`v_0 \prod_i c_i` after the last
    boundary (see :class:`PiecewiseInterpolate`).

    Example:
      >>> sched = gradtx.schedules.piecewise_interpolate_schedule("linear", 1.0, {4: 0.5})
      >>> [round(float(sched(s)), 4) for s in (0, 2, 4, 10)]
      [1.0, 0.75, 0.5, 0.5]
    """
    pairs: Any = boundaries_and_scales or {}
    items = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
    try:
        items.sort(key=lambda item: item[0])
    except TypeError:
        raise ValueError(
            "gradtx.piecewise_interpolate_schedule: boundaries_and_scales must be a dict "
            f"{{step: scale}}, got {boundaries_and_scales!r}"
        ) from None
    return PiecewiseInterpolate(
        interpolate_type,
        init_value,
        tuple(b for b, _ in items),
        tuple(c for _, c in items),
    )


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> PiecewiseInterpolate:
    r"""optax's one-cycle schedule with cosine annealing (not torch's; see :func:`one_cycle`).

    A cosine from :math:`v_p / d` (``d = div_factor``) at step 0 to ``peak_value`` at step
    :math:`\lfloor \mathrm{pct\_start} \cdot T \rfloor`, then a cosine to
    :math:`v_p / (d \cdot \mathrm{final\_div\_factor})` at step :math:`T` and constant after:
    ``piecewise_interpolate_schedule("cosine", v_p / d, {⌊pct_start·T⌋: d, T: 1 / (d·f)})``.
    ``pct_start`` must be a Python number (it places a boundary).

    Example:
      >>> sched = gradtx.schedules.cosine_onecycle_schedule(100, 1.0, pct_start=0.2)
      >>> [round(float(sched(s)), 4) for s in (0, 20, 100, 150)]
      [0.04, 1.0, 0.0, 0.0]
    """
    name = "cosine_onecycle_schedule"
    steps = _int_steps(name, "transition_steps", transition_steps, 1)
    first = int(_python_number(name, "pct_start", pct_start) * steps)
    return _named(
        name,
        lambda: piecewise_interpolate_schedule(
            "cosine",
            peak_value / div_factor,
            {first: div_factor, steps: 1.0 / (div_factor * final_div_factor)},
        ),
    )


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> PiecewiseInterpolate:
    r"""optax's linear one-cycle schedule: up, down, then a final decay, all linear.

    ``piecewise_interpolate_schedule("linear", v_p / d, {⌊pct_start·T⌋: d,
    ⌊pct_final·T⌋: 1 / d, T: 1 / f})`` with ``d = div_factor`` and ``f = final_div_factor``:
    from :math:`v_p / d` to ``peak_value``, back to :math:`v_p / d`, then to
    :math:`v_p / (d f)` at step :math:`T`. ``pct_start`` and ``pct_final`` must be Python
    numbers (they place boundaries).

    Example:
      >>> sched = gradtx.schedules.linear_onecycle_schedule(100, 1.0, pct_start=0.2)
      >>> [round(float(sched(s)), 4) for s in (0, 20, 85, 150)]
      [0.04, 1.0, 0.04, 0.0]
    """
    name = "linear_onecycle_schedule"
    steps = _int_steps(name, "transition_steps", transition_steps, 1)
    first = int(_python_number(name, "pct_start", pct_start) * steps)
    second = int(_python_number(name, "pct_final", pct_final) * steps)
    return _named(
        name,
        lambda: piecewise_interpolate_schedule(
            "linear",
            peak_value / div_factor,
            {first: div_factor, second: 1.0 / div_factor, steps: 1.0 / final_div_factor},
        ),
    )


def warmup_exponential_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> JoinSchedules:
    r"""optax's linear warmup followed by an exponential decay.

    Linear from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    ``exponential_decay(peak_value, transition_steps, decay_rate, transition_begin,
    staircase, end_value)`` of the steps since the warmup (a :class:`JoinSchedules` of a
    :class:`Linear` and an :class:`ExponentialDecay`).

    Example:
      >>> sched = gradtx.schedules.warmup_exponential_decay_schedule(0.0, 1.0, 10, 10, 0.5)
      >>> [round(float(sched(s)), 4) for s in (0, 5, 10, 20, 30)]
      [0.0, 0.5, 1.0, 0.5, 0.25]
    """
    name = "warmup_exponential_decay_schedule"
    warm = _int_steps(name, "warmup_steps", warmup_steps, 0)

    def build() -> JoinSchedules:
        first = Linear(init_value, peak_value, warm) if warm > 0 else Constant(init_value)
        decay = ExponentialDecay(
            peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value
        )
        return JoinSchedules((first, decay), (warm,))

    return _named(name, build)


def sgdr_schedule(cosine_kwargs: Iterable[dict[str, Any]]) -> JoinSchedules:
    r"""optax's SGDR: warmup-cosine cycles one after another (Loshchilov & Hutter, 2017).

    Each dict of ``cosine_kwargs`` holds the arguments of one
    :func:`warmup_cosine_decay` cycle; a cycle starts when the previous one's
    ``decay_steps`` have passed (a :class:`JoinSchedules`). For torch's
    ``CosineAnnealingWarmRestarts`` see :func:`cosine_restarts`.

    Example:
      >>> cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10)
      >>> sched = gradtx.schedules.sgdr_schedule([cycle, cycle])
      >>> [round(float(sched(s)), 4) for s in (0, 2, 10, 12)]
      [0.0, 1.0, 0.0, 1.0]
    """

    def build() -> JoinSchedules:
        cycles = [warmup_cosine_decay(**kwargs) for kwargs in cosine_kwargs]
        boundaries, total = [], 0
        for cycle in cycles[:-1]:
            total += cycle.decay_steps
            boundaries.append(total)
        return JoinSchedules(tuple(cycles), tuple(boundaries))

    return _named("sgdr_schedule", build)
