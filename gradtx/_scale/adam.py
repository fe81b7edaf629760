"""The σ knob, per-parameter scale, from past gradient magnitudes: Adagrad, RMSProp, Adam.

Each knob keeps a statistic of ``|g_t|²`` (or ``|g_t|``) per parameter and returns
``m_t / σ_t``, where ``m_t`` is the direction (the raw gradient when no direction knob is set).
``t = step + 1``.

Numerics shared by every σ knob (and the clipping stages):

- **complex parameters**: ``|g|²`` is ``g·conj(g)`` (real-valued), as in optax. A statistic of a
  complex parameter is stored in the parameter's complex dtype with a zero imaginary part, as
  optax stores it, so states and checkpoints match optax's.
- **float16 parameters**: every second-moment-like slot (``nu``, ``sum_of_squares``,
  ``nu_max``, Adadelta's accumulators, Yogi's ``v``, Adafactor's statistics) is stored in
  float32, since the square of a representable float16 gradient (|g| ≳ 256) overflows float16.
  First moments stay in the parameter's dtype. bfloat16 statistics stay bfloat16 (see the
  warning in :class:`AdamScale` about their upward drift).
- **huge gradients**: squares are formed as ``(√(1-β)·g)²`` and bias corrections are applied
  after the root (``√v / √(1-β^t)``), so nothing squares past float32's range for |g| up to
  ~1e20 at β2 = 0.999 (Adam, AMSGrad, AdaBelief, Yogi, RAdam, Adadelta; RMSProp up to ~5e19 at
  its default decay 0.9).
- **meta-gradients**: roots of statistics are :func:`safe_sqrt`, whose derivative at 0 is 0,
  so differentiating through updates (e.g. w.r.t. the learning rate) stays finite when a
  gradient element is exactly 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from ._base import Context, one_minus_pow
from ._knobs import Scale
from ._struct import hyper, static

__all__ = [
    "AdagradScale",
    "RMSPropScale",
    "AdamScale",
    "AmsgradScale",
    "AdamaxScale",
    "abs_sq",
    "safe_sqrt",
    "moment_dtype",
    "moment_full",
]


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|²`` in ``x``'s dtype: ``x·x`` for real, ``x·conj(x)`` (imaginary part 0) for complex.

    Kept in ``x``'s dtype (not made real) so it combines with the other values of a rule
    computed in that dtype under strict dtype promotion.
    """
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        # Summed in the real dtype: x·conj(x) computed with fused multiply-adds leaves an
        # imaginary residue of ~1e-7·|x|², which a moment would accumulate.
        re, im = jnp.real(x), jnp.imag(x)
        return (re * re + im * im).astype(x.dtype)
    return x * x


def real(x: Any) -> Any:
    """The real part of a scalar hyperparameter or step held in a complex compute dtype (the
    rule of a complex parameter); ``x`` itself otherwise. Bias corrections and schedules of
    ``t`` are computed in real arithmetic (complex ``expm1`` and powers are less accurate)."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jnp.real(x)
    return x


def debias(b: Any, t: Any, like: jax.Array) -> jax.Array:
    """``1 - b^t`` in real arithmetic (:func:`gradtx._base.one_minus_pow`), in ``like``'s dtype."""
    return one_minus_pow(real(b), real(t)).astype(like.dtype)


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """``√x`` whose derivative at ``x = 0`` is 0 instead of ``∞`` (the value is unchanged).

    A statistic that is exactly 0 (a gradient element that is always 0) then contributes 0 to a
    meta-gradient instead of ``∞·0 = NaN``. For complex ``x`` (a real value stored in a complex
    dtype) the test is on the real part.
    """
    return jnp.sqrt(x)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals: Any, tangents: Any) -> tuple[jax.Array, jax.Array]:
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    pos = jnp.real(x) > 0
    # The double where keeps both the tangent and its transpose free of 0·∞.
    denom = jnp.where(pos, 2 * y, jnp.ones_like(y))
    return y, jnp.where(pos, dx / denom, jnp.zeros_like(dx))


