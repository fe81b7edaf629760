"""NumPy float64 reference implementations (oracles) of gradtx's optimizers and stages.

Written from the published algorithms, not from gradtx's code; where gradtx intentionally
departs from a paper (its docstrings' Warning sections and update rules), the oracle follows
gradtx's documented definition and a comment says so.

Per-array oracles are small classes built with the same keyword arguments (and the same
defaults) as the gradtx function they mirror, with two methods::

    state = oracle.init(p)                          # p: one float64 array
    update, state = oracle.step(g, state, p, t)     # t: 1-based step; update is added to p

``learning_rate`` may be a float or a function of the number of updates already applied
(``t - 1``). A ``mask``-like argument is a bool for the one array: ``True`` = the stage acts.

Tree oracles have the same two methods over a *list* of arrays (the flattened pytree):
:class:`PerLeaf` lifts a per-array oracle, :class:`ClipByGlobalNorm` needs the whole tree and
:class:`Chain` composes tree oracles. :func:`run` drives a tree oracle over a pytree and a
sequence of gradients; :func:`build` makes the oracle of a named gradtx optimizer from the
keyword arguments the optimizer was built with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["ORACLES", "build", "run", "PerLeaf", "Chain", "ClipByGlobalNorm", "as_float32_value"]

Array = np.ndarray


def _lr(learning_rate: float | Callable[[int], float], t: int) -> float:
    """η at 1-based step ``t``: a schedule sees the count of updates already applied, t - 1."""
    return float(learning_rate(t - 1)) if callable(learning_rate) else float(learning_rate)


def _norm(x: Array) -> float:
    return float(np.sqrt(np.sum(np.square(x))))


def _rms(x: Array) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def _zeros(p: Array) -> Array:
    return np.zeros_like(p, dtype=np.float64)


# ================================================================================================
# Plain and momentum SGD, signSGD
# ================================================================================================


class SGD:
    """Robbins & Monro 1951; heavy ball (Polyak 1964) ``b = μb + g, θ -= ηb``; Nesterov as in
    Sutskever et al. 2013 in PyTorch's form ``θ -= η(g + μb)`` with ``b = μb + g``."""

    def __init__(self, learning_rate, momentum=None, nesterov=False):
        self.lr, self.mu, self.nesterov = learning_rate, momentum, nesterov

    def init(self, p):
        return {"buf": _zeros(p)}

    def step(self, g, s, p, t):
        if self.mu is None:
            return -_lr(self.lr, t) * g, s
        buf = self.mu * s["buf"] + g
        d = g + self.mu * buf if self.nesterov else buf
        return -_lr(self.lr, t) * d, {"buf": buf}


class SignSGD:
    """Bernstein et al. 2018: ``θ -= η sign(g)``."""

    def __init__(self, learning_rate):
        self.lr = learning_rate

    def init(self, p):
        return {}

    def step(self, g, s, p, t):
        return -_lr(self.lr, t) * np.sign(g), s


# ================================================================================================
# Adagrad, RMSProp, Adadelta
# ================================================================================================


class Adagrad:
    """Duchi, Hazan & Singer 2011 (diagonal): ``G = G + g², θ -= η g / (√G + ε)``, ``G₀ = a₀``.

    gradtx: ε outside the root (PyTorch's placement, documented); ``average=True`` is the
    lecture's root-*mean*-square ``√(G/t)``.
    """

    def __init__(self, learning_rate, initial_accumulator_value=0.1, eps=1e-7, *, average=False):
        self.lr, self.a0, self.eps, self.average = (
            learning_rate,
            initial_accumulator_value,
            eps,
            average,
        )

    def init(self, p):
        return {"G": np.full_like(p, self.a0, dtype=np.float64)}

    def step(self, g, s, p, t):
        G = s["G"] + g**2
        rms = np.sqrt(G / t) if self.average else np.sqrt(G)
        return -_lr(self.lr, t) * g / (rms + self.eps), {"G": G}


