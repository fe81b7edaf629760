"""The zoom line search (strong Wolfe conditions), as ``optax.scale_by_zoom_linesearch``.

One iteration makes one evaluation of ``value_fn`` and its gradient, at a trial step size
chosen by the phase the search is in (Nocedal & Wright, Algorithms 3.5 and 3.6). With
``φ(η) = f(w + η u)``, ``φ₀ = φ(0)``, ``s₀ = φ'(0)`` and at a trial ``η``::

    decrease error  d = max(0, φ(η) − φ₀ − c₁·η·s₀)
                    (with c₃ = approx_dec_rtol: d = min(d, max(φ'(η) − (2c₁ − 1)·s₀,
                     φ(η) − φ₀ − c₃·|φ₀|)), Hager and Zhang's approximate condition)
    curvature error c = max(0, |φ'(η)| − c₂·|s₀|);  NaN errors count as +inf
    accepted when max(d, c) <= tol

1. Bracketing: η = guess, then η ← increase_factor·η (capped at ``max_learning_rate``) until
   an interval [low, high] holding an acceptable step is found: φ(η) fails the decrease or is
   no lower than the previous trial (high = η), or φ'(η) >= 0 (low = η, high = previous).
2. Zoom: the trial is the minimum of the cubic through (low, high, the previous endpoint) if
   it lies in the middle 60% of the interval, else of the quadratic through low and high if in
   the middle 80%, else the midpoint; the interval then shrinks to keep an acceptable step.

The search stops when a trial is accepted, when ``max_linesearch_steps`` evaluations are
made, or when the interval is shorter than ``stepsize_precision`` with a trial of sufficient
decrease found. It then takes, if no trial was accepted, the lowest trial with sufficient
decrease (the "safe" step), else the last trial, or no step if the last value was not finite.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._core.state import State
from .._core.struct import hyper, static
from .linesearch import (
    Linesearch,
    along,
    count_arg,
    report_failure,
    slope,
    start_state,
    tmap,
    value_and_grad,
    where,
    zeros,
)

__all__ = ["ScaleByZoomLinesearch", "scale_by_zoom_linesearch"]

_STRATEGIES = ("one", "keep")


class _Search(NamedTuple):
    """The carry of the search's loop: the last trial, the interval and the safe step."""

    evals: jax.Array
    stepsize: jax.Array
    value: jax.Array
    grad: Any
    slope: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array
    interval_found: jax.Array
    done: jax.Array
    failed: jax.Array
    low: jax.Array
    value_low: jax.Array
    slope_low: jax.Array
    high: jax.Array
    value_high: jax.Array
    slope_high: jax.Array
    cubic_ref: jax.Array
    value_cubic_ref: jax.Array
    safe_stepsize: jax.Array
    safe_value: jax.Array
    safe_grad: Any


def _cubic_min(a, fa, fpa, b, fb, c, fc):
    """The critical point of the cubic through (a, fa), (b, fb), (c, fc) with slope fpa at a
    (NaN when it has none, which the caller's range test rejects)."""
    db, dc = b - a, c - a
    r = jnp.stack([fb - fa - fpa * db, fc - fa - fpa * dc])
    m = jnp.stack([jnp.stack([dc**2, -(db**2)]), jnp.stack([-(dc**3), db**3])])
    # The coefficients of (x − a)³ and (x − a)², as a 2×2 product at full precision: near a
    # quadratic the cubic coefficient is a difference of nearly equal terms, and the minimum
    # depends on how it rounds; this is the rounding of optax's (and scipy's) interpolation.
    ca, cb = jnp.dot(m, r, precision=jax.lax.Precision.HIGHEST) / ((db * dc) ** 2 * (db - dc))
    return a + (-cb + jnp.sqrt(cb * cb - 3.0 * ca * fpa)) / (3.0 * ca)


def _quad_min(a, fa, fpa, b, fb):
    """The critical point of the quadratic through (a, fa), (b, fb) with slope fpa at a."""
    db = b - a
    curv = (fb - fa - fpa * db) / (db**2)
    return a - fpa / (2.0 * curv)


