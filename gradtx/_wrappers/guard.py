"""Step-skipping guards: ``skip_nonfinite`` and ``skip_spikes`` (read them with ``skip_counts``).

A guard decides per step whether ``inner`` sees the step. A skipped step gives zero updates
(in the dtypes ``inner`` would return) and leaves ``inner``'s state as it was, so its counts,
moments and schedules do not advance. Every guard counts ``skipped`` (total), ``consecutive``
(the current run of failed steps: a step that passes resets it to 0) and ``steps`` (applied
steps); the counts saturate at the int32 maximum.

The test and the skip are :mod:`gradtx._wrappers.finite`'s: finiteness read from the global
norm (the same value as ``all(isfinite(g))``, shared with a global-norm clip of the same
updates), and ``inner.update`` under a ``lax.cond``, only on the applied steps; or, with
``skip_nonfinite(..., in_place=True)`` and an ``inner`` made of gradtx stages, on every step
with each slot kept where its stage computes it, so that a donated state is updated in place.

``skip_nonfinite``, per step, with ``m = max_consecutive_skips`` (``None``: never give up)::

    finite = all(isfinite(g)) and all(isfinite(loss))      (loss: only if given to update)
    consecutive = 0 if finite else consecutive + 1
    give_up = not finite and m is not None and consecutive > m
    gave_up = gave_up or give_up                            (sticky)
    if finite or give_up:  u, inner_state = inner.update(g, inner_state); steps += 1
    else:                  u = 0; skipped += 1

``skip_spikes``, per step, with ``x`` the metric (``global_norm(g)`` or ``loss``), ``W`` the
state entry ``window`` (a ring buffer of size ``window``), ``count`` the values accepted in
all and ``n = min(count, window)``; ``W[:n]`` holds the last ``n`` accepted values::

    μ = mean(W[:n]),  σ = sqrt(mean((W[:n] − μ)²))          (population std; 0 when n = 0)
    spike = count >= warmup and x > μ + k·σ
    accept = isfinite(x) and all(isfinite(g)) and not spike
    if accept:  W[count mod window] = x; count += 1; consecutive = 0; apply inner, steps += 1
    else:       consecutive += 1; skipped += 1; u = 0        (x does not enter W)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.stage import increment, scalar_like
from .._core.state import State
from .._core.struct import hyper, is_schedule_like, static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError
from .._stages.clipping import global_norm
from .common import as_inner, check_args
from .counts import ENTRIES
from .finite import all_finite, apply_or_skip, finite_check

__all__ = [
    "SkipNonfinite",
    "SkipSpikes",
    "skip_nonfinite",
    "skip_spikes",
    "all_finite",
    "apply_or_skip",
    "stat_dtype",
]


def _counts(params: Any) -> dict[str, jax.Array]:
    return {n: scalar_like(params, 0, jnp.int32) for n in ("skipped", "consecutive", "steps")}


def _step(state: Any, apply: jax.Array) -> dict[str, jax.Array]:
    c, s, n = state["skipped"], state["consecutive"], state["steps"]
    return {
        "skipped": jnp.where(apply, c, increment(c)),
        "consecutive": jnp.where(apply, jnp.zeros_like(s), increment(s)),
        "steps": jnp.where(apply, increment(n), n),
    }


class _Guard(GradientTransformation):
    """What the guards share: ``inner`` (gradtx's or optax's) and its view in the state."""

    inner: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_inner(self.name, self.inner))
        super().__post_init__()

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, state["inner_state"])]


class SkipNonfinite(_Guard):
    """``inner``, except on steps whose updates (or ``loss``) are not all finite; see
    :func:`skip_nonfinite`."""

    max_consecutive_skips: int | None = static(None)
    in_place: bool = static(False)

    def __post_init__(self) -> None:
        n = self.max_consecutive_skips
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(
                f"gradtx.{self.name}: max_consecutive_skips must be None or an int >= 0, got {n!r}"
            )
        super().__post_init__()

    def init(self, params: Any) -> State:
        return State(
            **_counts(params),
            gave_up=scalar_like(params, False, jnp.bool_),
            inner_state=self.inner.init(params),
        )

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, ENTRIES["skip_nonfinite"], updates, params)
        finite = finite_check(updates)
        if extra.get("loss") is not None:
            finite = finite & all_finite(extra["loss"])
        streak = jnp.where(finite, 0, increment(state["consecutive"])).astype(jnp.int32)
        give_up = jnp.array(False)
        if self.max_consecutive_skips is not None:
            give_up = ~finite & (streak > self.max_consecutive_skips)
        apply = finite | give_up
        out, inner_state = apply_or_skip(
            self.inner, apply, updates, state["inner_state"], params, extra, self.in_place
        )
        counts = _step(state, apply)
        counts["consecutive"] = streak  # a give-up step is applied but continues the run
        return out, State(**counts, gave_up=state["gave_up"] | give_up, inner_state=inner_state)


class SkipSpikes(_Guard):
    """``inner``, except on steps whose metric is a spike over a rolling window; see
    :func:`skip_spikes`."""

    window: int = static(100)
    k: float = hyper(6.0, "nonnegative")
    warmup: int = static(10)
    metric: str = static("grad_norm")

    def __post_init__(self) -> None:
        for what, n, low in (("window", self.window, 2), ("warmup", self.warmup, 1)):
            if isinstance(n, bool) or not isinstance(n, int) or n < low:
                raise ValueError(f"gradtx.{self.name}: {what} must be an int >= {low}, got {n!r}")
        if self.metric not in ("grad_norm", "loss"):
            raise ValueError(
                f"gradtx.{self.name}: metric must be 'grad_norm' or 'loss', got {self.metric!r}"
            )
        if is_schedule_like(self.k):
            raise TypeError(f"gradtx.{self.name}: k must be a number, not a schedule")
        super().__post_init__()

    @property
    def requires(self) -> tuple[str, ...]:
        """The ``update`` keyword arguments this guard needs: ``("loss",)`` for that metric."""
        return ("loss",) if self.metric == "loss" else ()

    def init(self, params: Any) -> State:
        dtype = stat_dtype(params)
        anchor = scalar_like(params, 0, dtype)
        values = jnp.zeros((self.window,), dtype)
        sharding = None if isinstance(anchor, jax.core.Tracer) else anchor.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):
            values = jax.device_put(values, sharding)
        return State(
            window=values,
            count=scalar_like(params, 0, jnp.int32),
            **_counts(params),
            inner_state=self.inner.init(params),
        )

    def _metric(self, updates: Any, extra: dict, dtype: Any) -> tuple[jax.Array, jax.Array]:
        if self.metric == "grad_norm":
            x = global_norm(updates).astype(dtype)
            return x, jnp.isfinite(x)
        loss = extra.get("loss")
        if loss is None:
            raise TransformError(
                f"gradtx.{self.name}: metric='loss' needs the loss value: call "
                "update(updates, state, params, loss=value)"
            )
        if jnp.ndim(loss) != 0:
            raise TransformError(
                f"gradtx.{self.name}: loss must be a scalar, got shape {jnp.shape(loss)}"
            )
        x = jnp.asarray(loss).astype(dtype)
        return x, jnp.isfinite(x) & all_finite(updates)

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, ENTRIES["skip_spikes"], updates, params)
        values, count = state["window"], state["count"]
        x, ok = self._metric(updates, extra, values.dtype)
        n = jnp.minimum(count, self.window)
        held = jnp.arange(self.window, dtype=jnp.int32) < n
        size = jnp.maximum(n, 1).astype(values.dtype)
        mean = jnp.sum(jnp.where(held, values, 0)) / size
        var = jnp.sum(jnp.where(held, jnp.square(values - mean), 0)) / size
        limit = mean + jnp.asarray(self.k).astype(values.dtype) * jnp.sqrt(var)
        spike = (count >= self.warmup) & (x > limit)
        accept = ok & ~spike
        pos = count % self.window
        values = values.at[pos].set(jnp.where(accept, x, values[pos]))
        out, inner_state = apply_or_skip(
            self.inner, accept, updates, state["inner_state"], params, extra
        )
        return out, State(
            window=values,
            count=jnp.where(accept, increment(count), count),
            **_step(state, accept),
            inner_state=inner_state,
        )


def stat_dtype(params: Any) -> Any:
    """float32, or float64 for float64 params: the dtype of a statistic of ``params``."""
    dtypes = [
        compute_dtype(p.dtype)
        for p in jax.tree_util.tree_leaves(params)
        if hasattr(p, "dtype") and jnp.issubdtype(p.dtype, jnp.floating)
    ]
    return max(dtypes, key=lambda d: jnp.dtype(d).itemsize, default=jnp.dtype(jnp.float32))


def skip_nonfinite(
    inner: Any, max_consecutive_skips: int | None = None, *, in_place: bool = False
) -> SkipNonfinite:
    """Skips the steps whose updates, or ``loss`` when given, hold a NaN or an infinity.

    gradtx's form of :func:`gradtx.apply_if_finite`, with separate counters. The rule is in
    :mod:`gradtx._wrappers.guard`: a skipped step gives zero updates and keeps ``inner``'s
    state; after ``max_consecutive_skips`` skipped steps in a row the next non-finite step is
    applied and ``gave_up`` is set. Inside ``jit`` a guard cannot raise, so it gives up loudly
    instead: the non-finite update reaches the params, and the host can stop on ``gave_up``.

    Note:
      Giving up is optax's released rule (``apply_if_finite`` applies every step of the run
      after the limit). optax keeps one counter, ``notfinite_count``, for both the run and the
      give-up test; optax PR #1746 proposes resetting it on the give-up step, after which the
      same run of failures is skipped again and nothing records that the guard gave up. Here
      ``consecutive`` is always the current run (only a finite step resets it to 0, which also
      re-arms the guard) and ``gave_up`` stays ``True`` once set.

    Args:
      inner: a gradtx or optax transformation.
      max_consecutive_skips: how many non-finite steps in a row are skipped before giving up;
        ``None`` (the default): always skip.
      in_place: run a gradtx ``inner`` on every step and keep its state where each stage
        computes it, instead of a ``lax.cond``: with donated state about the speed of the
        unguarded step; skipped steps still leave the state exactly unchanged, applied steps
        may differ from the ``lax.cond`` form by fused multiply-add rounding (see
        :mod:`gradtx._wrappers.finite`).

    Returns:
      A :class:`SkipNonfinite`; its state is ``State(skipped, consecutive, steps, gave_up,
      inner_state)``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> from gradtx._wrappers.guard import skip_nonfinite
      >>> tx = skip_nonfinite(gradtx.sgd(1.0), max_consecutive_skips=1)
      >>> s = tx.init({"w": jnp.ones(2)})
      >>> u, s = tx.update({"w": jnp.array([1.0, jnp.nan])}, s)
      >>> u["w"].tolist(), int(s.skipped), int(s.consecutive), int(s.steps), bool(s.gave_up)
      ([0.0, 0.0], 1, 1, 0, False)
      >>> u, s = tx.update({"w": jnp.array([1.0, 2.0])}, s, loss=jnp.float32(jnp.inf))
      >>> u["w"].tolist(), int(s.skipped), int(s.consecutive), int(s.steps), bool(s.gave_up)
      ([-1.0, -2.0], 1, 2, 1, True)

    References:
      optax ``apply_if_finite``; https://github.com/google-deepmind/optax/pull/1746
    """
    return SkipNonfinite(inner, max_consecutive_skips, in_place)


def skip_spikes(
    inner: Any, *, window: int = 100, k: float = 6.0, warmup: int = 10, metric: str = "grad_norm"
) -> SkipSpikes:
    r"""Skips the steps whose metric exceeds :math:`\mu + k\sigma` of the last accepted values.

    The metric is the global gradient norm :math:`\|g_t\|_2` of the updates
    (``metric="grad_norm"``) or the ``loss`` keyword argument of ``update`` (``"loss"``;
    missing, it is an error). With :math:`\mu, \sigma` the mean and population standard
    deviation of the last ``window`` accepted values, a step is skipped when it comes after
    ``warmup`` accepted values and :math:`x_t > \mu + k\sigma`, or when :math:`x_t` (or, for the
    loss, an update) is not finite. A skipped value does not enter the window. The exact rule
    is in :mod:`gradtx._wrappers.guard`; the window is a ring buffer in the state (float32;
    float64 for float64 params).

    Warning:
      A lasting change of level (the loss rising for good) is skipped for as long as it lasts:
      skipped values never enter the window. Watch ``consecutive`` (``skip_counts``).

    Args:
      inner: a gradtx or optax transformation.
      window: how many accepted values the statistics use (>= 2).
      k: how many standard deviations above the mean a spike starts.
      warmup: accepted values before any step can be a spike (>= 1).
      metric: ``"grad_norm"`` or ``"loss"``.

    Returns:
      A :class:`SkipSpikes`; its state is ``State(window, count, skipped, consecutive, steps,
      inner_state)``, ``window`` the ring buffer.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> from gradtx._wrappers.guard import skip_spikes
      >>> tx = skip_spikes(gradtx.sgd(1.0), window=4, k=3.0, warmup=3, metric="loss")
      >>> s = tx.init({"w": jnp.zeros(1)})
      >>> for loss in [1.0, 1.1, 0.9, 50.0]:
      ...     u, s = tx.update({"w": jnp.ones(1)}, s, loss=jnp.float32(loss))
      >>> u["w"].tolist(), int(s.skipped), int(s.steps)
      ([0.0], 1, 3)

    References:
      The rolling z-score guard of large-scale training practice (e.g. skipping batches
      whose loss spikes, OPT-175B logbook; Chowdhery et al. 2022, PaLM, §5.1).
    """
    return SkipSpikes(inner, window=window, k=k, warmup=warmup, metric=metric)
