r"""Decaying schedules: polynomial, exponential, piecewise constant and cosine.

Notation in the formulas: :math:`s` is the step count (0 at the first update), :math:`v_0`
``init_value``, :math:`v_1` ``end_value``, :math:`T` ``transition_steps`` or ``decay_steps`` and
:math:`b` ``transition_begin``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.struct import hyper, static
from ._base import Schedule
from ._util import (
    INT_MAX,
    elapsed,
    fail,
    half_cosine,
    is_integer,
    reached,
    remaining,
    set_pairs,
    set_steps,
)

__all__ = [
    "Polynomial",
    "ExponentialDecay",
    "PiecewiseConstant",
    "CosineDecay",
    "polynomial",
    "exponential_decay",
    "piecewise_constant",
    "cosine_decay",
]


class Polynomial(Schedule):
    r"""Polynomial transition from ``init_value`` to ``end_value``.

    .. math::
        \eta_s = (v_0 - v_1)\,\Bigl(1 - \frac{\mathrm{clip}(s - b, 0, T)}{T}\Bigr)^{p} + v_1

    ``init_value`` until step :math:`b`, ``end_value`` from step :math:`b + T` on.

    optax: ``optax.polynomial_schedule`` (same arguments); torch:
    ``PolynomialLR(total_iters=T, power=p)`` with ``lr = v_0``, ``v_1 = 0`` and ``b = 0``.
    Unlike optax, ``transition_steps <= 0`` and ``transition_begin < 0`` are errors.
    """

    init_value: float = hyper()
    end_value: float = hyper()
    power: float = hyper(check="positive")
    transition_steps: int = static()
    transition_begin: int = static(0)

    def __post_init__(self) -> None:
        super().__post_init__()
        set_steps(self, "transition_steps", minimum=1)
        set_steps(self, "transition_begin", minimum=0)

    def evaluate(self, step: jax.Array) -> jax.Array:
        rem = remaining(step, self.transition_begin, self.transition_steps)
        return (self.init_value - self.end_value) * jnp.power(rem, self.power) + self.end_value


class ExponentialDecay(Schedule):
    r"""Exponential decay by ``decay_rate`` every ``transition_steps`` steps.

    .. math::
        \eta_s = \begin{cases}
            v_0 & s \le b \\
            v_0\, r^{(s - b)/T} & s > b
        \end{cases}

    With ``staircase=True`` the exponent is :math:`\lfloor (s - b)/T \rfloor`. ``end_value``,
    when given, bounds the value: from below when :math:`r < 1`, from above otherwise.

    optax: ``optax.exponential_decay`` (same arguments). torch: ``ExponentialLR(gamma=r)`` is
    ``T = 1``; ``StepLR(step_size=T, gamma=r)`` is ``staircase=True``. Unlike optax,
    ``transition_steps <= 0``, ``transition_begin < 0`` and ``decay_rate <= 0`` are errors
    (optax falls back to a constant or to ``transition_begin = 0``).
    """

    init_value: float = hyper()
    transition_steps: int = static()
    decay_rate: float = hyper(check="positive")
    transition_begin: int = static(0)
    staircase: bool = static(False)
    end_value: float | None = hyper(None)

    def __post_init__(self) -> None:
        super().__post_init__()
        set_steps(self, "transition_steps", minimum=1)
        set_steps(self, "transition_begin", minimum=0)
        if not isinstance(self.staircase, bool):
            fail(self, f"staircase must be a bool, got {self.staircase!r}")

    def evaluate(self, step: jax.Array) -> jax.Array:
        b, t = self.transition_begin, self.transition_steps
        if is_integer(step) and b >= INT_MAX:  # an int32 count never passes b
            out = jnp.full(jnp.shape(step), self.init_value, jnp.float32)
        else:
            since = elapsed(step, b)  # exact int32 for integer steps
            if self.staircase and is_integer(step) and t > INT_MAX:
                p = jnp.zeros(jnp.shape(step), jnp.float32)  # since < t: no stair yet
            elif self.staircase:
                p = jnp.floor_divide(since, t if is_integer(step) else float(t))
                p = p.astype(jnp.float32)
            else:
                p = since.astype(jnp.float32) / float(t)
            decayed = self.init_value * jnp.power(self.decay_rate, p)
            out = jnp.where(step > (b if is_integer(step) else float(b)), decayed, self.init_value)
        if self.end_value is not None:
            out = jnp.where(
                self.decay_rate < 1.0,
                jnp.maximum(out, self.end_value),
                jnp.minimum(out, self.end_value),
            )
        return out


class PiecewiseConstant(Schedule):
    r"""``init_value`` times the scales of every boundary already reached.

    .. math::
        \eta_s = v_0 \prod_{i:\ s \ge b_i} c_i

    for the pairs :math:`(b_i, c_i)` of ``boundaries_and_scales``: the scale :math:`c_i`
    applies from step :math:`b_i` on, and the scales multiply.

    optax: ``optax.piecewise_constant_schedule`` (same arguments). torch:
    ``MultiStepLR(milestones, gamma)`` is every :math:`c_i = \gamma`.

    ``boundaries_and_scales`` is given as a dict ``{step: scale}`` (or pairs) and stored as a
    sorted tuple of ``(int, float)`` pairs, static data: changing a scale recompiles.
    """

    init_value: float = hyper()
    boundaries_and_scales: tuple = static(())

    def __post_init__(self) -> None:
        set_pairs(self, "boundaries_and_scales")
        super().__post_init__()

    def evaluate(self, step: jax.Array) -> jax.Array:
        out = jnp.full(jnp.shape(step), self.init_value, jnp.float32)
        for boundary, scale in self.boundaries_and_scales:
            out = jnp.where(reached(step, boundary), out * scale, out)
        return out


class CosineDecay(Schedule):
    r"""Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``.

    .. math::
        \eta_s = v_0 \Bigl[(1 - \alpha)\,\Bigl(\tfrac12\bigl(1 + \cos\tfrac{\pi \min(s, T)}{T}
        \bigr)\Bigr)^{e} + \alpha\Bigr]

    with :math:`T` ``decay_steps`` and :math:`e` ``exponent``; constant
    :math:`\alpha v_0` from step :math:`T` on.

    optax: ``optax.cosine_decay_schedule`` (same arguments). torch:
    ``CosineAnnealingLR(T_max=T, eta_min=alpha * lr)`` for :math:`s \le T` and ``exponent=1``
    (torch's cosine then rises again; this one stays at its minimum).
    """

    init_value: float = hyper()
    decay_steps: int = static()
    alpha: float = hyper(0.0)
    exponent: float = hyper(1.0, "positive")

    def __post_init__(self) -> None:
        super().__post_init__()
        set_steps(self, "decay_steps", minimum=1)

    def evaluate(self, step: jax.Array) -> jax.Array:
        cos = jnp.power(half_cosine(remaining(step, 0, self.decay_steps)), self.exponent)
        return self.init_value * ((1.0 - self.alpha) * cos + self.alpha)


def polynomial(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Polynomial:
    r"""Polynomial from ``init_value`` to ``end_value`` (see :class:`Polynomial`).

    :math:`(v_0 - v_1)(1 - \mathrm{clip}(s - b, 0, T)/T)^p + v_1`.

    Example:
      >>> sched = gradtx.schedules.polynomial(1.0, 0.0, power=2.0, transition_steps=10)
      >>> [round(float(sched(s)), 4) for s in (0, 5, 10, 20)]
      [1.0, 0.25, 0.0, 0.0]
    """
    return Polynomial(init_value, end_value, power, transition_steps, transition_begin)


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> ExponentialDecay:
    r"""Exponential decay :math:`v_0\, r^{(s - b)/T}` (see :class:`ExponentialDecay`).

    Example:
      >>> sched = gradtx.schedules.exponential_decay(1.0, transition_steps=10, decay_rate=0.5)
      >>> [round(float(sched(s)), 4) for s in (0, 10, 15, 20)]
      [1.0, 0.5, 0.3536, 0.25]
    """
    return ExponentialDecay(
        init_value, transition_steps, decay_rate, transition_begin, staircase, end_value
    )


def piecewise_constant(
    init_value: float, boundaries_and_scales: dict[int, float] | None = None
) -> PiecewiseConstant:
    r"""``init_value`` scaled by each boundary's scale from that step on (multiplicative).

    :math:`v_0 \prod_{i:\ s \ge b_i} c_i` (see :class:`PiecewiseConstant`).

    Example:
      >>> sched = gradtx.schedules.piecewise_constant(1.0, {100: 0.1, 200: 0.1})
      >>> [round(float(sched(s)), 4) for s in (0, 99, 100, 200)]
      [1.0, 1.0, 0.1, 0.01]
    """
    return PiecewiseConstant(init_value, boundaries_and_scales)  # type: ignore[arg-type]


def cosine_decay(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> CosineDecay:
    r"""Cosine decay from ``init_value`` to ``alpha * init_value`` (see :class:`CosineDecay`).

    :math:`v_0[(1 - \alpha)(\tfrac12(1 + \cos(\pi \min(s, T)/T)))^e + \alpha]`.

    Example:
      >>> sched = gradtx.schedules.cosine_decay(1.0, decay_steps=100)
      >>> [round(float(sched(s)), 4) for s in (0, 50, 100, 150)]
      [1.0, 0.5, 0.0, 0.0]
    """
    return CosineDecay(init_value, decay_steps, alpha, exponent)
