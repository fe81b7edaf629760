"""AdEMAMix: Adam whose momentum is a fast EMA plus α times a very slow one."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from .._core.struct import hyper, static
from .._direction.ademamix import AdEMAMixMomentum
from .._scale.adam import AdamScale
from ..schedules._base import Schedule as ScheduleBase
from ..schedules._basic import Linear
from .builder import Optimizer, naming, optimizer
from .common import Schedule, decayed_weights

__all__ = ["ademamix", "scale_by_ademamix"]


class HalfLifeWarmup(ScheduleBase):
    r"""The paper's β3 warmup: the half-life of the EMA grows linearly from that of
    ``init_value`` (β_start) to that of ``end_value`` (β3) over ``warmup_steps``.

    .. math::
        \beta_3(s) = \exp\!\left(\frac{\ln\beta_{start}\,\ln\beta_3}
        {(1 - s/T)\ln\beta_3 + (s/T)\ln\beta_{start}}\right)\;(s < T), \qquad
        \beta_3 \;(s \ge T)
    """

    init_value: float = hyper()
    end_value: float = hyper()
    warmup_steps: int = static()

    def evaluate(self, step: jax.Array) -> jax.Array:
        frac = jnp.minimum(jnp.asarray(step, jnp.float32) / float(self.warmup_steps), 1.0)
        lo, hi = jnp.log(jnp.float32(self.init_value)), jnp.log(jnp.float32(self.end_value))
        value = jnp.exp(lo * hi / ((1 - frac) * hi + frac * lo))
        return jnp.where(frac < 1, value, jnp.float32(self.end_value))


def _knob(b1, b3, alpha, mu_dtype, alpha_warmup_steps, b3_warmup_steps, name):
    for arg, value, steps in (("alpha", alpha, alpha_warmup_steps), ("b3", b3, b3_warmup_steps)):
        if steps is not None and (callable(value) or not isinstance(steps, int) or steps < 1):
            raise ValueError(
                f"gradtx.{name}: {arg}_warmup_steps must be an int >= 1 and {arg} a number "
                f"(the warmup makes the schedule), got {steps!r} and {value!r}"
            )
    if alpha_warmup_steps is not None:
        alpha = Linear(0.0, alpha, alpha_warmup_steps)
    if b3_warmup_steps is not None:
        if not (0 < b1 < 1 and 0 < b3 < 1) or math.isclose(b1, b3):
            raise ValueError(f"gradtx.{name}: the β3 warmup needs 0 < b1 != b3 < 1")
        b3 = HalfLifeWarmup(b1, b3, b3_warmup_steps)
    with naming(name):
        return AdEMAMixMomentum(b1, b3, alpha, mu_dtype)


def ademamix(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: Schedule = 0.9999,
    alpha: Schedule = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: float = 0.0,
    mask: Any = None,
    *,
    alpha_warmup_steps: int | None = None,
    b3_warmup_steps: int | None = None,
) -> Optimizer:
    r"""AdEMAMix: AdamW whose momentum mixes a fast EMA and a slow one.

    .. math::
        m^{(1)}_t = \beta_1 m^{(1)}_{t-1} + (1-\beta_1) g_t, \quad
        m^{(2)}_t = \beta_3 m^{(2)}_{t-1} + (1-\beta_3) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,

    .. math::
        \theta_t = \theta_{t-1} - \eta_t\left(\frac{m^{(1)}_t/(1-\beta_1^t) + \alpha\,
        m^{(2)}_t}{\sqrt{v_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon} +
        \lambda\theta_{t-1}\right)

    β3 and α may be schedules of the step count. The paper's warmups, both recommended when
    training from scratch: ``alpha_warmup_steps=T`` makes :math:`\alpha_s = \min(s\alpha/T,
    \alpha)`; ``b3_warmup_steps=T`` makes β3 grow from β1 to ``b3`` with the EMA's half-life
    growing linearly (:class:`HalfLifeWarmup`). The paper sets both ``T`` to the run's length.

    Knobs: g = :class:`~gradtx.AdEMAMixMomentum`, σ = :class:`~gradtx.AdamScale`, after =
    weight decay, η = ``learning_rate``. Equals ``optax.contrib.ademamix`` (same arguments, in
    optax's order).

    Warning:
      optax stores ``nu`` in ``mu_dtype`` too; gradtx stores it in the param's dtype (float32
      for float16 params), as Adam's.

    Args:
      learning_rate: η, a float or a schedule of the step count.
      b1: β1, the fast EMA's decay.
      b2: β2, the second moment's decay.
      b3: β3, the slow EMA's decay (a float or a schedule).
      alpha: α, the slow EMA's weight (a float or a schedule).
      eps: ε outside the root.
      eps_root: ε inside the root.
      mu_dtype: the dtype of both EMAs; ``None``: the param's dtype.
      weight_decay: λ, decoupled and multiplied by η.
      mask: which leaves to decay (a tree of bools or a function of params).
      alpha_warmup_steps: the paper's linear warmup of α over this many steps.
      b3_warmup_steps: the paper's half-life warmup of β3 (from β1) over this many steps.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.ademamix(1e-3, alpha_warmup_steps=100, b3_warmup_steps=100)
      >>> sorted(tx.init({"w": jnp.ones(2)}).knobs)
      ['count', 'm1', 'm2', 'nu']
      >>> b3 = tx.knobs.direction.b3
      >>> [round(float(b3(s)), 4) for s in (0, 50, 100)]  # half-life linear in the step
      [0.9, 0.9998, 0.9999]

    References:
      Pagliardini, Ablin & Grangier, *The AdEMAMix Optimizer: Better, Faster, Older*, 2024.
      https://arxiv.org/abs/2409.03137
    """
    g = _knob(b1, b3, alpha, mu_dtype, alpha_warmup_steps, b3_warmup_steps, "ademamix")
    with naming("ademamix"):
        scale = AdamScale(b2, eps, eps_root)
        after = decayed_weights(weight_decay, mask)
        return optimizer(g, scale, learning_rate, after=after, name="ademamix")


def scale_by_ademamix(
    b1: float = 0.9,
    b2: float = 0.999,
    b3: Schedule = 0.9999,
    alpha: Schedule = 6.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    alpha_warmup_steps: int | None = None,
    b3_warmup_steps: int | None = None,
) -> Optimizer:
    """AdEMAMix's update without weight decay and learning rate
    (``optax.contrib.scale_by_ademamix``, whose default α is 6, not :func:`ademamix`'s 5).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_ademamix()
      >>> tx.knobs.direction.alpha
      6.0
    """
    g = _knob(b1, b3, alpha, mu_dtype, alpha_warmup_steps, b3_warmup_steps, "scale_by_ademamix")
    with naming("scale_by_ademamix"):
        return optimizer(g, AdamScale(b2, eps, eps_root), None, name="scale_by_ademamix")
