"""Adam's σ and its two direct variants: AMSGrad (a running maximum) and Adamax (an infinity
norm).

Each keeps a statistic of ``|g_t|²`` (or ``|g_t|``) per parameter and returns ``m_t / σ_t``,
where ``m_t`` is the direction (the raw gradient when no direction knob is set);
``t = step + 1``. Storage dtypes, overflow-safe squares and safe roots as described in
:mod:`gradtx._scale.common`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.knobs import Scale
from .._core.struct import hyper
from .common import debiased_root, moment_full, scaled_sq

__all__ = ["AdamScale", "AmsgradScale", "AdamaxScale"]


class AdamScale(Scale):
    r"""Adam's σ: the root of the bias-corrected EMA of squared gradients.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) |g_t|^2, \quad
        \hat v_t = v_t / (1-\beta_2^t), \quad
        \sigma_t = \sqrt{\hat v_t + \epsilon_{root}} + \epsilon

    With the :class:`~gradtx.Ema` direction (debiased) this is Adam exactly as in the paper,
    ``torch.optim.Adam`` and ``optax.adam``. Computed as
    :math:`\sigma_t = \sqrt{v_t + \epsilon_{root}(1-\beta_2^t)} / \sqrt{1-\beta_2^t} + \epsilon`
    with :math:`(1-\beta_2)|g_t|^2 = |\sqrt{1-\beta_2}\,g_t|^2`, so gradients up to ~1e20 do not
    overflow float32 (the step stays ≈ η·sign(g)). ``nu`` is stored in float32 for float16
    params.

    Warning:
      A bfloat16 ``nu`` (bfloat16 params) drifts upwards: an EMA increment below half an ulp
      of ``v`` rounds away while ``β2·v`` rounds up, so ``v`` ratchets. Measured: 1.57 instead
      of 0.99 after 5,000 steps of unit gradients; keep bfloat16 models' optimizer state in
      float32 where this matters (see docs/nan_inf.md).

    References:
      Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """

    elementwise = True

    slots = ("nu",)
    needs_step = True
    summary = "σ = √(v̂) + ε, v = EMA of g² (Adam)"
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    eps_root: float = hyper(0.0, "nonnegative")

    def init_leaf(self, param: jax.Array) -> dict:
        return {"nu": moment_full(param)}

    def step(self, g, m, slots, param, ctx: Context):
        nu = self.b2 * slots["nu"] + scaled_sq(1 - self.b2, g)
        sigma = debiased_root(nu, self.b2, ctx.t, self.eps_root) + self.eps
        return m / sigma, {"nu": nu}


class AmsgradScale(Scale):
    r"""AMSGrad's σ: Adam's with a running maximum of the second moment, so σ never shrinks.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) |g_t|^2, \quad
        \tilde v_t = \max(\tilde v_{t-1}, v_t), \quad
        \sigma_t = \sqrt{\tilde v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon

    Overflow-safe as :class:`AdamScale`; ``nu`` and ``nu_max`` are stored in float32 for
    float16 params.

    Warning:
      The maximum is over the raw moment and bias-corrected afterwards, as in
      ``torch.optim.Adam(amsgrad=True)``. optax's ``amsgrad`` takes the maximum of the
      bias-corrected moments instead; the two differ during the first ~1/(1−β2) steps.

    References:
      Reddi, Kale & Kumar, *On the Convergence of Adam and Beyond*, ICLR 2018.
    """

    elementwise = True

    slots = ("nu", "nu_max")
    needs_step = True
    summary = "σ = √(max_t v̂) + ε (AMSGrad)"
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    eps_root: float = hyper(0.0, "nonnegative")

    def init_leaf(self, param: jax.Array) -> dict:
        return {"nu": moment_full(param), "nu_max": moment_full(param)}

    def step(self, g, m, slots, param, ctx: Context):
        nu = self.b2 * slots["nu"] + scaled_sq(1 - self.b2, g)
        nu_max = jnp.maximum(slots["nu_max"], nu)
        sigma = debiased_root(nu_max, self.b2, ctx.t, self.eps_root) + self.eps
        return m / sigma, {"nu": nu, "nu_max": nu_max}


class AdamaxScale(Scale):
    r"""Adamax's σ: an exponentially weighted infinity norm of past gradients.

    .. math::
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \qquad \sigma_t = u_t

    ``ε`` sits inside the maximum, as in ``torch.optim.Adamax`` and ``optax.adamax`` (the paper
    has no ε), so σ is never below ε. ``u`` is a magnitude, not a square: it is kept in the
    param's dtype (it cannot overflow where ``g`` does not).

    References:
      Kingma & Ba, *Adam*, ICLR 2015, section 7.1.
    """

    elementwise = True

    slots = ("nu",)
    summary = "σ = max(β2·u, |g| + ε) (Adamax)"
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-8, "nonnegative")

    def step(self, g, m, slots, param, ctx: Context):
        # |g| in g's dtype (a complex |g| has imaginary part 0), as the other values of the rule.
        u = jnp.maximum(self.b2 * slots["nu"], jnp.abs(g).astype(g.dtype) + self.eps)
        return m / u, {"nu": u}