class ScaleByZoomLinesearch(Linesearch):
    """What :func:`scale_by_zoom_linesearch` returns; see it and :mod:`gradtx._stages.zoom`
    for the rule."""

    name = "scale_by_zoom_linesearch"
    max_linesearch_steps: int = static()
    max_learning_rate: float | None = hyper(None, "positive")
    tol: float = hyper(0.0, "nonnegative")
    increase_factor: float = hyper(2.0, "positive")
    slope_rtol: float = hyper(1e-4, "nonnegative")
    curv_rtol: float = hyper(0.9, "nonnegative_or_inf")
    approx_dec_rtol: float | None = hyper(1e-6, "nonnegative")
    stepsize_precision: float = hyper(1e-5, "nonnegative")
    initial_guess_strategy: str = static("keep")
    verbose: bool = static(False)

    def __post_init__(self) -> None:
        n = count_arg(self.name, "max_linesearch_steps", self.max_linesearch_steps, 1)
        object.__setattr__(self, "max_linesearch_steps", n)
        if self.initial_guess_strategy not in _STRATEGIES:
            raise ValueError(
                f"gradtx.{self.name}: initial_guess_strategy must be 'one' or 'keep', got "
                f"{self.initial_guess_strategy!r}"
            )
        super().__post_init__()

    def init(self, params: Any) -> State:
        grad = tmap(zeros, params)
        return start_state(self.name, params, grad, ("decrease_error", "curvature_error"))

    def search(
        self, f: Any, updates: Any, state: State, params: Any, at: tuple
    ) -> tuple[Any, State]:
        """The search (the rule in the module docstring)."""
        value0, grad0, slope0, dt = at
        c = lambda x: jnp.asarray(x, dt)  # noqa: E731
        if self.initial_guess_strategy == "one":
            guess = c(1.0)
        else:
            guess = state["learning_rate"]
        inf, zero, false = c(jnp.inf), c(0.0), jnp.asarray(False)
        first = _Search(
            jnp.zeros((), jnp.int32), zero, value0, grad0, slope0, inf, inf, false, false,
            false, zero, value0, slope0, zero, value0, slope0, zero, value0, zero, value0, grad0,
        )  # fmt: skip

        def body(s: _Search) -> _Search:
            trial, reached = self._grow(s, guess, c)
            middle, too_small = self._middle(s, c)
            eta = jnp.where(s.interval_found, middle, trial)
            v, g = value_and_grad(f, along(params, eta, updates)[1], dt)
            d = slope(g, updates, dt)
            dec, curv = self._errors(eta, v, d, value0, slope0, c)
            grown = self._after_grow(s, eta, reached, v, g, d, dec, curv, c)
            zoomed = self._after_zoom(s, eta, too_small, v, g, d, dec, curv, c)
            new = _Search(*where(s.interval_found, zoomed, grown))
            return _Search(*where(new.failed, _fallback(new), new))

        end = jax.lax.while_loop(lambda s: ~(s.done | s.failed), body, first)
        if self.verbose:
            report_failure(
                self.name,
                end.failed,
                value=value0,
                slope=slope0,
                stepsize=end.stepsize,
                decrease_error=end.decrease_error,
                curvature_error=end.curvature_error,
            )
        info = State(
            num_linesearch_steps=end.evals,
            decrease_error=end.decrease_error,
            curvature_error=end.curvature_error,
        )
        step = along(params, end.stepsize, updates)[0]
        return step, State(learning_rate=end.stepsize, value=end.value, grad=end.grad, info=info)

    # --- one iteration ---------------------------------------------------------------------
    def _errors(self, eta, v, slope, v0, s0, c):
        """The decrease and curvature errors at a trial (see the module docstring)."""
        c1 = c(self.slope_rtol)
        dec = v - v0 - c1 * eta * s0
        if self.approx_dec_rtol is not None:
            approx = slope - (2 * c1 - 1.0) * s0
            approx = jnp.maximum(approx, v - v0 - c(self.approx_dec_rtol) * jnp.abs(v0))
            dec = jnp.minimum(approx, dec)
        curv = jnp.abs(slope) - c(self.curv_rtol) * jnp.abs(s0)
        fix = lambda e: jnp.where(jnp.isnan(e), c(jnp.inf), jnp.maximum(e, 0.0))  # noqa: E731
        return fix(dec), fix(curv)

    def _grow(self, s: _Search, guess: jax.Array, c: Any) -> tuple[jax.Array, jax.Array]:
        """The bracketing phase's trial: the guess, then the previous trial times the factor."""
        trial = jnp.where(s.evals == 0, guess, c(self.increase_factor) * s.stepsize)
        if self.max_learning_rate is None:
            return trial, jnp.asarray(False)
        cap = c(self.max_learning_rate)
        return jnp.minimum(trial, cap), trial >= cap

    def _middle(self, s: _Search, c: Any) -> tuple[jax.Array, jax.Array]:
        """The zoom phase's trial inside [low, high], and whether the interval is too short."""
        lo, hi = s.low, s.high
        delta = jnp.abs(hi - lo)
        left, right = jnp.minimum(hi, lo), jnp.maximum(hi, lo)
        cubic = _cubic_min(lo, s.value_low, s.slope_low, hi, s.value_high, s.cubic_ref,
                           s.value_cubic_ref)  # fmt: skip
        use_cubic = (cubic > left + 0.2 * delta) & (cubic < right - 0.2 * delta)
        quad = _quad_min(lo, s.value_low, s.slope_low, hi, s.value_high)
        use_quad = ~use_cubic & (quad > left + 0.1 * delta) & (quad < right - 0.1 * delta)
        middle = jnp.where(use_cubic, cubic, jnp.where(use_quad, quad, (lo + hi) / 2.0))
        return middle, delta <= c(self.stepsize_precision)

    def _after_grow(self, s, eta, reached, v, g, slope, dec, curv, c):
        """Algorithm 3.5: the state after a bracketing trial."""
        tol = c(self.tol)
        ok = jnp.maximum(dec, curv) <= tol
        safe = dec <= tol
        safe_step, safe_value, safe_grad = where(
            safe, (eta, v, g), (s.safe_stepsize, s.safe_value, s.safe_grad)
        )
        high_is_new = (dec > 0.0) | ((v >= s.value) & (s.evals > 0))
        low_is_new = (slope >= 0.0) & ~high_is_new
        prev, new = (s.stepsize, s.value, s.slope), (eta, v, slope)
        lo, v_lo, s_lo = where(low_is_new, new, prev)
        hi, v_hi, s_hi = where(low_is_new, prev, new)
        found = high_is_new | low_is_new | ok
        done = ok | (reached & ~found)
        failed = (s.evals + 1 >= self.max_linesearch_steps) & ~done
        return _Search(
            s.evals + 1, eta, v, g, slope, dec, curv, found, done, failed,
            lo, v_lo, s_lo, hi, v_hi, s_hi, lo, v_lo, safe_step, safe_value, safe_grad,
        )  # fmt: skip

    def _after_zoom(self, s, eta, too_small, v, g, slope, dec, curv, c):
        """Algorithm 3.6: the state after a zoom trial."""
        tol = c(self.tol)
        better = (dec <= tol) & (v < s.safe_value)
        safe_step, safe_value, safe_grad = where(
            better, (eta, v, g), (s.safe_stepsize, s.safe_value, s.safe_grad)
        )
        done = jnp.maximum(dec, curv) <= tol
        high_is_new = (dec > 0.0) | (v >= s.value_low)
        high_is_low = (slope * (s.high - s.low) >= 0.0) & ~high_is_new
        low = (s.low, s.value_low, s.slope_low)
        high = (s.high, s.value_high, s.slope_high)
        new = (eta, v, slope)
        hi, v_hi, s_hi = where(high_is_new, new, where(high_is_low, low, high))
        lo, v_lo, s_lo = where(high_is_new, low, new)
        moved = high_is_new | high_is_low
        ref, v_ref = where(moved, (s.high, s.value_high), (s.low, s.value_low))
        out_of_steps = s.evals + 1 >= self.max_linesearch_steps
        failed = (out_of_steps | (too_small & (safe_step > 0.0))) & ~done
        return _Search(
            s.evals + 1, eta, v, g, slope, dec, curv, s.interval_found, done, failed,
            lo, v_lo, s_lo, hi, v_hi, s_hi, ref, v_ref, safe_step, safe_value, safe_grad,
        )  # fmt: skip


