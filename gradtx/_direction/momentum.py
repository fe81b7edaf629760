"""The g knob, direction, from momentum: heavy ball, EMA and Nesterov's look-ahead EMA.

Each knob is written for one array; :class:`~gradtx.Knobs` lifts it to pytrees. Symbols:
``g_t`` the gradient (or the scaled gradient when the knob runs after σ), ``m_t`` the state,
``t = step + 1`` the 1-based step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Direction
from .._core.numerics import one_minus_pow
from .._core.struct import hyper, static

__all__ = ["Momentum", "Ema", "NesterovEma"]


class _StoredDtype(Direction):
    """A direction whose ``mu`` slot may be stored in a chosen dtype (``dtype`` field).

    ``dtype=None`` stores ``mu`` in the param's dtype. The step runs in the compute dtype (at
    least float32) and the new ``mu`` is cast back to the stored dtype. Subclasses declare the
    field last (``dtype: Any = static(None)``), so positional arguments keep their order.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        dtype = getattr(self, "dtype", None)
        if dtype is not None:
            try:
                dt = jnp.dtype(dtype)
            except TypeError:
                raise TypeError(
                    f"gradtx.{self.name}: dtype must be a dtype or None, got {dtype!r}"
                ) from None
            if not jnp.issubdtype(dt, jnp.inexact):
                raise TypeError(f"gradtx.{self.name}: dtype must be a float dtype, got {dt}")
            object.__setattr__(self, "dtype", dt)

    def init_leaf(self, param: jax.Array) -> dict[str, jax.Array]:
        dtype = getattr(self, "dtype", None)
        dt = jnp.result_type(param) if dtype is None else jax.dtypes.canonicalize_dtype(dtype)
        return {"mu": jnp.zeros_like(param, dtype=dt)}


class Momentum(_StoredDtype):
    r"""Heavy-ball momentum (Polyak), or Nesterov's accelerated form.

    .. math::
        m_t = \mu\, m_{t-1} + g_t, \qquad
        d_t = m_t \;\;\text{(heavy ball)}, \qquad d_t = g_t + \mu\, m_t \;\;\text{(Nesterov)}

    ``m_0 = 0``. This is ``torch.optim.SGD`` with ``dampening=0`` and optax's ``trace``.

    Attributes:
      momentum: μ in [0, 1], a float (or a schedule); 0 gives ``d_t = g_t``, 1 the sum of
        all past gradients (optax's ``trace(decay=1.0)``).
      nesterov: use Nesterov's form.
      dtype: the dtype ``m`` is stored in (optax's ``accumulator_dtype``); ``None``: the
        param's dtype.

    References:
      Polyak, *Some methods of speeding up the convergence of iteration methods*, 1964.
      Sutskever et al., *On the importance of initialization and momentum in deep learning*,
      ICML 2013.
    """

    elementwise = True

    slots = ("mu",)
    summary = "heavy-ball momentum m = μ·m + g"
    momentum: float = hyper(0.9, "unit_closed")
    nesterov: bool = static(False)
    dtype: Any = static(None)

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        m = self.momentum * slots["mu"] + g
        d = g + self.momentum * m if self.nesterov else m
        return d, {"mu": m}


class Ema(_StoredDtype):
    r"""Exponential moving average of the gradient, optionally bias-corrected (Adam's ``m``).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad
        d_t = m_t / (1 - \beta_1^t) \;\;\text{(debias)} \quad\text{or}\quad d_t = m_t

    Attributes:
      decay: β1.
      debias: divide by ``1 - β1^t``.
      dtype: the dtype ``m`` is stored in (optax's ``mu_dtype`` / ``accumulator_dtype``);
        ``None``: the param's dtype.

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
      https://arxiv.org/abs/1412.6980
    """

    elementwise = True

    slots = ("mu",)
    summary = "EMA of gradients m = β1·m + (1−β1)·g"
    decay: float = hyper(0.9, "unit")
    debias: bool = static(True)
    dtype: Any = static(None)

    @property
    def needs_step(self) -> bool:  # type: ignore[override]
        return self.debias

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        m = self.decay * slots["mu"] + (1 - self.decay) * g
        d = m / one_minus_pow(self.decay, ctx.t) if self.debias else m
        return d, {"mu": m}


class NesterovEma(_StoredDtype):
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
    dtype: Any = static(None)

    def step(self, g: jax.Array, slots: dict, ctx: Context) -> tuple[jax.Array, dict]:
        b = self.decay
        m = b * slots["mu"] + (1 - b) * g
        d = b * m / one_minus_pow(b, ctx.t + 1) + (1 - b) * g / one_minus_pow(b, ctx.t)
        return d, {"mu": m}
