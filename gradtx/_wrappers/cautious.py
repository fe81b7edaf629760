r"""``cautious``: any optimizer's update, kept only where it descends (Liang et al. 2024).

With ``u_t`` the inner transformation's update (added to the params, as every gradtx and optax
update) and ``g_t`` the gradient it was given, per parameter array::

    φ = 1[u·g < 0]                    (the coordinates where u goes down the gradient)
    u ← φ·u / max(mean(φ), ε)         (mean over the array: the step keeps its average size)

On a packed tree (:func:`gradtx.pack`) the mean is over each parameter's segment of a buffer.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.packed import flat_segments
from .._core.pieces import leaf_sums
from .._core.state import State
from .._core.struct import hyper
from .._core.transformation import GradientTransformation
from .._core.tree import flatten
from .common import as_inner, check_args

__all__ = ["Cautious", "cautious"]


class Cautious(GradientTransformation):
    """``inner``'s update masked to the coordinates where it descends; see :func:`cautious`.

    The state is ``State(inner_state=...)``.
    """

    inner: Any = None
    eps: float = hyper(1e-3, "positive")

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_inner(self.name, self.inner))
        super().__post_init__()

    def init(self, params: Any) -> State:
        return State(inner_state=self.inner.init(params))

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, ("inner_state",), updates, params)
        new, inner_state = self.inner.update(updates, state["inner_state"], params, **extra)
        g_leaves, _ = flatten(updates)
        u_leaves, treedef = flatten(new)
        segs = flat_segments(new) or [None] * len(u_leaves)
        out = []
        for (_, u), (_, g), seg in zip(u_leaves, g_leaves, segs):
            if u is None or g is None:
                out.append(u)
                continue
            cdt = compute_dtype(u.dtype)
            uc, gc = u.astype(cdt), g.astype(cdt)
            keep = jnp.real(uc * jnp.conj(gc)) < 0
            phi = keep.astype(jnp.real(uc).dtype)
            mean = jnp.mean(phi) if seg is None else leaf_sums(phi, seg, mean=True)
            scale = 1 / jnp.maximum(mean, jnp.asarray(self.eps, phi.dtype))
            out.append(
                (jnp.where(keep, uc, jnp.zeros_like(uc)) * scale.astype(cdt)).astype(u.dtype)
            )
        return treedef.unflatten(out), State(inner_state=inner_state)

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, state["inner_state"])]


def cautious(inner: Any, eps: float = 1e-3) -> Cautious:
    r"""Keeps ``inner``'s update only where it agrees with the descent direction, rescaled.

    .. math::
        \phi_t = \mathbb 1[u_t \odot g_t < 0], \qquad
        \tilde u_t = \frac{\phi_t \odot u_t}{\max(\operatorname{mean}(\phi_t), \epsilon)}

    per parameter array, with :math:`u_t` the update ``inner`` returns (added to the params)
    and :math:`g_t` the gradient given to ``update``. The masked update never increases the
    loss to first order (:math:`\langle \tilde u_t, g_t\rangle \le 0`), and dividing by the
    fraction kept preserves its average size. ``inner`` must return the final update (with its
    learning rate: a descending update is opposite to the gradient); wrapping a ``scale_by_*``
    without the sign flip would keep the wrong coordinates.

    Warning:
      The paper's first code divides by :math:`(\sum\phi + 1)/n`; this is the later form of
      the authors and of timm (``mask / mask.mean().clamp(min=1e-3)``), equal up to that
      regulariser. Coordinates with :math:`g = 0` (only weight decay moves them) are dropped,
      as in both.

    Args:
      inner: a gradtx or optax transformation (the whole optimizer).
      eps: the floor of the fraction kept (so an all-masked array gives zeros, not NaN).

    Returns:
      A :class:`Cautious` transformation; its state is ``State(inner_state=...)``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.cautious(gradtx.sgd(0.1, momentum=0.9))
      >>> params = {"w": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> u, state = tx.update({"w": jnp.array([1.0, 1.0])}, state, params)
      >>> u, state = tx.update({"w": jnp.array([1.0, -0.05])}, state, params)
      >>> [round(x, 3) for x in u["w"].tolist()]  # momentum still goes up at w[1]: dropped
      [-0.38, 0.0]

    References:
      Liang, Chen, Liu & Liu, *Cautious Optimizers: Improving Training with One Line of Code*,
      2024. https://arxiv.org/abs/2411.16085
    """
    return Cautious(inner, eps)
