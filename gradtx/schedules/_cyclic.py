r"""Cyclic schedules, after PyTorch: one-cycle, triangular cycles and cosine warm restarts.

Each matches its ``torch.optim.lr_scheduler`` counterpart step for step when that scheduler is
stepped once per update (``count`` here is torch's ``last_epoch``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.struct import hyper, static
from ._base import Schedule
from ._util import (
    INT_MAX,
    check_open_unit,
    elapsed,
    half_cosine,
    is_integer,
    left,
    set_choice,
    set_steps,
)

__all__ = [
    "OneCycle",
    "CyclicTriangular",
    "CosineRestarts",
    "one_cycle",
    "cyclic_triangular",
    "cosine_restarts",
    "sgdr",
]


class OneCycle(Schedule):
    r"""The one-cycle policy (Smith & Topin, 2017) with cosine annealing, as in torch.

    With :math:`T` = ``transition_steps``, :math:`v_p` = ``peak_value``,
    :math:`v_0 = v_p / \mathrm{div\_factor}`, :math:`v_1 = v_0 / \mathrm{final\_div\_factor}`
    and the phase ends :math:`e_1 = \mathrm{pct\_start}\cdot T - 1`, :math:`e_2 = T - 1`:

    .. math::
        \eta_s = \begin{cases}
            v_p + (v_0 - v_p)\,\tfrac12\bigl(1 + \cos \pi \tfrac{s}{e_1}\bigr) & s \le e_1 \\
            v_1 + (v_p - v_1)\,\tfrac12\bigl(1 + \cos \pi
                \tfrac{\min(s, e_2) - e_1}{e_2 - e_1}\bigr) & s > e_1
        \end{cases}

    It rises from :math:`v_0` at step 0 to :math:`v_p` at step :math:`e_1`, then falls to
    :math:`v_1` at the last step :math:`T - 1`, and stays there.

    torch: ``OneCycleLR(max_lr=peak_value, total_steps=T, pct_start, anneal_strategy="cos",
    div_factor, final_div_factor, three_phase=False)`` -- equal for :math:`s < T`; torch
    raises past ``total_steps``, this one holds :math:`v_1`. optax's
    ``cosine_onecycle_schedule`` takes the same arguments but places the peak at step
    ``int(pct_start * T)`` and the end at step ``T``, about one step later than torch.
    """

    transition_steps: int = static()
    peak_value: float = hyper()
    pct_start: float = hyper(0.3)
    div_factor: float = hyper(25.0, "positive")
    final_div_factor: float = hyper(1e4, "positive")

    def __post_init__(self) -> None:
        super().__post_init__()
        set_steps(self, "transition_steps", minimum=1)
        check_open_unit(self, "pct_start")

    def evaluate(self, step: jax.Array) -> jax.Array:
        t = self.transition_steps
        v0 = self.peak_value / self.div_factor
        v1 = v0 / self.final_div_factor
        e1 = self.pct_start * t - 1.0
        e2 = t - 1.0
        # The step clipped to [0, T - 1] is small enough to compare with e1 in float32; the
        # steps left before e2 are an exact integer.
        s = elapsed(step, 0, t - 1).astype(jnp.float32)
        # Remaining fractions of each phase (1 - pct in torch's terms).
        rem1 = jnp.clip((e1 - s) / jnp.maximum(e1, 1e-6), 0.0, 1.0)
        rem2 = jnp.clip(left(step, 0, t - 1) / (e2 - e1), 0.0, 1.0)
        up = self.peak_value + (v0 - self.peak_value) * half_cosine(rem1)
        down = v1 + (self.peak_value - v1) * half_cosine(rem2)
        return jnp.where(s <= e1, up, down)


_MODES = ("triangular", "triangular2", "exp_range")


class CyclicTriangular(Schedule):
    r"""Cyclical learning rate (Smith, 2017): a triangular wave between two values.

    With :math:`U` = ``step_size_up``, :math:`D` = ``step_size_down`` (default :math:`U`),
    :math:`L = U + D`, the position in the cycle :math:`q = s \bmod L` and the cycle number
    :math:`k = \lfloor s / L \rfloor` (0-based):

    .. math::
        h_s = \begin{cases} q / U & q \le U \\ (L - q) / D & q > U \end{cases}, \qquad
        \eta_s = v_0 + (v_m - v_0)\, h_s\, g_s

    where :math:`v_0` = ``init_value``, :math:`v_m` = ``peak_value`` and the amplitude factor
    :math:`g_s` is 1 for ``mode="triangular"``, :math:`2^{-k}` for ``"triangular2"`` and
    :math:`\gamma^s` for ``"exp_range"``.

    torch: ``CyclicLR(base_lr, max_lr, step_size_up, step_size_down, mode, gamma)``.
    No optax scheduler.
    """

    init_value: float = hyper()
    peak_value: float = hyper()
    step_size_up: int = static()
    step_size_down: int | None = static(None)
    mode: str = static("triangular")
    gamma: float = hyper(1.0, "positive")

    def __post_init__(self) -> None:
        super().__post_init__()
        set_steps(self, "step_size_up", minimum=1)
        if self.step_size_down is not None:
            set_steps(self, "step_size_down", minimum=0)
        set_choice(self, "mode", _MODES)

    def evaluate(self, step: jax.Array) -> jax.Array:
        up = self.step_size_up
        down = up if self.step_size_down is None else self.step_size_down
        length = up + down
        if is_integer(step):
            step = jnp.maximum(step, 0)
            if length > INT_MAX:  # an int32 count never completes a cycle
                q, k = step, jnp.zeros_like(step)
            else:
                q, k = jnp.mod(step, length), jnp.floor_divide(step, length)
            rising = q <= up if up <= INT_MAX else jnp.ones(jnp.shape(q), jnp.bool_)
            to_go = left(q, 0, length)  # L - q, exact
            qf = q.astype(jnp.float32)
        else:
            q = jnp.mod(step, float(length))
            k = (step - q) / float(length)
            rising, to_go, qf = q <= float(up), float(length) - q, q
        h = jnp.where(rising, qf / float(up), to_go / float(max(down, 1)))
        g: Any
        if self.mode == "triangular":
            g = 1.0
        elif self.mode == "triangular2":
            g = jnp.exp2(-k.astype(jnp.float32))
        else:
            g = jnp.power(self.gamma, step.astype(jnp.float32))
        return self.init_value + (self.peak_value - self.init_value) * h * g


class CosineRestarts(Schedule):
    r"""Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter, 2017).

    Period :math:`i` (0-based) lasts :math:`T_i = T_0 m^i` steps, with :math:`T_0` =
    ``first_period`` and :math:`m` = ``period_mult``. With :math:`t` the steps since the last
    restart:

    .. math::
        \eta_s = \eta_{\min} + (v_0 - \eta_{\min})\,\tfrac12\bigl(1 + \cos \pi\, t / T_i\bigr)

    so it restarts at ``init_value`` at the first step of every period and approaches
    ``end_value`` at its end.

    torch: ``CosineAnnealingWarmRestarts(T_0=first_period, T_mult=period_mult, end_value)``.
    optax's ``sgdr_schedule`` instead takes a list of explicit cycles (each a
    ``warmup_cosine_decay_schedule``).
    """

    init_value: float = hyper()
    first_period: int = static()
    period_mult: int = static(1)
    end_value: float = hyper(0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        set_steps(self, "first_period", minimum=1)
        set_steps(self, "period_mult", minimum=1)

    def evaluate(self, step: jax.Array) -> jax.Array:
        t0, mult = self.first_period, self.period_mult
        if not is_integer(step):
            to_go, period = self._float_phase(step)
        elif mult == 1 and t0 <= INT_MAX:
            step = jnp.maximum(step, 0)
            to_go, period = (t0 - jnp.mod(step, t0)).astype(jnp.float32), float(t0)
        else:
            # Periods starting within the int32 range, known when tracing; the steps left in
            # the current one are end - s = (min(end, INT_MAX) - s) + max(end - INT_MAX, 0).
            starts, periods = [0], [t0]
            while starts[-1] + periods[-1] <= INT_MAX:
                starts.append(starts[-1] + periods[-1])
                periods.append(periods[-1] * mult)
            ends = [b + p for b, p in zip(starts, periods)]
            i = jnp.sum(step >= jnp.asarray(starts, jnp.int32)) - 1
            i = jnp.maximum(i, 0)
            near = jnp.asarray([min(e, INT_MAX) for e in ends], jnp.int32)[i]
            beyond = jnp.asarray([float(max(e - INT_MAX, 0)) for e in ends], jnp.float32)[i]
            to_go = (near - jnp.maximum(step, 0)).astype(jnp.float32) + beyond
            period = jnp.asarray(periods, jnp.float32)[i]
        factor = half_cosine(to_go / period)
        return self.end_value + (self.init_value - self.end_value) * factor

    def _float_phase(self, step: jax.Array) -> tuple[jax.Array, Any]:
        """Steps left in the current period and its length, for a float step."""
        t0, mult = self.first_period, self.period_mult
        if mult == 1:
            return float(t0) - jnp.mod(step, float(t0)), float(t0)
        starts, periods = [0], [t0]
        while starts[-1] < 2**31:
            starts.append(starts[-1] + periods[-1])
            periods.append(periods[-1] * mult)
        i = jnp.maximum(jnp.sum(step >= jnp.asarray(starts, jnp.float32)) - 1, 0)
        period = jnp.asarray(periods, jnp.float32)[i]
        return period - (step - jnp.asarray(starts, jnp.float32)[i]), period


def one_cycle(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> OneCycle:
    r"""torch's ``OneCycleLR`` (cosine, two phases) over ``transition_steps`` steps.

    Rises from ``peak_value / div_factor`` to ``peak_value`` at step ``pct_start * T - 1``,
    then falls to ``peak_value / div_factor / final_div_factor`` at step ``T - 1`` (see
    :class:`OneCycle` for the formula).

    Example:
      >>> sched = gradtx.schedules.one_cycle(100, peak_value=1.0, pct_start=0.21)
      >>> [round(float(sched(s)), 4) for s in (0, 20, 99, 150)]
      [0.04, 1.0, 0.0, 0.0]
    """
    return OneCycle(transition_steps, peak_value, pct_start, div_factor, final_div_factor)


def cyclic_triangular(
    init_value: float,
    peak_value: float,
    step_size_up: int,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> CyclicTriangular:
    r"""torch's ``CyclicLR``: a triangular wave between ``init_value`` and ``peak_value``.

    Rises for ``step_size_up`` steps and falls for ``step_size_down`` (default: the same);
    ``mode`` is ``"triangular"``, ``"triangular2"`` (amplitude halves each cycle) or
    ``"exp_range"`` (amplitude times ``gamma ** step``). See :class:`CyclicTriangular`.

    Example:
      >>> sched = gradtx.schedules.cyclic_triangular(0.0, 1.0, step_size_up=4)
      >>> [round(float(sched(s)), 4) for s in (0, 2, 4, 6, 8, 10)]
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.5]
    """
    return CyclicTriangular(init_value, peak_value, step_size_up, step_size_down, mode, gamma)


def cosine_restarts(
    init_value: float, first_period: int, period_mult: int = 1, end_value: float = 0.0
) -> CosineRestarts:
    r"""torch's ``CosineAnnealingWarmRestarts`` (SGDR). Also available as :func:`sgdr`.

    :math:`\eta_{\min} + (v_0 - \eta_{\min})\tfrac12(1 + \cos(\pi t / T_i))`, :math:`t` the
    steps since the last restart and :math:`T_i = T_0 m^i` (see :class:`CosineRestarts`).

    Example:
      >>> sched = gradtx.schedules.cosine_restarts(1.0, first_period=10, period_mult=2)
      >>> [round(float(sched(s)), 4) for s in (0, 5, 10, 20, 30)]
      [1.0, 0.5, 1.0, 0.5, 1.0]
    """
    return CosineRestarts(init_value, first_period, period_mult, end_value)


#: Short name of :func:`cosine_restarts`.
sgdr = cosine_restarts
