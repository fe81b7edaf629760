r"""Schedules that start with a linear warmup: cosine decay, constant, WSD and inverse sqrt.

Every warmup here is linear from ``init_value`` at step 0 to ``peak_value`` at step
:math:`W` = ``warmup_steps``: :math:`\eta_s = v_0 + (v_p - v_0)\, s / W` for :math:`s < W`. With
``warmup_steps = 0`` there is no warmup (``init_value`` is unused).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.struct import hyper, static
from ._base import Schedule
from ._util import (
    INT_MAX,
    fail,
    half_cosine,
    is_integer,
    reached,
    remaining,
    set_choice,
    set_steps,
    warmup,
)

__all__ = [
    "WarmupCosineDecay",
    "WarmupConstant",
    "WarmupStableDecay",
    "InverseSqrt",
    "warmup_cosine_decay",
    "warmup_constant",
    "warmup_stable_decay",
    "wsd",
    "inverse_sqrt",
]


class WarmupCosineDecay(Schedule):
    r"""Linear warmup to ``peak_value``, then cosine decay to ``end_value``.

    .. math::
        \eta_s = \begin{cases}
            v_0 + (v_p - v_0)\, s / W & s < W \\
            v_1 + (v_p - v_1) \Bigl(\tfrac12\bigl(1 + \cos \pi\,
                \tfrac{\min(s, T) - W}{T - W}\bigr)\Bigr)^{e} & s \ge W
        \end{cases}

    :math:`T` = ``decay_steps`` is the total length *including* the warmup (as in optax), so
    the cosine part lasts :math:`T - W` steps and the value is ``end_value`` from step
    :math:`T` on; :math:`e` = ``exponent``.

    optax: ``optax.warmup_cosine_decay_schedule`` (same arguments; when ``peak_value == 0``
    optax stays at 0 after the warmup, this one moves from 0 to ``end_value``). torch:
    ``LambdaLR`` with this formula.
    """

    init_value: float = hyper()
    peak_value: float = hyper()
    warmup_steps: int = static()
    decay_steps: int = static()
    end_value: float = hyper(0.0)
    exponent: float = hyper(1.0, "positive")

    def __post_init__(self) -> None:
        super().__post_init__()
        w = set_steps(self, "warmup_steps", minimum=0)
        t = set_steps(self, "decay_steps", minimum=1)
        if t <= w:
            fail(
                self,
                f"decay_steps must be > warmup_steps (decay_steps includes the warmup), "
                f"got decay_steps={t}, warmup_steps={w}",
            )

    def evaluate(self, step: jax.Array) -> jax.Array:
        w, t = self.warmup_steps, self.decay_steps
        rem = remaining(step, w, t - w)
        decay = self.end_value + (self.peak_value - self.end_value) * jnp.power(
            half_cosine(rem), self.exponent
        )
        if w == 0:
            return decay
        return jnp.where(reached(step, w), decay, warmup(step, self.init_value, self.peak_value, w))


class WarmupConstant(Schedule):
    r"""Linear warmup to ``peak_value``, then constant.

    .. math::
        \eta_s = v_0 + (v_p - v_0) \min(s / W, 1)

    optax: ``optax.warmup_constant_schedule`` (same arguments; with ``warmup_steps = 0`` optax
    stays at ``init_value``, this one is ``peak_value`` throughout). torch:
    ``LinearLR(start_factor=v_0/v_p, total_iters=W)`` with ``lr = v_p`` when :math:`v_0 > 0`.
    """

    init_value: float = hyper()
    peak_value: float = hyper()
    warmup_steps: int = static()

    def __post_init__(self) -> None:
        super().__post_init__()
        set_steps(self, "warmup_steps", minimum=0)

    def evaluate(self, step: jax.Array) -> jax.Array:
        return warmup(step, self.init_value, self.peak_value, self.warmup_steps)


_DECAY_TYPES = ("linear", "cosine", "sqrt")


class WarmupStableDecay(Schedule):
    r"""Warmup-stable-decay ("WSD", trapezoidal): warmup, a constant plateau, then a cooldown.

    With :math:`W` = ``warmup_steps``, :math:`S` = ``stable_steps``, :math:`D` =
    ``decay_steps`` (the cooldown alone) and :math:`p = \mathrm{clip}((s - W - S)/D, 0, 1)`:

    .. math::
        \eta_s = \begin{cases}
            v_0 + (v_p - v_0)\, s / W & s < W \\
            v_1 + (v_p - v_1)\, f(p) & s \ge W
        \end{cases}

    so the value is ``peak_value`` from step :math:`W` to :math:`W + S` and ``end_value`` from
    step :math:`W + S + D` on. The cooldown shape :math:`f` is ``decay_type``:

    - ``"linear"``: :math:`f(p) = 1 - p`;
    - ``"cosine"``: :math:`f(p) = \tfrac12(1 + \cos \pi p)`;
    - ``"sqrt"``: :math:`f(p) = 1 - \sqrt{p}` (the "1-sqrt" cooldown of Hägele et al., 2024,
      *Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations*).

    No optax or torch scheduler; torch: ``LambdaLR`` with this formula.
    """

    init_value: float = hyper()
    peak_value: float = hyper()
    warmup_steps: int = static()
    stable_steps: int = static()
    decay_steps: int = static()
    end_value: float = hyper(0.0)
    decay_type: str = static("linear")

    def __post_init__(self) -> None:
        super().__post_init__()
        set_steps(self, "warmup_steps", minimum=0)
        set_steps(self, "stable_steps", minimum=0)
        set_steps(self, "decay_steps", minimum=1)
        set_choice(self, "decay_type", _DECAY_TYPES)

    def evaluate(self, step: jax.Array) -> jax.Array:
        w, d = self.warmup_steps, self.decay_steps
        rem = remaining(step, w + self.stable_steps, d)  # 1 - p, exact for integer steps
        if self.decay_type == "linear":
            f = rem
        elif self.decay_type == "cosine":
            f = half_cosine(rem)
        else:  # 1 - sqrt(p) = (1 - p) / (1 + sqrt(p)), without cancellation near p = 1
            f = rem / (1.0 + jnp.sqrt(1.0 - rem))
        decay = self.end_value + (self.peak_value - self.end_value) * f
        if w == 0:
            return decay
        return jnp.where(reached(step, w), decay, warmup(step, self.init_value, self.peak_value, w))


class InverseSqrt(Schedule):
    r"""Linear warmup to ``peak_value``, then decay as the inverse square root of the step.

    .. math::
        \eta_s = \begin{cases}
            v_0 + (v_p - v_0)\, s / W & s < W \\
            v_p \sqrt{W / s} & s \ge W
        \end{cases}

    This is the Transformer schedule (Vaswani et al., 2017,
    :math:`d^{-1/2} \min(n^{-1/2},\, n W^{-3/2})` at 1-based step :math:`n`): it equals
    ``inverse_sqrt(peak_value=(d * W) ** -0.5, warmup_steps=W)`` evaluated at :math:`s = n`,
    i.e. one step ahead of the update count. It is also fairseq's ``inverse_sqrt``
    (``warmup_init_lr`` is ``init_value``). No optax or torch scheduler; torch: ``LambdaLR``.
    """

    peak_value: float = hyper()
    warmup_steps: int = static()
    init_value: float = hyper(0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        set_steps(self, "warmup_steps", minimum=1)

    def evaluate(self, step: jax.Array) -> jax.Array:
        w = self.warmup_steps
        if is_integer(step) and w > INT_MAX:  # an int32 count never ends the warmup
            return warmup(step, self.init_value, self.peak_value, w)
        decay = self.peak_value * jnp.sqrt(
            float(w) / jnp.maximum(step.astype(jnp.float32), float(w))
        )
        return jnp.where(reached(step, w), decay, warmup(step, self.init_value, self.peak_value, w))


def warmup_cosine_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> WarmupCosineDecay:
    r"""Linear warmup over ``warmup_steps``, cosine decay to ``end_value`` at ``decay_steps``.

    ``decay_steps`` includes the warmup (see :class:`WarmupCosineDecay` for the formula).

    Example:
      >>> sched = gradtx.schedules.warmup_cosine_decay(0.0, 1.0, warmup_steps=10, decay_steps=110)
      >>> [round(float(sched(s)), 4) for s in (0, 5, 10, 60, 110, 200)]
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    """
    return WarmupCosineDecay(init_value, peak_value, warmup_steps, decay_steps, end_value, exponent)


def warmup_constant(init_value: float, peak_value: float, warmup_steps: int) -> WarmupConstant:
    r"""Linear warmup to ``peak_value`` over ``warmup_steps``, then constant.

    :math:`v_0 + (v_p - v_0)\min(s/W, 1)` (see :class:`WarmupConstant`).

    Example:
      >>> sched = gradtx.schedules.warmup_constant(0.0, 1.0, warmup_steps=4)
      >>> [round(float(sched(s)), 4) for s in (0, 1, 4, 100)]
      [0.0, 0.25, 1.0, 1.0]
    """
    return WarmupConstant(init_value, peak_value, warmup_steps)


def warmup_stable_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    decay_type: str = "linear",
) -> WarmupStableDecay:
    r"""Warmup, ``stable_steps`` at ``peak_value``, then a ``decay_steps`` cooldown.

    ``decay_type`` is ``"linear"``, ``"cosine"`` or ``"sqrt"`` (1 - sqrt); the total length is
    ``warmup_steps + stable_steps + decay_steps`` (see :class:`WarmupStableDecay`).
    Also available as :func:`wsd`.

    Example:
      >>> sched = gradtx.schedules.wsd(0.0, 1.0, warmup_steps=10, stable_steps=80, decay_steps=10)
      >>> [round(float(sched(s)), 4) for s in (0, 5, 10, 90, 95, 100)]
      [0.0, 0.5, 1.0, 1.0, 0.5, 0.0]
    """
    return WarmupStableDecay(
        init_value, peak_value, warmup_steps, stable_steps, decay_steps, end_value, decay_type
    )


#: Short name of :func:`warmup_stable_decay`.
wsd = warmup_stable_decay


def inverse_sqrt(peak_value: float, warmup_steps: int, init_value: float = 0.0) -> InverseSqrt:
    r"""Linear warmup to ``peak_value``, then :math:`v_p \sqrt{W / s}` (the Transformer schedule).

    See :class:`InverseSqrt` for the formula and its relation to Vaswani et al.

    Example:
      >>> sched = gradtx.schedules.inverse_sqrt(1.0, warmup_steps=100)
      >>> [round(float(sched(s)), 4) for s in (0, 50, 100, 400)]
      [0.0, 0.5, 1.0, 0.5]
    """
    return InverseSqrt(peak_value, warmup_steps, init_value)
