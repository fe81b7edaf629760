"""The layer-wise trust ratio (LARS, LAMB), a stage that reads the parameters: each array's
update rescaled by ``‖θ‖ / ‖u‖``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from .._core.context import Context
from .._core.numerics import abs_sq, safe_sqrt
from .._core.stage import Stage
from .._core.struct import hyper, static

__all__ = ["ScaleByTrustRatio", "scale_by_trust_ratio"]


class ScaleByTrustRatio(Stage):
    r"""Scales each array's update by its layer-wise trust ratio (LARS, LAMB).

    .. math::
        r = c\,\frac{\max(\lVert\theta\rVert, n_0)}{\max(\lVert u\rVert, n_0) + \epsilon},
        \qquad u \leftarrow r\,u \quad(r = 1 \text{ if either norm is } 0)

    with ``trust_coefficient`` c and ``min_norm`` n₀ (norms of complex arrays from ``|x|²``);
    leaves outside ``mask`` (gradtx-only, keyword-only in :func:`scale_by_trust_ratio`) pass
    through.

    References:
      You, Gitman & Ginsburg, *Large Batch Training of Convolutional Networks*, 2017 (LARS).
      You et al., *Large Batch Optimization for Deep Learning: Training BERT in 76 minutes*,
      ICLR 2020 (LAMB). https://arxiv.org/abs/1904.00962
    """

    leafwise = True
    name = "scale_by_trust_ratio"
    needs_params = True
    min_norm: float = hyper(0.0, "nonnegative")
    trust_coefficient: float = hyper(1.0, "positive")
    eps: float = hyper(0.0, "nonnegative")
    mask: Any = static(None)

    def update_leaf(self, g, slots, param, ctx: Context):
        p_norm = jnp.maximum(safe_sqrt(ctx.leaf_sum(abs_sq(param))), self.min_norm)
        u_norm = jnp.maximum(safe_sqrt(ctx.leaf_sum(abs_sq(g))), self.min_norm)
        zero = (p_norm == 0) | (u_norm == 0)
        # The double where keeps d(ratio) free of 0·∞ where a norm is 0.
        ratio = self.trust_coefficient * p_norm / jnp.where(zero, 1, u_norm + self.eps)
        ratio = jnp.where(zero, 1, ratio)
        return g * ratio, slots


def scale_by_trust_ratio(
    min_norm: float = 0.0, trust_coefficient: float = 1.0, eps: float = 0.0, *, mask: Any = None
) -> ScaleByTrustRatio:
    """Scales each leaf's update by ``trust_coefficient * ||param|| / ||update||``.

    The signature is ``optax.scale_by_trust_ratio``'s; ``mask`` is gradtx's (keyword-only).
    """
    return ScaleByTrustRatio(min_norm, trust_coefficient, eps, mask)
