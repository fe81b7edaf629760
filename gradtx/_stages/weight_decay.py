"""Stages around the knobs that read the parameters: decoupled weight decay, trust ratio."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ._base import Context, Stage
from ._scale import abs_sq, safe_sqrt
from ._struct import hyper, static

__all__ = [
    "AddDecayedWeights",
    "ScaleByTrustRatio",
    "add_decayed_weights",
    "scale_by_trust_ratio",
]


class AddDecayedWeights(Stage):
    r"""Adds the decayed weights, :math:`u = g + \lambda\,\theta`, to the leaves in ``mask``.

    Placed after the knobs and before the learning rate, this is *decoupled* weight decay
    (AdamW): the decay is multiplied by η_t but not divided by σ_t. Placed before the knobs it
    is classic L2 regularisation.

    ``mask`` is a pytree of bools matching the params (``True`` = decay this leaf), or a
    function of the params returning one; leaves outside the mask pass through.

    References:
      Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
      https://arxiv.org/abs/1711.05101
    """

    elementwise = True

    name = "add_decayed_weights"
    needs_params = True
    weight_decay: float = hyper(0.0, "nonnegative")
    mask: Any = static(None)

    def update_leaf(self, g, slots, param, ctx: Context):
        return g + self.weight_decay * param, slots


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


def add_decayed_weights(weight_decay: float = 0.0, mask: Any = None) -> AddDecayedWeights:
    """Adds ``weight_decay * params`` to the updates of the leaves selected by ``mask``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.add_decayed_weights(0.1, mask=lambda p: {"w": True, "b": False})
      >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
      >>> u, _ = tx.update({"w": jnp.zeros(2), "b": jnp.zeros(2)}, tx.init(params), params)
      >>> [round(x, 6) for x in u["w"].tolist()], u["b"].tolist()
      ([0.1, 0.1], [0.0, 0.0])
    """
    return AddDecayedWeights(weight_decay, mask)


def scale_by_trust_ratio(
    min_norm: float = 0.0, trust_coefficient: float = 1.0, eps: float = 0.0, *, mask: Any = None
) -> ScaleByTrustRatio:
    """Scales each leaf's update by ``trust_coefficient * ||param|| / ||update||``.

    The signature is ``optax.scale_by_trust_ratio``'s; ``mask`` is gradtx's (keyword-only).
    """
    return ScaleByTrustRatio(min_norm, trust_coefficient, eps, mask)