def _fallback(s: _Search) -> _Search:
    """A search that failed: the safe step if there is one (or if the last value was not
    finite, the safe step being then 0: no step), else the last trial."""
    use_safe = (s.safe_stepsize > 0.0) | jnp.isinf(s.decrease_error)
    eta, v, g = where(use_safe, (s.safe_stepsize, s.safe_value, s.safe_grad),
                      (s.stepsize, s.value, s.grad))  # fmt: skip
    return s._replace(stepsize=eta, value=v, grad=g)


def scale_by_zoom_linesearch(
    max_linesearch_steps: int,
    max_learning_rate: float | None = None,
    tol: float = 0.0,
    increase_factor: float = 2.0,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    approx_dec_rtol: float | None = 1e-6,
    stepsize_precision: float = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
) -> ScaleByZoomLinesearch:
    r"""Zoom line search: a step size meeting the strong Wolfe conditions, as
    ``optax.scale_by_zoom_linesearch`` (same arguments, order, defaults and decisions).

    With :math:`f` the objective (``value_fn``), :math:`w` the params, :math:`u` the updates
    (a descent direction) and :math:`\varphi(\eta) = f(w + \eta u)`, it searches for
    :math:`\eta` with sufficient decrease and small curvature,

    .. math::
        \varphi(\eta) \le \varphi(0) + c_1 \eta\, \varphi'(0) + \epsilon, \qquad
        |\varphi'(\eta)| \le c_2 |\varphi'(0)| + \epsilon,

    (:math:`c_1` = ``slope_rtol``, :math:`c_2` = ``curv_rtol``, :math:`\epsilon` = ``tol``),
    the first relaxed near a minimum to Hager and Zhang's approximate decrease
    :math:`\varphi'(\eta) \le (2c_1 - 1)\varphi'(0)` when :math:`\varphi(\eta) \le \varphi(0) +
    c_3|\varphi(0)|` (:math:`c_3` = ``approx_dec_rtol``; ``None`` turns it off). The updates
    are :math:`\eta_t u`. The bracketing and zoom phases, the interpolation and the fallback
    when no step qualifies are in :mod:`gradtx._stages.zoom`. The extra arguments of
    ``update`` are described in :mod:`gradtx._stages.linesearch`: ``value_fn`` is required,
    ``value`` and ``grad`` are computed when left out.

    Args:
      max_linesearch_steps: the most evaluations of ``value_fn`` per update (int >= 1).
      max_learning_rate: the largest step size tried (``None``: no bound).
      tol: :math:`\epsilon`, the tolerance of both conditions.
      increase_factor: the factor growing the step size while bracketing.
      slope_rtol: :math:`c_1`.
      curv_rtol: :math:`c_2` (``inf`` drops the curvature condition: a backtracking search
        with interpolation).
      approx_dec_rtol: :math:`c_3`, or ``None`` for the plain Armijo condition.
      stepsize_precision: once the interval is shorter than this and a step of sufficient
        decrease was found, that step is taken.
      initial_guess_strategy: the first trial: ``"one"`` (1, for quasi-Newton directions) or
        ``"keep"`` (the previous step size, for gradient directions).
      verbose: print the search's numbers when it fails (``jax.debug.print``).

    Returns:
      A :class:`ScaleByZoomLinesearch`; its state is ``State(learning_rate, value, grad,
      info)`` (optax's fields; ``value`` and ``grad`` at the new params, for
      :func:`gradtx.value_and_grad_from_state`; ``info`` holds ``num_linesearch_steps``,
      ``decrease_error`` and ``curvature_error``).

    Warning:
      Before the first update the state's ``value`` and errors hold the largest finite value
      of their dtype, not optax's ``+inf`` (so the state is finite): read the stored value
      with :func:`gradtx.value_and_grad_from_state`, not optax's. One evaluation of
      ``value_fn`` is traced per search (optax traces two, one per phase). Keyword arguments
      not named by ``value_fn`` are ignored (optax raises).

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> f = lambda w: jnp.sum((w - 1.0) ** 2)
      >>> tx = gradtx.chain(gradtx.sgd(1.0), gradtx.scale_by_zoom_linesearch(15))
      >>> w = jnp.zeros(3)
      >>> state = tx.init(w)
      >>> value, grad = jax.value_and_grad(f)(w)
      >>> u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
      >>> float(state.scale_by_zoom_linesearch.learning_rate), u.tolist()
      (0.5, [1.0, 1.0, 1.0])

    References:
      Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithms 3.5 and 3.6, 2006;
      Hager & Zhang, `Algorithm 851: CG_DESCENT <https://doi.org/10.1145/1132973.1132979>`_,
      2006; ``optax.scale_by_zoom_linesearch``.
    """
    return ScaleByZoomLinesearch(
        max_linesearch_steps,
        max_learning_rate,
        tol,
        increase_factor,
        slope_rtol,
        curv_rtol,
        approx_dec_rtol,
        stepsize_precision,
        initial_guess_strategy,
        verbose,
    )
