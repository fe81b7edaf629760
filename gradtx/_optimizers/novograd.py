"""NovoGrad: momentum of gradients normalised by a second moment per layer."""

from __future__ import annotations

from .._direction.momentum import Momentum
from .._scale.novograd import NovogradScale
from .builder import Optimizer, naming, optimizer
from .common import Schedule

__all__ = ["novograd"]


def novograd(
    learning_rate: Schedule,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> Optimizer:
    r"""NovoGrad: heavy-ball momentum of layer-normalised gradients plus weight decay.

    For each array (layer) :math:`l`, with :math:`v^l_1 = \lVert g^l_1\rVert^2`:

    .. math::
        v^l_t = \beta_2 v^l_{t-1} + (1-\beta_2) \lVert g^l_t\rVert^2, \quad
        m^l_t = \beta_1 m^l_{t-1} + \frac{g^l_t}{\sqrt{v^l_t + \epsilon_{root}} + \epsilon}
        + \lambda\,\theta^l_{t-1}, \quad
        \theta^l_t = \theta^l_{t-1} - \eta_t\, m^l_t

    Knobs (σ first): σ = :class:`~gradtx.NovogradScale` (one second moment per array, then
    the decay λθ), g = heavy-ball :class:`~gradtx.Momentum` (β1, undamped, as the paper), η =
    ``learning_rate``. Equals ``optax.novograd`` (same arguments, in optax's order).

    Args:
      learning_rate: η, a float or a schedule of the step count.
      b1: β1, the momentum (the paper's, without ``1 − β1`` damping).
      b2: β2, the decay of the per-layer second moment.
      eps: ε outside the root.
      eps_root: ε inside the root.
      weight_decay: λ, added to the normalised gradient (inside the momentum).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.novograd(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
      >>> [round(x, 4) for x in updates["w"].tolist()]  # −η·g/‖g‖, ‖g‖ = 5
      [-0.06, -0.08]
      >>> state.knobs.nu["w"].shape  # one second moment per array
      ()

    References:
      Ginsburg et al., *Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks*, 2019. https://arxiv.org/abs/1905.11286
    """
    with naming("novograd", momentum="b1"):
        return optimizer(
            Momentum(b1),
            NovogradScale(b2, eps, eps_root, weight_decay),
            learning_rate,
            scale_first=True,
            name="novograd",
        )
