"""Prodigy: AdamW whose step size D-Adaptation estimates, with recent gradients weighted more
(``optax.contrib.prodigy``)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from .._core.numerics import abs_sq, safe_sqrt
from .._core.struct import hyper, static
from .builder import Optimizer
from .common import Schedule
from .lr_free import DAdaptCore, LrFree, betas_named, next_estimate

__all__ = ["prodigy"]


class Prodigy(DAdaptCore):
    """What :func:`gradtx.prodigy` wraps: the whole Prodigy step (see there for the rule).

    State (optax's ``ProdigyState`` fields): ``exp_avg`` (m), ``exp_avg_sq`` (v),
    ``grad_sum`` (s), ``params0`` (:math:`x_0`), ``estim_lr`` (d), ``numerator_weighted``
    (r), ``count``.
    """

    name = "prodigy"
    keeps_params0 = True
    learning_rate: Any = hyper(1.0, "step_size")
    b1: float = hyper(0.9, "unit")
    b2: float = hyper(0.999, "unit")
    beta3: float | None = hyper(None, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    estim_lr0: float = hyper(1e-6, "positive")
    estim_lr_coef: float = hyper(1.0, "positive")
    weight_decay: float = hyper(0.0, "nonnegative")
    safeguard_warmup: bool = static(False)

    def knob_text(self) -> dict[str, str]:
        return {
            "g": f"EMA of d_t·g (β1 = {self.b1!r}), debiased through η",
            "sigma": f"√v + d_(t+1)·ε, v = EMA of d_t²·g² (β2 = {self.b2!r}) (Prodigy)",
            "eta": f"{self.learning_rate!r} × d_t × √(1−β2ᵗ)/(1−β1ᵗ); d_t = max(d_(t−1), "
            "r_t/‖s_t‖₁) from ⟨g, x_0 − x⟩ (Prodigy's D-adaptation)",
            "order": "g and σ from d_t·g; η from the estimate d_t",
        }

    def scalars(self, hp: Any, sc: dict) -> dict:
        c = lambda x: jnp.asarray(x, sc["d"].dtype)  # noqa: E731
        d, d0 = sc["d"], c(hp.estim_lr0)
        dlr = d * c(hp.learning_rate) * sc["bc"]
        return {
            "b3": jnp.sqrt(sc["b2"]) if hp.beta3 is None else c(hp.beta3),
            "d0": d0,
            "dlr": dlr,
            "w": d / d0 * (d if self.safeguard_warmup else dlr),  # the weight of g in s
            "eps": c(hp.eps),
            "coef": c(hp.estim_lr_coef),
            "decay": c(hp.weight_decay) * dlr,
        }

    def moments(self, g, m, v, s, p0, p, *, cdt, sc):
        k = {n: x.astype(cdt) for n, x in sc.items()}
        dg = k["d"] * g
        m = k["b1"] * m + (1 - k["b1"]) * dg
        v = k["b2"] * v + abs_sq(jnp.sqrt(1 - k["b2"]) * dg)
        s = k["b3"] * s + k["w"] * g
        shift = jnp.sum(jnp.real(jnp.conj(g) * (p0 - p)))  # <g, x_0 - x>
        dt = sc["d"].dtype
        return m, v, s, jnp.sum(jnp.abs(s)).astype(dt), shift.astype(dt)

    def estimate(self, sc, r, inner, l1):
        r = sc["b3"] * r + sc["d"] / sc["d0"] * sc["dlr"] * inner
        return r, next_estimate(sc["d"], sc["coef"] * r, l1)

    def step(self, m, v, p, sc, d_next):
        k = lambda x: x.astype(m.dtype)  # noqa: E731
        return -k(sc["decay"]) * p - k(sc["dlr"]) * m / (safe_sqrt(v) + k(d_next * sc["eps"]))


def prodigy(
    learning_rate: Schedule = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    beta3: float | None = None,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    estim_lr_coef: float = 1.0,
    weight_decay: float = 0.0,
    safeguard_warmup: bool = False,
) -> Optimizer:
    r"""Prodigy: learning-rate-free AdamW (D-Adaptation with recent gradients weighted more).

    With :math:`\gamma_k = \eta_k \frac{\sqrt{1-\beta_2^{k+1}}}{1-\beta_1^{k+1}}` (η_k the
    ``learning_rate`` schedule, 1 by default), :math:`d_0` = ``estim_lr0``, :math:`x_0` the
    params at ``init`` and :math:`\beta_3` = ``beta3`` (:math:`\sqrt{\beta_2}` when ``None``):

    .. math::
        \begin{aligned}
        m_{k+1} &= \beta_1 m_k + (1-\beta_1)\, d_k g_k, \qquad
        v_{k+1} = \beta_2 v_k + (1-\beta_2)\, d_k^2 g_k^2 \\
        r_{k+1} &= \beta_3 r_k + \tfrac{d_k}{d_0}\, \gamma_k d_k \langle g_k, x_0 - x_k\rangle,
        \qquad s_{k+1} = \beta_3 s_k + \tfrac{d_k}{d_0}\, \gamma_k d_k\, g_k \\
        d_{k+1} &= \max\Bigl(d_k,\; c\,\frac{r_{k+1}}{\lVert s_{k+1}\rVert_1}\Bigr) \\
        x_{k+1} &= x_k - \gamma_k d_k \Bigl(\frac{m_{k+1}}{\sqrt{v_{k+1}} + d_{k+1}\epsilon}
            + \lambda x_k\Bigr)
        \end{aligned}

    (:math:`c` = ``estim_lr_coef``, λ = ``weight_decay``, decoupled; inner products and the
    L1 norm over the whole tree; with ``safeguard_warmup`` the weight of :math:`g_k` in
    :math:`s` is :math:`d_k^2/d_0`, without :math:`\gamma_k`). Knobs: g = an EMA of
    :math:`d_k g_k`, σ = :math:`\sqrt{v} + d\epsilon`, η = :math:`\gamma_k d_k` with
    :math:`d_k` estimated (``describe()`` says so). Same arguments, in optax's order, as
    ``optax.contrib.prodigy``, and equal updates; ``update`` needs ``params``.

    Warning:
      This is the rule of optax and of the authors' code (``prodigyopt`` with
      ``use_bias_correction=True``, ``decouple=True``, ``growth_rate=inf``; prodigyopt's
      default has no bias correction). The paper's pseudo-code scales the same recursions by
      :math:`(1-\sqrt{\beta_2})` instead of :math:`1/d_0` (a factor that cancels in
      :math:`r/\lVert s\rVert_1` when :math:`\beta_3=\sqrt{\beta_2}`), has no bias correction
      and multiplies ε by :math:`d_k` rather than :math:`d_{k+1}`. Where
      :math:`\lVert s_{k+1}\rVert_1 = 0` (only zero gradients so far) gradtx keeps
      :math:`d_k`; optax's estimate is NaN there (prodigyopt skips the step). float16 params
      keep m, v and s in float32; the scalars are float32 (float64 for float64 params).

    Args:
      learning_rate: η_k, a float or a schedule; the authors recommend 1 with a cosine or
        linear decay (and warmup).
      betas: :math:`(\beta_1, \beta_2)` of the underlying Adam.
      beta3: :math:`\beta_3`, the decay of r and s; ``None``: :math:`\sqrt{\beta_2}`.
      eps: ε, multiplied by the estimate :math:`d`.
      estim_lr0: :math:`d_0`, the initial (under-)estimate.
      estim_lr_coef: c, multiplying every new estimate.
      weight_decay: λ, decoupled (multiplied by the step :math:`\gamma_k d_k`).
      safeguard_warmup: leave :math:`\gamma_k` out of s's weight, for schedules with a warmup.

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
      >>> tx = gradtx.prodigy()
      >>> x = jnp.zeros(2)
      >>> state, step, grad = tx.init(x), jax.jit(tx.update), jax.jit(jax.grad(f))
      >>> for _ in range(200):
      ...     u, state = step(grad(x), state, x)
      ...     x = gradtx.apply_updates(x, u)
      >>> bool(f(x) < 1e-2), bool(state.prodigy.estim_lr > 1.0)  # d grew from 1e-6
      (True, True)

    References:
      Mishchenko & Defazio, *Prodigy: An Expeditiously Adaptive Parameter-Free Learner*,
      ICML 2024. https://arxiv.org/abs/2306.06101
    """
    b1, b2 = betas
    with betas_named():
        core = Prodigy(
            learning_rate, b1, b2, beta3, eps, estim_lr0, estim_lr_coef, weight_decay,
            safeguard_warmup,
        )  # fmt: skip
    return LrFree((core,), (), "prodigy")