class RMSProp:
    """Tieleman & Hinton 2012: ``E[g²] = αE[g²] + (1-α)g²``, ``θ -= η g / (√E[g²] + ε)``.

    Centred (Graves 2013, eq. 38-40): divide by ``√(E[g²] - E[g]²)``. Momentum as in PyTorch
    (and Graves): ``b = μb + g/σ``, ``θ -= ηb`` (Nesterov: ``θ -= η(g/σ + μb)``). gradtx puts ε
    outside the root by default (PyTorch) and inside with ``eps_in_sqrt`` (optax), documented.
    """

    def __init__(
        self,
        learning_rate,
        decay=0.9,
        eps=1e-8,
        initial_scale=0.0,
        eps_in_sqrt=False,
        centered=False,
        momentum=None,
        nesterov=False,
    ):
        self.lr, self.alpha, self.eps, self.v0 = learning_rate, decay, eps, initial_scale
        self.eps_in_sqrt, self.centered = eps_in_sqrt, centered
        self.mu, self.nesterov = momentum, nesterov

    def init(self, p):
        Eg2 = np.full_like(p, self.v0, dtype=np.float64)
        return {"Eg2": Eg2, "Eg": _zeros(p), "buf": _zeros(p)}

    def step(self, g, s, p, t):
        a = self.alpha
        Eg2 = a * s["Eg2"] + (1 - a) * g**2
        Eg = a * s["Eg"] + (1 - a) * g
        var = Eg2 - Eg**2 if self.centered else Eg2
        sigma = np.sqrt(var + self.eps) if self.eps_in_sqrt else np.sqrt(var) + self.eps
        x = g / sigma
        buf = s["buf"]
        if self.mu:
            buf = self.mu * buf + x
            x = x + self.mu * buf if self.nesterov else buf
        return -_lr(self.lr, t) * x, {"Eg2": Eg2, "Eg": Eg, "buf": buf}


class Adadelta:
    """Zeiler 2012, Algorithm 1, times a learning rate (1 in the paper, as in PyTorch)::

        E[g²] = ρE[g²] + (1-ρ)g²;  Δ = RMS[Δ]_{t-1} / RMS[g]_t · g;  E[Δ²] = ρE[Δ²] + (1-ρ)Δ²
        θ -= η Δ,   RMS[y] = √(E[y²] + ε)

    ``weight_decay`` is coupled L2 (``g += λθ`` first), as in ``torch.optim.Adadelta``.
    """

    def __init__(self, learning_rate=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
        self.lr, self.rho, self.eps, self.wd = learning_rate, rho, eps, weight_decay

    def init(self, p):
        return {"Eg2": _zeros(p), "Ed2": _zeros(p)}

    def step(self, g, s, p, t):
        g = g + self.wd * p
        r = self.rho
        Eg2 = r * s["Eg2"] + (1 - r) * g**2
        delta = np.sqrt(s["Ed2"] + self.eps) / np.sqrt(Eg2 + self.eps) * g
        Ed2 = r * s["Ed2"] + (1 - r) * delta**2
        return -_lr(self.lr, t) * delta, {"Eg2": Eg2, "Ed2": Ed2}


# ================================================================================================
# The Adam family
# ================================================================================================


class Adam:
    """Kingma & Ba 2015, Algorithm 1, with decoupled weight decay (Loshchilov & Hutter 2019)
    and NAdam's Nesterov momentum (Dozat 2016) as options::

        m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;  m̂ = m/(1-β1^t);  v̂ = v/(1-β2^t)
        θ -= η (m̂ / (√(v̂ + ε_root) + ε) + λθ)

    ``ε_root`` (inside the root) is gradtx's/optax's addition; the paper has only ε outside.
    AdamW's decay λθ is multiplied by η (as in PyTorch and optax; the paper uses a separate
    schedule multiplier), as gradtx documents. Nesterov (Dozat, with a constant μ = β1, so the
    products of μ's are powers): ``m̂ = β1 m/(1-β1^{t+1}) + (1-β1) g/(1-β1^t)``.
    """

    def __init__(
        self,
        learning_rate,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        eps_root=0.0,
        weight_decay=0.0,
        mask=True,
        *,
        nesterov=False,
    ):
        self.lr, self.b1, self.b2, self.eps, self.eps_root = learning_rate, b1, b2, eps, eps_root
        self.wd = weight_decay if mask else 0.0
        self.nesterov = nesterov

    def init(self, p):
        return {"m": _zeros(p), "v": _zeros(p)}

    def step(self, g, s, p, t):
        b1, b2 = self.b1, self.b2
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * g**2
        if self.nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        u = m_hat / (np.sqrt(v_hat + self.eps_root) + self.eps) + self.wd * p
        return -_lr(self.lr, t) * u, {"m": m, "v": v}


def AdamW(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=1e-4, mask=True):
    return Adam(learning_rate, b1, b2, eps, eps_root, weight_decay, mask)


def NAdam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0):
    return Adam(learning_rate, b1, b2, eps, eps_root, nesterov=True)


