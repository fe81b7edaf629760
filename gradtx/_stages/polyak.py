"""Polyak's step size, a stage that reads the loss: ``u = γ_t·g`` with ``γ_t`` from the gap
between the loss and its minimum over the squared gradient norm."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from .._core.context import Context
from .._core.stage import Stage
from .._core.state import State
from .._core.struct import hyper, static
from .._core.tree import TransformError
from .clipping import global_norm

__all__ = ["ScaleByPolyak", "scale_by_polyak"]

_VARIANTS = ("sps", "sps+")
#: optax's threshold below which ``‖g‖² + ε`` counts as 0: float64's machine epsilon.
_TINY = float(np.finfo(np.float64).eps)


class ScaleByPolyak(Stage):
    r"""Scales all updates by the stochastic Polyak step size (SPS\ :sub:`max`).

    .. math::
        \gamma_t = \min\!\left(\frac{f(\theta_t) - f^\star}{\lVert g_t\rVert^2 + \epsilon},
        \gamma_{\max}\right), \qquad u_t = \gamma_t\, g_t

    (:math:`\gamma_t = 0` where :math:`\lVert g_t\rVert^2 + \epsilon` is at most float64's
    machine epsilon, as optax). The norm is over the whole tree (:func:`gradtx.global_norm`);
    ``update`` needs ``value=`` :math:`f(\theta_t)`, the loss at the current params.
    ``variant="sps+"`` uses the positive part of the gap, :math:`(f - f^\star)_+`.

    References:
      Loizou, Vaswani, Laradji & Lacoste-Julien, *Stochastic Polyak Step-size for SGD: An
      Adaptive Learning Rate for Fast Convergence*, AISTATS 2021.
      https://arxiv.org/abs/2002.10542 (``sps+``: Garrigos et al. 2023,
      https://arxiv.org/abs/2307.14528)
    """

    elementwise = True

    name = "scale_by_polyak"
    requires = ("value",)
    f_min: float = hyper(0.0, "any")
    max_learning_rate: float = hyper(1.0, "nonnegative_or_inf")
    eps: float = hyper(0.0, "nonnegative")
    variant: str = static("sps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in _VARIANTS:
            raise ValueError(
                f"gradtx.{self.name}: variant must be one of {list(_VARIANTS)}, "
                f"got {self.variant!r}"
            )

    def prepare(self, updates: Any, state: State, params: Any, ctx: Context) -> dict:
        value = jnp.asarray(ctx.extra["value"])
        if value.ndim != 0 or not jnp.issubdtype(value.dtype, jnp.floating):
            raise TransformError(
                f"gradtx.{self.name}: value= must be the loss, a real scalar, got "
                f"{value.dtype}{list(value.shape)}"
            )
        norm = global_norm(updates)
        sq = norm * norm + self.eps
        gap = (value.astype(norm.dtype) - self.f_min).astype(norm.dtype)
        if self.variant == "sps+":
            gap = jnp.maximum(gap, 0)
        tiny = sq <= _TINY
        step = jnp.where(tiny, 0, jnp.minimum(gap / jnp.where(tiny, 1, sq), self.max_learning_rate))
        return {"polyak_step": step.astype(norm.dtype)}

    def update_leaf(self, g, slots, param, ctx: Context):
        return g * ctx.polyak_step, slots


def scale_by_polyak(
    f_min: float = 0.0,
    max_learning_rate: float = 1.0,
    eps: float = 0.0,
    variant: str = "sps",
) -> ScaleByPolyak:
    """Scales the updates by Polyak's step size (``optax.scale_by_polyak``, same arguments).

    ``update`` needs ``value=loss``. See :class:`ScaleByPolyak` for the rule.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_polyak()
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> u, _ = tx.update({"w": jnp.array([2.0, 4.0])}, tx.init(params), params, value=5.0)
      >>> u["w"].tolist()  # γ = 5 / 20 = 0.25
      [0.5, 1.0]
    """
    return ScaleByPolyak(f_min, max_learning_rate, eps, variant)
