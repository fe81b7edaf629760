"""Weight decay, a stage that reads the parameters: ``u = g + λ·θ`` on the leaves of a mask."""

from __future__ import annotations

from typing import Any

from .._core.context import Context
from .._core.stage import Stage
from .._core.struct import hyper, static

__all__ = ["AddDecayedWeights", "add_decayed_weights"]


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