def moment_dtype(dtype: Any) -> Any:
    """The dtype a second-moment slot of a ``dtype`` parameter is stored in: float32 for
    float16 (whose range the squares of its gradients overflow), else ``dtype`` itself."""
    return jnp.float32 if jnp.dtype(dtype) == jnp.float16 else dtype


def step_sharding(param: Any, entries: tuple | None) -> NamedSharding | None:
    """The sharding a jitted step returns for a state array derived from ``param``.

    ``entries`` gives the mesh axes of each dimension of the state array (``None`` to use
    ``param``'s own spec). ``None`` unless ``param`` is a concrete array with a
    :class:`~jax.sharding.NamedSharding`. The spec is written as jit writes its outputs' specs:
    one entry per dimension on a mesh with explicit axes, trailing ``None`` entries dropped on
    an auto mesh (``P('x', None)`` comes back as ``P('x')``, a different cache key; a state
    array shaped like a param given as ``P(None)`` as ``P(None)``), so state
    fed back into the step does not make it compile again.
    """
    if isinstance(param, jax.core.Tracer) or not isinstance(param, jax.Array):
        return None
    sharding = getattr(param, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return None
    spec = tuple(sharding.spec)
    # A params-shaped array of a param given as P(None) (or P(None, None)) comes back as
    # P(None) on an auto mesh; other specs lose all their trailing ``None`` entries there.
    keep = 1 if entries is None and spec and all(e is None for e in spec) else 0
    if entries is None:
        entries = spec + (None,) * (param.ndim - len(spec))
    explicit = any(t == AxisType.Explicit for t in getattr(sharding.mesh, "axis_types", ()))
    entries = tuple(entries)
    if not explicit:
        while len(entries) > keep and entries[-1] is None:
            entries = entries[:-1]
    return NamedSharding(sharding.mesh, PartitionSpec(*entries))


def moment_full(param: jax.Array, value: Any = 0.0) -> jax.Array:
    """A second-moment slot for ``param``: ``value`` everywhere, in :func:`moment_dtype`,
    placed as the step returns it (:func:`step_sharding`; else ``full_like``'s placement)."""
    dtype = moment_dtype(param.dtype)
    sharding = step_sharding(param, None)
    if sharding is not None:
        return jnp.full(param.shape, value, dtype, device=sharding)
    return jnp.full_like(param, value, dtype=dtype)


def scaled_sq(c: Any, g: jax.Array) -> jax.Array:
    """``c·|g|²`` formed as ``|√c·g|²``, so it overflows only when the result itself does."""
    return abs_sq(jnp.sqrt(c) * g)


def debiased_root(v: jax.Array, b: Any, t: Any, eps_root: Any = 0.0) -> jax.Array:
    """``√(v / (1-b^t) + eps_root)`` formed as ``√(v + eps_root·(1-b^t)) / √(1-b^t)``: the
    bias correction after the root, so ``v / (1-b^t)`` never overflows."""
    d = debias(b, t, v)
    return safe_sqrt(v + eps_root * d) / jnp.sqrt(d)


class AdagradScale(Scale):
    r"""Adagrad: σ from the sum (or, the lecture's form, the mean) of all past squared gradients.

    .. math::
        s_t = s_{t-1} + |g_t|^2,\; s_0 = a_0, \qquad
        \sigma_t = \sqrt{s_t} + \epsilon \quad\text{or, with } \texttt{average}:\;
        \sigma_t = \sqrt{s_t / t} + \epsilon

    The lecture defines σ as the root *mean* square of past gradients with a constant η; the
    textbook form (default) divides by the root of the *sum*, which equals the lecture's form
    with the schedule ``η/√t``. ``sum_of_squares`` is stored in float32 for float16 params.

    Warning:
      ``eps`` is added outside the root, as in PyTorch (``torch.optim.Adagrad``). optax's
      ``scale_by_rss`` adds it inside (``g / sqrt(s + eps)``); the two agree when ``eps = 0``.

    References:
      Duchi, Hazan & Singer, *Adaptive Subgradient Methods for Online Learning and Stochastic
      Optimization*, JMLR 2011.
    """

    elementwise = True

    slots = ("sum_of_squares",)
    summary = "σ = √(Σ g²) + ε (Adagrad)"
    initial_accumulator_value: float = hyper(0.1, "nonnegative")
    eps: float = hyper(1e-7, "nonnegative")
    average: bool = static(False)

    @property
    def needs_step(self) -> bool:  # type: ignore[override]
        return self.average

    def init_leaf(self, param: jax.Array) -> dict:
        return {"sum_of_squares": moment_full(param, self.initial_accumulator_value)}

    def describe(self) -> str:
        if self.average:
            return f"{self!r}: σ = √(Σ g² / t) + ε (Adagrad, root mean square)"
        return super().describe()

    def step(self, g, m, slots, param, ctx: Context):
        s = slots["sum_of_squares"] + abs_sq(g)
        root = safe_sqrt(s) / jnp.sqrt(ctx.t) if self.average else safe_sqrt(s)
        return m / (root + self.eps), {"sum_of_squares": s}


class RMSPropScale(Scale):
    r"""RMSProp: σ from an exponential moving average of squared gradients, optionally centred.

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) |g_t|^2, \quad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \;\;\text{(centred)}, \quad
        \sigma_t = \sqrt{\hat v_t - |\hat{\bar g}_t|^2} + \epsilon

    (without centring, :math:`\bar g_t = 0`). ``v_0 = initial_scale``. Without
    ``bias_correction`` (the default) :math:`\hat v_t = v_t` and :math:`\hat{\bar g}_t = \bar
    g_t`; with it, as in ``optax.scale_by_rms(bias_correction=True)`` and
    ``optax.scale_by_stddev``, both are divided by :math:`1-\alpha^t` (a step counter is kept),
    so ``RMSPropScale(decay=b2, bias_correction=True)`` is ``AdamScale(b2)`` without a first
    moment. A centred variance is clamped at 0 (at ``t = 1`` with bias correction it is exactly
    0, and rounding must not make its root NaN). ``nu`` is stored in float32 for float16
    params; ``mg`` in the param's dtype.

    Warning:
      ``eps`` is added outside the root as in ``torch.optim.RMSprop``; optax's ``rmsprop`` adds it
      inside (set ``eps_in_sqrt=True`` for that). PyTorch's default decay is 0.99, optax's 0.9.

    References:
      Tieleman & Hinton, *Lecture 6.5 - RMSProp*, COURSERA: Neural Networks for Machine
      Learning, 2012. Graves, *Generating Sequences With Recurrent Neural Networks*, 2013
      (centred).
    """

    elementwise = True

    summary = "σ = √(EMA of g²) + ε (RMSProp)"
    decay: float = hyper(0.9, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    initial_scale: float = hyper(0.0, "nonnegative")
    centered: bool = static(False)
    eps_in_sqrt: bool = static(False)
    bias_correction: bool = static(False)

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("nu", "mg") if self.centered else ("nu",)

    @property
    def needs_step(self) -> bool:  # type: ignore[override]
        return self.bias_correction

    def init_leaf(self, param: jax.Array) -> dict:
        out = {"nu": moment_full(param, self.initial_scale)}
        if self.centered:
            out["mg"] = jnp.zeros_like(param)
        return out

    def step(self, g, m, slots, param, ctx: Context):
        a = self.decay
        nu = a * slots["nu"] + scaled_sq(1 - a, g)
        new = {"nu": nu}
        var = nu
        if self.centered:
            mg = a * slots["mg"] + (1 - a) * g
            new["mg"] = mg
        if self.bias_correction:
            d = debias(a, ctx.t, nu)
            var = nu / d
            if self.centered:
                var = var - abs_sq(mg / d)
        elif self.centered:
            var = nu - abs_sq(mg)
        if self.centered:  # ≥ 0 in exact arithmetic; rounding can make it slightly negative
            var = jnp.maximum(var, 0)
        if self.eps_in_sqrt:
            return m / safe_sqrt(var + self.eps), new
        return m / (safe_sqrt(var) + self.eps), new


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
