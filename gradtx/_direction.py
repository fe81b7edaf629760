"""The g knob, direction: what the step moves along, from the current and past gradients.

Each knob is written for one array; :class:`~gradtx.Knobs` lifts it to pytrees. Symbols:
``g_t`` the gradient (or the scaled gradient when the knob runs after σ), ``m_t`` the state,
``t = step + 1`` the 1-based step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._base import Context, one_minus_pow
from ._knobs import Direction
from ._struct import hyper, static

__all__ = ["Momentum", "Ema", "NesterovEma", "Lion", "Sign"]


class Momentum(Direction):
    r"""Heavy-ball momentum (Polyak), or Nesterov's accelerated form.

    .. math::
        m_t = \mu\, m_{t-1} + g_t, \qquad
        d_t = m_t \;\;\text{(heavy ball)}, \qquad d_t = g_t + \mu\, m_t \;\;\text{(Nesterov)}

    ``m_0 = 0``. This is ``torch.optim.SGD`` with ``dampening=0`` and optax's ``trace``.

    References:
      Polyak, *Some methods of speeding up the convergence of iteration methods*, 1964.
      Sutskever et al., *On the importance of initialization and momentum in deep learning*,
      ICML 2013.
    """

    elementwise = True

    slots = ("mu",)
    summary = "heavy-ball momentum m = μ·m + g"
    momentum: float = hyper(0.9, "unit")
    nesterov: bool = static(False)

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        m = self.momentum * slots["mu"] + g
        d = g + self.momentum * m if self.nesterov else m
        return d, {"mu": m}


class Ema(Direction):
    r"""Exponential moving average of the gradient, optionally bias-corrected (Adam's ``m``).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad
        d_t = m_t / (1 - \beta_1^t) \;\;\text{(debias)} \quad\text{or}\quad d_t = m_t

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
      https://arxiv.org/abs/1412.6980
    """

    elementwise = True

    slots = ("mu",)
    summary = "EMA of gradients m = β1·m + (1−β1)·g"
    decay: float = hyper(0.9, "unit")
    debias: bool = static(True)

    @property
    def needs_step(self) -> bool:  # type: ignore[override]
        return self.debias

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        m = self.decay * slots["mu"] + (1 - self.decay) * g
        d = m / one_minus_pow(self.decay, ctx.t) if self.debias else m
        return d, {"mu": m}


class NesterovEma(Direction):
    r"""Nesterov-style bias-corrected EMA, the direction of NAdam.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        d_t = \frac{\beta_1 m_t}{1-\beta_1^{t+1}} + \frac{(1-\beta_1) g_t}{1-\beta_1^{t}}

    Equal to optax's ``nadam`` and to ``torch.optim.NAdam`` with a huge ``momentum_decay`` (say
    ``1e9``). PyTorch's μ_t = β1·(1 − ½·0.96^(t·momentum_decay)) warms β1 up with the default
    ``4e-3`` and is β1/2 throughout with ``momentum_decay=0``.

    References:
      Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR 2016 workshop.
    """

    elementwise = True

    slots = ("mu",)
    needs_step = True
    summary = "Nesterov EMA (NAdam) d = β1·m̂_{t+1} + (1−β1)·ĝ_t"
    decay: float = hyper(0.9, "unit")

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        b = self.decay
        m = b * slots["mu"] + (1 - b) * g
        d = b * m / one_minus_pow(b, ctx.t + 1) + (1 - b) * g / one_minus_pow(b, ctx.t)
        return d, {"mu": m}


class Lion(Direction):
    r"""The sign of an interpolation between momentum and gradient (Lion).

    .. math::
        d_t = \operatorname{sign}(\beta_1 m_{t-1} + (1-\beta_1) g_t), \qquad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    References:
      Chen et al., *Symbolic Discovery of Optimization Algorithms*, 2023.
      https://arxiv.org/abs/2302.06675
    """

    elementwise = True

    slots = ("mu",)
    summary = "sign(β1·m + (1−β1)·g), m = β2·m + (1−β2)·g"
    b1: float = hyper(0.9, "unit")
    b2: float = hyper(0.99, "unit")

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        m = slots["mu"]
        d = jnp.sign(self.b1 * m + (1 - self.b1) * g)
        return d, {"mu": self.b2 * m + (1 - self.b2) * g}


class Sign(Direction):
    r"""The sign of the gradient, :math:`d_t = \operatorname{sign}(g_t)` (signSGD).

    References:
      Bernstein et al., *signSGD: Compressed Optimisation for Non-Convex Problems*, ICML 2018.
    """

    elementwise = True

    summary = "sign(g)"

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        return jnp.sign(g), {}
