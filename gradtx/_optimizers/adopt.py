"""ADOPT: Adam with the current gradient left out of its own normalisation, then averaged."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._direction.adopt import AdoptMomentum
from .._scale.adopt import AdoptScale
from ..schedules._base import Schedule as ScheduleBase
from .builder import Optimizer, naming, optimizer
from .common import Schedule

__all__ = ["adopt", "scale_by_adopt"]


class FourthRoot(ScheduleBase):
    r"""ADOPT's clipping bound :math:`c_t = \text{count}^{1/4}` (0 at the first step), the
    default ``clip_value_fn`` of ``optax.contrib.adopt``."""

    def evaluate(self, step: jax.Array) -> jax.Array:
        return jnp.asarray(step, jnp.float32) ** 0.25


def _parts(b1, b2, eps, mu_dtype, nesterov, use_clipping, clip_value_fn, name):
    with naming(name, decay="b1"):
        clip = clip_value_fn if use_clipping else None
        return AdoptMomentum(b1, nesterov, mu_dtype), AdoptScale(b2, eps, clip)


def adopt(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Any = FourthRoot(),
) -> Optimizer:
    r"""ADOPT: normalise by the *previous* second moment, clip, then take the momentum.

    .. math::
        v_1 = g_1^2, \quad m_1 = 0, \quad\text{and for } t \ge 2:\quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1)\operatorname{clip}\!\left(
        \frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)}, \pm c_t\right),

    .. math::
        \theta_t = \theta_{t-1} - \eta_t m_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    (no bias correction; Nesterov: :math:`\theta_t = \theta_{t-1} - \eta_t(\beta_1 m_t +
    (1-\beta_1) u_t)`). :math:`c_t` = ``clip_value_fn(count)`` with ``count = t - 1``, by
    default :math:`(t-1)^{1/4}`. The first step moves nothing.

    Knobs: σ = :class:`~gradtx.AdoptScale` first (``scale_first``), then g =
    :class:`~gradtx.AdoptMomentum`, η = ``learning_rate``. Equals ``optax.contrib.adopt`` (same
    arguments, in optax's order).

    Args:
      learning_rate: η, a float or a schedule of the step count.
      b1: β1, the momentum's decay.
      b2: β2, the second moment's decay.
      eps: ε, the floor of :math:`\sqrt{v_{t-1}}`.
      mu_dtype: the dtype the momentum is stored in; ``None``: the param's dtype.
      nesterov: the Nesterov form.
      use_clipping: clip the normalised gradient (recommended from scratch).
      clip_value_fn: :math:`c` as a function of the step count (0 at the first update).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.adopt(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> state = tx.init(params)
      >>> u, state = tx.update({"w": jnp.array([0.5, -0.5])}, state, params)
      >>> bool((u["w"] == 0).all())  # the first step only measures v
      True
      >>> u, state = tx.update({"w": jnp.array([0.5, -0.5])}, state, params)
      >>> [round(x, 4) for x in u["w"].tolist()]  # -η(1-β1)·clip(g/|g_1|, ±1)
      [-0.01, 0.01]

    References:
      Taniguchi et al., *ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate*,
      NeurIPS 2024. https://arxiv.org/abs/2411.02853
    """
    g, s = _parts(b1, b2, eps, mu_dtype, nesterov, use_clipping, clip_value_fn, "adopt")
    with naming("adopt"):
        return optimizer(g, s, learning_rate, scale_first=True, name="adopt")


def scale_by_adopt(
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Any = FourthRoot(),
) -> Optimizer:
    """ADOPT's update without the learning rate (``optax.contrib.scale_by_adopt``); see
    :func:`adopt` for the rule and the arguments.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_adopt()
      >>> sorted(tx.init({"w": jnp.ones(2)}).knobs)
      ['count', 'mu', 'nu']
    """
    g, s = _parts(b1, b2, eps, mu_dtype, nesterov, use_clipping, clip_value_fn, "scale_by_adopt")
    return optimizer(g, s, None, scale_first=True, name="scale_by_adopt")
