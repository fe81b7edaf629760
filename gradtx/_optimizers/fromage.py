"""Fromage: a step relative to each layer's norm, shrunk so the weights' norm does not grow."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.struct import hyper, static
from .._stages.trust_ratio import ScaleByTrustRatio
from .._stages.weight_decay import AddDecayedWeights
from ..schedules._base import Schedule as ScheduleBase
from .builder import Optimizer, naming, optimizer
from .common import Schedule

__all__ = ["fromage"]


class _FromageRate(ScheduleBase):
    r"""From a schedule :math:`\eta_t`: the step :math:`\eta_t/\sqrt{1+\eta_t^2}` (``"step"``)
    or the decay :math:`\eta_t/(\sqrt{1+\eta_t^2} + 1)` (``"decay"``)."""

    learning_rate: Any = hyper(None, "any")
    part: str = static("step")

    def evaluate(self, step: jax.Array) -> jax.Array:
        eta = jnp.asarray(self.learning_rate(step), jnp.float32)
        root = jnp.sqrt(1 + eta * eta)
        return eta / root if self.part == "step" else eta / (root + 1)


def _rates(learning_rate: Any) -> tuple[Any, Any]:
    """(step, decay) of :func:`fromage` for a float or a schedule (the decay in a form
    without cancellation: :math:`(\\sqrt{1+\\eta^2} - 1)/\\eta = \\eta/(\\sqrt{1+\\eta^2}+1)`)."""
    if callable(learning_rate):
        return _FromageRate(learning_rate, "step"), _FromageRate(learning_rate, "decay")
    root = (1 + float(learning_rate) ** 2) ** 0.5
    return learning_rate / root, learning_rate / (root + 1)


def fromage(learning_rate: Schedule, min_norm: float = 1e-6) -> Optimizer:
    r"""Fromage: each layer steps by η relative to its norm, then shrinks by √(1+η²).

    .. math::
        \theta_t = \frac{1}{\sqrt{1+\eta_t^2}}\left(\theta_{t-1} - \eta_t\,
        \frac{\max(\lVert\theta_{t-1}\rVert, n_0)}{\max(\lVert g_t\rVert, n_0)}\, g_t\right)

    per array, with :math:`n_0` = ``min_norm``. Written as the knobs: before = the trust ratio
    :func:`gradtx.scale_by_trust_ratio` (``min_norm``), after = weight decay
    :math:`\lambda_t = \eta_t/(\sqrt{1+\eta_t^2}+1)`, η = :math:`\eta_t/\sqrt{1+\eta_t^2}`
    (so :math:`\eta'\lambda = 1 - 1/\sqrt{1+\eta^2}`); g = gradient, σ = 1. Equals
    ``optax.fromage`` (same arguments; optax adds :math:`(1/\sqrt{1+\eta^2} - 1)\theta` after
    the learning rate, the same update).

    Args:
      learning_rate: η, a float or a schedule of the step count.
      min_norm: :math:`n_0`, the floor of both norms of the trust ratio.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.fromage(0.01)
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> u, _ = tx.update({"w": jnp.array([-4.0, 3.0])}, tx.init(params), params)
      >>> new = gradtx.apply_updates(params, u)["w"]
      >>> round(float(jnp.linalg.norm(new)), 4)  # for g ⟂ θ the norm is kept exactly
      5.0

    References:
      Bernstein, Vahdat, Yue & Liu, *On the distance between two neural networks and the
      stability of learning*, NeurIPS 2020. https://arxiv.org/abs/2002.03432
    """
    with naming("fromage"):
        step, decay = _rates(learning_rate)
        before = (ScaleByTrustRatio(min_norm),)
        after = (AddDecayedWeights(decay),)
        return optimizer(None, None, step, before=before, after=after, name="fromage")
