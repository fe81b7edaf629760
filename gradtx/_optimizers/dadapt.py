"""D-Adaptation for AdamW: the step size from a lower bound on the distance to a solution
(``optax.contrib.dadapt_adamw``)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from .._core.numerics import abs_sq, safe_sqrt
from .._core.struct import hyper
from .builder import Optimizer
from .common import Schedule
from .lr_free import DAdaptCore, LrFree, betas_named, next_estimate

__all__ = ["dadapt_adamw"]


class DAdaptAdamW(DAdaptCore):
    """What :func:`gradtx.dadapt_adamw` wraps: the whole D-Adapted AdamW step (see there).

    State (optax's ``DAdaptAdamWState`` fields): ``exp_avg`` (m), ``exp_avg_sq`` (v),
    ``grad_sum`` (s), ``estim_lr`` (d), ``numerator_weighted`` (r), ``count``.
    """

    name = "dadapt_adamw"
    learning_rate: Any = hyper(1.0, "step_size")
    b1: float = hyper(0.9, "unit")
    b2: float = hyper(0.999, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    estim_lr0: float = hyper(1e-6, "positive")
    weight_decay: float = hyper(0.0, "nonnegative")

    def knob_text(self) -> dict[str, str]:
        return {
            "g": f"EMA of γ_t·d_t·g (β1 = {self.b1!r})",
            "sigma": f"√v + ε, v = EMA of g² (β2 = {self.b2!r}) (Adam)",
            "eta": f"{self.learning_rate!r} × d_t × √(1−β2ᵗ)/(1−β1ᵗ) (in g); d_t = max(d_(t−1), "
            "r_t/((1−√β2)‖s_t‖₁)) (D-Adaptation)",
            "order": "g from γ_t·d_t·g, σ from g",
        }

    def scalars(self, hp: Any, sc: dict) -> dict:
        c = lambda x: jnp.asarray(x, sc["d"].dtype)  # noqa: E731
        sb2 = jnp.sqrt(sc["b2"])
        dlr = sc["d"] * c(hp.learning_rate) * sc["bc"]
        return {
            "sb2": sb2,
            "one_minus_sb2": (1 - sc["b2"]) / (1 + sb2),  # 1 − √β2 without cancellation
            "dlr": dlr,
            "eps": c(hp.eps),
            "decay": c(hp.weight_decay) * dlr,
        }

    def moments(self, g, m, v, s, *, cdt, sc):
        k = {n: x.astype(cdt) for n, x in sc.items()}
        # <g, s_k>_{A_k^-1}: the old s and v
        inner = jnp.sum(jnp.real(jnp.conj(g) * s / (safe_sqrt(v) + k["eps"])))
        m = k["b1"] * m + (1 - k["b1"]) * k["dlr"] * g
        v = k["b2"] * v + abs_sq(jnp.sqrt(1 - k["b2"]) * g)
        s = k["sb2"] * s + k["one_minus_sb2"] * k["dlr"] * g
        dt = sc["d"].dtype
        return m, v, s, jnp.sum(jnp.abs(s)).astype(dt), inner.astype(dt)

    def estimate(self, sc, r, inner, l1):
        r = sc["sb2"] * r + sc["one_minus_sb2"] * sc["dlr"] * inner
        return r, next_estimate(sc["d"], r, sc["one_minus_sb2"] * l1)

    def step(self, m, v, p, sc, d_next):
        k = lambda x: x.astype(m.dtype)  # noqa: E731
        return -k(sc["decay"]) * p - m / (safe_sqrt(v) + k(sc["eps"]))


def dadapt_adamw(
    learning_rate: Schedule = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    weight_decay: float = 0.0,
) -> Optimizer:
    r"""AdamW with its step size found by D-Adaptation (learning-rate free).

    With :math:`\gamma_k = \eta_k \frac{\sqrt{1-\beta_2^{k+1}}}{1-\beta_1^{k+1}}` (η_k the
    ``learning_rate`` schedule, 1 by default), :math:`d_0` = ``estim_lr0``,
    :math:`\lambda_k = d_k\gamma_k` and :math:`A_k = \operatorname{diag}(\sqrt{v_k} +
    \epsilon)`:

    .. math::
        \begin{aligned}
        r_{k+1} &= \sqrt{\beta_2}\, r_k + (1-\sqrt{\beta_2})\, \lambda_k
            \langle g_k, A_k^{-1} s_k\rangle, \qquad
        s_{k+1} = \sqrt{\beta_2}\, s_k + (1-\sqrt{\beta_2})\, \lambda_k g_k \\
        m_{k+1} &= \beta_1 m_k + (1-\beta_1)\, \lambda_k g_k, \qquad
        v_{k+1} = \beta_2 v_k + (1-\beta_2)\, g_k^2 \\
        d_{k+1} &= \max\Bigl(d_k,\; \frac{r_{k+1}}{(1-\sqrt{\beta_2})\lVert s_{k+1}\rVert_1}\Bigr),
        \qquad
        x_{k+1} = x_k - A_{k+1}^{-1} m_{k+1} - \lambda\, \lambda_k x_k
        \end{aligned}

    (λ = ``weight_decay``, decoupled; inner product and L1 norm over the whole tree). Knobs:
    g = an EMA of :math:`\lambda_k g_k` (the step is inside the momentum), σ = Adam's
    :math:`\sqrt{v} + \epsilon`, η = :math:`\gamma_k d_k` with :math:`d_k` estimated. Same
    arguments, in optax's order, as ``optax.contrib.dadapt_adamw``, and equal updates;
    ``update`` needs ``params``.

    Warning:
      This is the rule of optax and of the authors' code (``dadaptation.DAdaptAdam`` with
      ``use_bias_correction=True``, ``decouple=True``, ``growth_rate=inf``; its default has
      no bias correction), the paper's Adam variant with :math:`\gamma_k` bias-corrected.
      Where :math:`\lVert s_{k+1}\rVert_1 = 0` (only zero gradients so far) gradtx keeps
      :math:`d_k`; optax's estimate is NaN there (the authors' code skips the step). float16
      params keep m, v and s in float32; the scalars are float32 (float64 for float64 params).

    Args:
      learning_rate: η_k, a float or a schedule; the authors recommend 1 with a decay.
      betas: :math:`(\beta_1, \beta_2)` of the underlying Adam.
      eps: ε of Adam's σ.
      estim_lr0: :math:`d_0`, the initial (under-)estimate.
      weight_decay: λ, decoupled (multiplied by the step :math:`\lambda_k`).

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
      >>> tx = gradtx.dadapt_adamw()
      >>> x = jnp.zeros(2)
      >>> state, step, grad = tx.init(x), jax.jit(tx.update), jax.jit(jax.grad(f))
      >>> for _ in range(200):
      ...     u, state = step(grad(x), state, x)
      ...     x = gradtx.apply_updates(x, u)
      >>> bool(f(x) < 1e-2), bool(state.dadapt_adamw.estim_lr > 1.0)  # d grew from 1e-6
      (True, True)

    References:
      Defazio & Mishchenko, *Learning-Rate-Free Learning by D-Adaptation*, ICML 2023.
      https://arxiv.org/abs/2301.07733
    """
    b1, b2 = betas
    with betas_named():
        core = DAdaptAdamW(learning_rate, b1, b2, eps, estim_lr0, weight_decay)
    return LrFree((core,), (), "dadapt_adamw")