def NAdamW(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=1e-4, mask=True):
    return Adam(learning_rate, b1, b2, eps, eps_root, weight_decay, mask, nesterov=True)


class Adamax:
    """Kingma & Ba 2015, Algorithm 2::

        m = β1 m + (1-β1) g;  u = max(β2 u, |g|);  θ -= η/(1-β1^t) · m / u

    The paper has no ε; gradtx (like torch and optax) puts it inside the maximum,
    ``u = max(β2 u, |g| + ε)``, documented.
    """

    def __init__(self, learning_rate, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = learning_rate, b1, b2, eps

    def init(self, p):
        return {"m": _zeros(p), "u": _zeros(p)}

    def step(self, g, s, p, t):
        m = self.b1 * s["m"] + (1 - self.b1) * g
        u = np.maximum(self.b2 * s["u"], np.abs(g) + self.eps)
        return -_lr(self.lr, t) / (1 - self.b1**t) * m / u, {"m": m, "u": u}


class AMSGrad:
    """Reddi, Kale & Kumar 2018, Algorithm 2: ``v̂ = max(v̂, v)``, ``θ -= η m / √v̂``.

    The paper has no bias correction. gradtx documents PyTorch's form instead: the maximum of the
    *raw* second moments, then both moments bias-corrected, ``θ -= η m̂ / (√(v̂/(1-β2^t) + ε_root)
    + ε)``; that is what this oracle computes.
    """

    def __init__(self, learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0):
        self.lr, self.b1, self.b2, self.eps, self.eps_root = learning_rate, b1, b2, eps, eps_root

    def init(self, p):
        return {"m": _zeros(p), "v": _zeros(p), "v_max": _zeros(p)}

    def step(self, g, s, p, t):
        m = self.b1 * s["m"] + (1 - self.b1) * g
        v = self.b2 * s["v"] + (1 - self.b2) * g**2
        v_max = np.maximum(s["v_max"], v)
        m_hat = m / (1 - self.b1**t)
        sigma = np.sqrt(v_max / (1 - self.b2**t) + self.eps_root) + self.eps
        return -_lr(self.lr, t) * m_hat / sigma, {"m": m, "v": v, "v_max": v_max}


class AdaBelief:
    """Zhuang et al. 2020, Algorithm 2::

        m = β1 m + (1-β1) g;  s = β2 s + (1-β2)(g - m)² + ε;  m̂ = m/(1-β1^t);  ŝ = s/(1-β2^t)
        θ -= η m̂ / (√ŝ + ε)

    The paper's two ε are gradtx's ``eps_root`` (inside s) and ``eps`` (outside the root).
    """

    def __init__(self, learning_rate, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16):
        self.lr, self.b1, self.b2, self.eps, self.eps_root = learning_rate, b1, b2, eps, eps_root

    def init(self, p):
        return {"m": _zeros(p), "s": _zeros(p)}

    def step(self, g, st, p, t):
        m = self.b1 * st["m"] + (1 - self.b1) * g
        s = self.b2 * st["s"] + (1 - self.b2) * (g - m) ** 2 + self.eps_root
        m_hat = m / (1 - self.b1**t)
        s_hat = s / (1 - self.b2**t)
        return -_lr(self.lr, t) * m_hat / (np.sqrt(s_hat) + self.eps), {"m": m, "s": s}


class Yogi:
    """Zaheer et al. 2018, Algorithm 2::

        m = β1 m + (1-β1) g;  v = v - (1-β2) sign(v - g²) g²;  θ -= η m / (√v + ε)

    The paper has no bias correction; gradtx documents optax's ``m̂ = m/(1-β1^t)``,
    ``v̂ = v/(1-β2^t)``, with ``m₀ = 0`` (paper) and ``v₀ = initial_accumulator_value``.
    """

    def __init__(self, learning_rate, b1=0.9, b2=0.999, eps=1e-3, initial_accumulator_value=1e-6):
        self.lr, self.b1, self.b2, self.eps = learning_rate, b1, b2, eps
        self.v0 = initial_accumulator_value

    def init(self, p):
        return {"m": _zeros(p), "v": np.full_like(p, self.v0, dtype=np.float64)}

    def step(self, g, s, p, t):
        m = self.b1 * s["m"] + (1 - self.b1) * g
        v = s["v"] - (1 - self.b2) * np.sign(s["v"] - g**2) * g**2
        m_hat = m / (1 - self.b1**t)
        v_hat = v / (1 - self.b2**t)
        return -_lr(self.lr, t) * m_hat / (np.sqrt(v_hat) + self.eps), {"m": m, "v": v}


class RAdam:
    """Liu et al. 2020, Algorithm 2::

        ρ∞ = 2/(1-β2) - 1;  ρ_t = ρ∞ - 2tβ2^t/(1-β2^t)
        if ρ_t > threshold:  l = 1/√v̂,  r = √((ρ_t-4)(ρ_t-2)ρ∞ / ((ρ∞-4)(ρ∞-2)ρ_t)),
                             θ -= η r m̂ l
        else:                θ -= η m̂

    The paper's threshold is 4; gradtx's is an argument (default 5, optax's). gradtx documents
    ``l = 1/(√(v̂ + ε_root) + ε)`` (the paper has no ε).
    """

    def __init__(self, learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0):
        self.lr, self.b1, self.b2, self.eps, self.eps_root = learning_rate, b1, b2, eps, eps_root
        self.threshold = threshold

    def init(self, p):
        return {"m": _zeros(p), "v": _zeros(p)}

    def step(self, g, s, p, t):
        b1, b2 = self.b1, self.b2
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho_t > self.threshold:
            v_hat = v / (1 - b2**t)
            num = (rho_t - 4) * (rho_t - 2) * rho_inf
            r = np.sqrt(num / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            u = r * m_hat / (np.sqrt(v_hat + self.eps_root) + self.eps)
        else:
            u = m_hat
        return -_lr(self.lr, t) * u, {"m": m, "v": v}


# ================================================================================================
# Lion, LAMB, LARS
# ================================================================================================


class Lion:
    """Chen et al. 2023, Algorithm 2 (η multiplies the decay, as in the paper)::

    c = β1 m + (1-β1) g;  θ -= η (sign(c) + λθ);  m = β2 m + (1-β2) g
    """

    def __init__(self, learning_rate, b1=0.9, b2=0.99, weight_decay=1e-3, mask=True):
        self.lr, self.b1, self.b2 = learning_rate, b1, b2
        self.wd = weight_decay if mask else 0.0

    def init(self, p):
        return {"m": _zeros(p)}

    def step(self, g, s, p, t):
        c = self.b1 * s["m"] + (1 - self.b1) * g
        u = -_lr(self.lr, t) * (np.sign(c) + self.wd * p)
        return u, {"m": self.b2 * s["m"] + (1 - self.b2) * g}


def _trust_ratio(p: Array, u: Array, coefficient: float, eps: float, min_norm: float) -> float:
    """gradtx's documented ratio ``c·max(‖θ‖, n₀)/(max(‖u‖, n₀) + ε)``, 1 if a norm is 0."""
    p_norm, u_norm = max(_norm(p), min_norm), max(_norm(u), min_norm)
    if p_norm == 0 or u_norm == 0:
        return 1.0
    return coefficient * p_norm / (u_norm + eps)


class LAMB:
    """You et al. 2020, Algorithm 2 with φ the identity::

        m, v, m̂, v̂ as in Adam;  r = m̂ / (√(v̂ + ε_root) + ε);  u = r + λθ
        θ -= η ‖θ‖/‖u‖ · u        (ratio 1 when either norm is 0, as gradtx documents)

    ``mask`` removes both the decay and the trust ratio from an array (gradtx's definition).
    """

    def __init__(
        self,
        learning_rate,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        eps_root=0.0,
        weight_decay=0.0,
        mask=True,
    ):
        self.adam = Adam(1.0, b1, b2, eps, eps_root)
        self.lr, self.wd, self.mask = learning_rate, weight_decay, mask

    def init(self, p):
        return self.adam.init(p)

    def step(self, g, s, p, t):
        neg_r, s = self.adam.step(g, s, p, t)  # η = 1: -m̂/(√v̂ + ε)
        u = -neg_r
        if self.mask:
            u = u + self.wd * p
            u = _trust_ratio(p, u, 1.0, 0.0, 0.0) * u
        return -_lr(self.lr, t) * u, s


class LARS:
    """You, Gitman & Ginsburg 2017, Algorithm 1::

        g = ∇L + βθ;  λ_local = c ‖θ‖ / (‖∇L‖ + β‖θ‖);  m = μ m + γ λ_local g;  θ -= m

    gradtx documents (like optax) the norm of the decayed gradient itself in the ratio,
    ``λ_local = c‖θ‖/(‖g‖ + ε)``, ratio 1 when either norm is 0, and η applied after the
    momentum (``m = μm + λ_local g``, ``θ -= η m``; Nesterov ``θ -= η(λ_local g + μm)``). The
    two forms of η agree for a constant η. That is what this oracle computes.
    """

    def __init__(
        self,
        learning_rate,
        weight_decay=0.0,
        weight_decay_mask=True,
        trust_coefficient=0.001,
        eps=0.0,
        trust_ratio_mask=True,
        momentum=0.9,
        nesterov=False,
    ):
        self.lr, self.c, self.eps, self.mu, self.nesterov = (
            learning_rate,
            trust_coefficient,
            eps,
            momentum,
            nesterov,
        )
        self.wd = weight_decay if weight_decay_mask else 0.0
        self.trust = trust_ratio_mask

    def init(self, p):
        return {"m": _zeros(p)}

    def step(self, g, s, p, t):
        g = g + self.wd * p
        if self.trust:
            g = _trust_ratio(p, g, self.c, self.eps, 0.0) * g
        m = s["m"]
        if self.mu:
            m = self.mu * m + g
            g = g + self.mu * m if self.nesterov else m
        return -_lr(self.lr, t) * g, {"m": m}


# ================================================================================================
# Adafactor
# ================================================================================================


class Adafactor:
    """Shazeer & Stern 2018, Algorithms 4 (factored) and 5 (not), with update clipping (sec. 6)
    and relative step size (sec. 8)::

        β̂2 = 1 - t^{-c};  G = g² + ε1
        factored (matrix n×m):  R = β̂2 R + (1-β̂2) G 1_m;  C = β̂2 C + (1-β̂2) 1_nᵀ G;
                                V̂ = R C / (1_nᵀ R)
        otherwise:              V̂ = β̂2 V̂ + (1-β̂2) G
        U = g / √V̂;  Û = U / max(1, RMS(U)/d);  Û ← Û · max(ε2, RMS(θ_{t-1}))

    gradtx's documented extensions and departures, followed here: an array is factored over its
    two largest axes (others are batch axes) when both have at least ``min_dim_size_to_factor``
    entries; ``learning_rate`` η replaces the paper's schedule ρ_t (η = 1 if ``None``); an
    optional momentum EMA without bias correction, ``m = β1 m + (1-β1) Û``; and weight decay
    multiplied by η: ``θ -= η (m + λθ)``. The paper's row/column *sums* are used here; gradtx
    keeps means, the same V̂.
    """

    def __init__(
        self,
        learning_rate=None,
        min_dim_size_to_factor=128,
        decay_rate=0.8,
        decay_offset=0,
        multiply_by_parameter_scale=True,
        clipping_threshold=1.0,
        momentum=None,
        weight_decay_rate=None,
        eps=1e-30,
        factored=True,
        weight_decay_mask=True,
    ):
        self.lr = 1.0 if learning_rate is None else learning_rate
        self.min_dim, self.c, self.offset = min_dim_size_to_factor, decay_rate, decay_offset
        self.param_scale, self.d = multiply_by_parameter_scale, clipping_threshold
        self.b1, self.eps1, self.factored = momentum, eps, factored
        self.wd = (weight_decay_rate or 0.0) if weight_decay_mask else 0.0
        self.eps2 = 1e-3

    def _axes(self, shape):
        """(second largest, largest) axis, or None for an unfactored moment."""
        if not self.factored or len(shape) < 2:
            return None
        by_size = sorted(range(len(shape)), key=lambda i: shape[i])
        a, b = by_size[-2], by_size[-1]
        return (a, b) if shape[a] >= self.min_dim else None

    def init(self, p):
        axes = self._axes(p.shape)
        s = {"m": _zeros(p)}
        if axes is None:
            s["V"] = _zeros(p)
        else:
            a, b = axes
            s["R"] = np.zeros(np.delete(p.shape, b))  # sums over the largest axis b
            s["C"] = np.zeros(np.delete(p.shape, a))  # sums over axis a
        return s

    def step(self, g, s, p, t):
        beta = 1 - (t - self.offset) ** (-self.c)
        G = g**2 + self.eps1
        axes = self._axes(g.shape)
        new = dict(s)
        if axes is None:
            V_hat = beta * s["V"] + (1 - beta) * G
            new["V"] = V_hat
        else:
            a, b = axes
            R = beta * s["R"] + (1 - beta) * G.sum(axis=b)
            C = beta * s["C"] + (1 - beta) * G.sum(axis=a)
            new["R"], new["C"] = R, C
            a_in_R = a if a < b else a - 1  # axis a of g, after deleting axis b
            R_total = R.sum(axis=a_in_R, keepdims=True)
            V_hat = np.expand_dims(R / R_total, b) * np.expand_dims(C, a)
        U = g / np.sqrt(V_hat)
        if self.d is not None:
            U = U / max(1.0, _rms(U) / self.d)
        if self.param_scale:
            U = U * max(self.eps2, _rms(p))
        if self.b1 is not None:
            U = self.b1 * s["m"] + (1 - self.b1) * U
            new["m"] = U
        return -_lr(self.lr, t) * (U + self.wd * p), new


# ================================================================================================
# Stages
# ================================================================================================


class Clip:
    """Element-wise clipping to ``[-δ, δ]``."""

    def __init__(self, max_delta):
        self.d = max_delta

    def init(self, p):
        return {}

    def step(self, g, s, p, t):
        return np.minimum(np.maximum(g, -self.d), self.d), s


class ClipByBlockRms:
    """Adafactor's update clipping per array: ``g / max(1, RMS(g)/d)``."""

    def __init__(self, threshold):
        self.d = threshold

    def init(self, p):
        return {}

    def step(self, g, s, p, t):
        return g / max(1.0, _rms(g) / self.d), s


class AdaptiveGradClip:
    """Brock et al. 2021, eq. 3: per unit i, if ‖G_i‖/‖W_i‖⋆ > λ then ``G_i ← λ‖W_i‖⋆/‖G_i‖ G_i``,
    ``‖W‖⋆ = max(‖W‖, ε)``.

    Units by rank, as ``optax.adaptive_grad_clip`` defines them (gradtx's default): arrays with
    at most one axis longer than 1 are one unit; a 2-d or 3-d array's unit is a slice along
    axis 0 (its norm over axis 0: one per output of an ``(in, out)`` kernel); a 4-d or 5-d
    array's unit is one entry of the last axis (its norm over all the others). Written as a
    loop over units, independently of gradtx's reductions.
    """

    def __init__(self, clipping, eps=1e-3):
        self.lam, self.eps = clipping, eps

    def init(self, p):
        return {}

    def step(self, g, s, p, t):
        if sum(d > 1 for d in g.shape) <= 1:
            axes: tuple[int, ...] = tuple(range(g.ndim))
        elif g.ndim in (2, 3):
            axes = (0,)
        else:
            axes = tuple(range(g.ndim - 1))
        kept = [a for a in range(g.ndim) if a not in axes]
        order = list(axes) + kept  # reduced axes first: a unit is one column
        n_units = int(np.prod([g.shape[a] for a in kept], dtype=np.int64))
        flat_g = np.transpose(g, order).reshape(-1, n_units)
        flat_w = np.transpose(p, order).reshape(-1, n_units)
        out = flat_g.copy()
        for i in range(n_units):
            w_norm, g_norm = max(_norm(flat_w[:, i]), self.eps), _norm(flat_g[:, i])
            if g_norm > self.lam * w_norm:
                out[:, i] = self.lam * w_norm / max(g_norm, 1e-6) * flat_g[:, i]
        shaped = out.reshape([g.shape[a] for a in order])
        return np.transpose(shaped, np.argsort(order)), s


class AddDecayedWeights:
    """``g + λθ`` where the mask is on."""

    def __init__(self, weight_decay=0.0, mask=True):
        self.wd = weight_decay if mask else 0.0

    def init(self, p):
        return {}

    def step(self, g, s, p, t):
        return g + self.wd * p, s


class ScaleByTrustRatio:
    """The layer-wise trust ratio of LARS/LAMB, gradtx's documented form (see _trust_ratio)."""

    def __init__(self, min_norm=0.0, trust_coefficient=1.0, eps=0.0, mask=True):
        self.n0, self.c, self.eps, self.mask = min_norm, trust_coefficient, eps, mask

    def init(self, p):
        return {}

    def step(self, g, s, p, t):
        if not self.mask:
            return g, s
        return _trust_ratio(p, g, self.c, self.eps, self.n0) * g, s


# ================================================================================================
# Tree oracles and the driver
# ================================================================================================


class PerLeaf:
    """A tree oracle applying a per-array oracle to every leaf; ``make(i)`` builds leaf i's."""

    def __init__(self, make: Callable[[int], Any]):
        self.make = make
        self.leaves: list[Any] = []

    def init(self, ps: Sequence[Array]) -> list:
        self.leaves = [self.make(i) for i in range(len(ps))]
        return [o.init(p) for o, p in zip(self.leaves, ps)]

    def step(self, gs, states, ps, t):
        out = [o.step(g, s, p, t) for o, g, s, p in zip(self.leaves, gs, states, ps)]
        return [u for u, _ in out], [s for _, s in out]


class ClipByGlobalNorm:
    """Pascanu et al. 2013: ``g ← g · min(1, c/‖g‖)`` with the norm over the whole tree."""

    def __init__(self, max_norm: float):
        self.c = max_norm

    def init(self, ps):
        return None

    def step(self, gs, state, ps, t):
        norm = np.sqrt(sum(np.sum(np.square(g)) for g in gs))
        factor = min(1.0, self.c / norm) if norm > 0 else 1.0
        return [g * factor for g in gs], state


class Chain:
    """Tree oracles applied in order, each to the previous one's output."""

    def __init__(self, *oracles):
        self.oracles = oracles

    def init(self, ps):
        return [o.init(ps) for o in self.oracles]

    def step(self, gs, states, ps, t):
        new = []
        for o, s in zip(self.oracles, states):
            gs, s = o.step(gs, s, ps, t)
            new.append(s)
        return gs, new


#: gradtx function name -> per-array oracle (same keyword arguments, same defaults).
ORACLES: dict[str, Callable[..., Any]] = {
    "sgd": SGD,
    "sign_sgd": SignSGD,
    "adagrad": Adagrad,
    "rmsprop": RMSProp,
    "adadelta": Adadelta,
    "adam": Adam,
    "adamw": AdamW,
    "nadam": NAdam,
    "nadamw": NAdamW,
    "adamax": Adamax,
    "amsgrad": AMSGrad,
    "adabelief": AdaBelief,
    "yogi": Yogi,
    "radam": RAdam,
    "lion": Lion,
    "lamb": LAMB,
    "lars": LARS,
    "adafactor": Adafactor,
    "clip": Clip,
    "clip_by_block_rms": ClipByBlockRms,
    "adaptive_grad_clip": AdaptiveGradClip,
    "add_decayed_weights": AddDecayedWeights,
    "scale_by_trust_ratio": ScaleByTrustRatio,
}

_MASKS = ("mask", "weight_decay_mask", "trust_ratio_mask")


def as_float32_value(v: Any) -> Any:
    """A Python float hyperparameter as gradtx holds it in float32 computations.

    gradtx computes in float32 and casts its hyperparameters to it, so β2 = 0.99 is really
    0.99000000953...; the oracles take that value (exactly, in float64) so that their
    comparison resolves the algorithm rather than the rounding of the inputs. Others pass.
    """
    if isinstance(v, float):
        return float(np.float32(v))
    return v


def _leaf_masks(mask: Any, params: Any, n: int) -> list[bool]:
    if mask is None:
        return [True] * n
    tree = mask(params) if callable(mask) else mask
    flags = [bool(m) for m in jax.tree_util.tree_leaves(tree)]
    assert len(flags) == n, "mask does not match the params"
    return flags


def build(name: str, kwargs: dict[str, Any], params: Any) -> PerLeaf:
    """The tree oracle of ``gradtx.<name>(**kwargs)`` for a pytree like ``params``.

    Mask arguments (a pytree of bools or a function of the params) become one bool per leaf;
    float hyperparameters are taken at their float32 value (see :func:`as_float32_value`).
    """
    n = len(jax.tree_util.tree_leaves(params))
    per_leaf_masks = {k: _leaf_masks(kwargs[k], params, n) for k in _MASKS if k in kwargs}
    plain = {k: as_float32_value(v) for k, v in kwargs.items() if k not in _MASKS}
    cls = ORACLES[name]
    return PerLeaf(lambda i: cls(**plain, **{k: m[i] for k, m in per_leaf_masks.items()}))


def run(oracle: Any, params: Any, grads: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Runs a tree oracle from ``params`` over the gradient pytrees ``grads``, in float64.

    Returns:
      ``(updates, params)``: lists with one pytree (of float64 arrays) per step; ``params[k]``
      is the parameters after update ``k`` (``θ_k = θ_{k-1} + u_k``).
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    ps = [np.asarray(p, np.float64) for p in leaves]
    state = oracle.init(ps)
    all_updates, all_params = [], []
    for t, g in enumerate(grads, start=1):
        gs = [np.asarray(x, np.float64) for x in treedef.flatten_up_to(g)]
        us, state = oracle.step(gs, state, ps, t)
        ps = [p + u for p, u in zip(ps, us)]
        all_updates.append(treedef.unflatten(us))
        all_params.append(treedef.unflatten(ps))
    return all_updates, all_params
