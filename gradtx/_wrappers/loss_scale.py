"""Dynamic loss scaling for float16 training: ``dynamic_loss_scale`` and ``loss_scale_value``.

The protocol: multiply the loss by ``loss_scale_value(state)`` (``S``), take the gradients of
the scaled loss, and give them to ``update``. Per step, with ``n`` the good steps since the
scale last changed::

    g = cast(float32(g_scaled) / S)                       (float64 for float64 grads)
    if all(isfinite(g)):
        u, inner_state = inner.update(g, inner_state);  steps += 1
        n = n + 1
        if n == growth_interval:  S = min(S · growth_factor, max_scale);  n = 0
    else:                                                  (an overflow)
        u = 0, inner_state unchanged;  skipped += 1
        S = max(S · backoff_factor, min_scale);  n = 0

the rule of ``torch.amp.GradScaler`` (``update`` after each ``step``) and of jmp's
``DynamicLossScale``, with the scale kept in ``[min_scale, max_scale]``. The state is
``State(loss_scale, good_steps, skipped, steps, inner_state)``; the scale is float32 (float64
for float64 params), the counters int32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.stage import INT32_MAX, increment, scalar_like
from .._core.state import State
from .._core.struct import hyper, is_schedule_like, static
from .._core.transformation import GradientTransformation
from .common import as_inner, check_args
from .counts import ENTRIES, find_guards
from .guard import all_finite, apply_or_skip, stat_dtype

__all__ = ["DynamicLossScale", "dynamic_loss_scale", "loss_scale_value"]

_HYPERS = ("initial_scale", "growth_factor", "backoff_factor", "min_scale", "max_scale")


class DynamicLossScale(GradientTransformation):
    """Unscales the gradients of a scaled loss and adapts the scale; see
    :func:`dynamic_loss_scale`."""

    inner: Any = None
    initial_scale: float = hyper(2.0**15, "positive")
    growth_factor: float = hyper(2.0, "positive")
    backoff_factor: float = hyper(0.5, "positive")
    growth_interval: int = static(2000)
    min_scale: float = hyper(1.0, "positive")
    max_scale: float = hyper(2.0**24, "positive")

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_inner(self.name, self.inner))
        n = self.growth_interval
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= INT32_MAX:
            raise ValueError(
                f"gradtx.{self.name}: growth_interval must be an int in [1, 2**31 - 1], got {n!r}"
            )
        for f in _HYPERS:
            if is_schedule_like(getattr(self, f)):
                raise TypeError(f"gradtx.{self.name}: {f} must be a number, not a schedule")
        super().__post_init__()
        values = [getattr(self, f) for f in _HYPERS]
        if all(isinstance(v, float) for v in values):
            self._check_order(*values)

    def _check_order(self, init: float, grow: float, back: float, lo: float, hi: float) -> None:
        where = f"gradtx.{self.name}"
        if grow < 1:
            raise ValueError(f"{where}: growth_factor must be >= 1, got {grow!r}")
        if back > 1:
            raise ValueError(f"{where}: backoff_factor must be in (0, 1], got {back!r}")
        if hi > float(jnp.finfo(jnp.float32).max):
            raise ValueError(f"{where}: max_scale must be a finite float32, got {hi!r}")
        if not lo <= init <= hi:
            raise ValueError(
                f"{where}: need min_scale <= initial_scale <= max_scale, got min_scale={lo!r}, "
                f"initial_scale={init!r}, max_scale={hi!r}"
            )

    def init(self, params: Any) -> State:
        return State(
            loss_scale=scalar_like(params, self.initial_scale, stat_dtype(params)),
            good_steps=scalar_like(params, 0, jnp.int32),
            skipped=scalar_like(params, 0, jnp.int32),
            steps=scalar_like(params, 0, jnp.int32),
            inner_state=self.inner.init(params),
        )

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, ENTRIES[self.name], updates, params)
        scale = state["loss_scale"]

        def unscale(g: Any) -> Any:
            if g is None or not jnp.issubdtype(g.dtype, jnp.inexact):
                return g
            dtype = compute_dtype(g.dtype)
            return (g.astype(dtype) / scale.astype(dtype)).astype(g.dtype)

        grads = jax.tree_util.tree_map(unscale, updates, is_leaf=lambda x: x is None)
        finite = all_finite(grads)
        out, inner_state = apply_or_skip(
            self.inner, finite, grads, state["inner_state"], params, extra
        )

        def h(value: Any) -> jax.Array:
            return jnp.asarray(value).astype(scale.dtype)

        good = state["good_steps"]
        grow = finite & (good >= self.growth_interval - 1)
        grown = jnp.minimum(scale * h(self.growth_factor), h(self.max_scale))
        backed = jnp.maximum(scale * h(self.backoff_factor), h(self.min_scale))
        new_scale = jnp.where(finite, jnp.where(grow, grown, scale), backed)
        skipped, steps = state["skipped"], state["steps"]
        return out, State(
            loss_scale=new_scale,
            good_steps=jnp.where(finite & ~grow, increment(good), jnp.zeros_like(good)),
            skipped=jnp.where(finite, skipped, increment(skipped)),
            steps=jnp.where(finite, increment(steps), steps),
            inner_state=inner_state,
        )

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, state["inner_state"])]


def dynamic_loss_scale(
    inner: Any,
    *,
    initial_scale: float = 2.0**15,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    growth_interval: int = 2000,
    min_scale: float = 1.0,
    max_scale: float = 2.0**24,
) -> DynamicLossScale:
    r"""Dynamic loss scaling: ``inner`` on the unscaled gradients, the scale adapted to overflows.

    Give ``update`` the gradients of :math:`S_t \cdot L` with :math:`S_t` =
    :func:`loss_scale_value` of the state. The update divides them by :math:`S_t` (in float32)
    and, when all are finite, applies ``inner``; after ``growth_interval`` finite steps in a row
    :math:`S_{t+1} = \min(S_t \cdot \text{growth}, S_{max})`. On an overflow (a non-finite
    gradient) the step is skipped (zero updates, ``inner``'s state kept) and
    :math:`S_{t+1} = \max(S_t \cdot \text{backoff}, S_{min})`. The exact rule is in
    :mod:`gradtx._wrappers.loss_scale`.

    Note:
      The rule of ``torch.amp.GradScaler`` (growth after ``growth_interval`` good steps,
      backoff and a reset of the count on an overflow) and of jmp's ``DynamicLossScale``;
      unlike torch's, the scale is clamped to ``[min_scale, max_scale]`` (torch has neither
      bound and only refuses a growth to ``inf``; jmp has ``min_loss_scale``). The defaults are
      jmp's starting scale, :math:`2^{15}`, and torch's factors and interval. Scale the loss in
      float32 (``loss.astype(jnp.float32) * scale``): a float16 scale overflows above 65504.

    Args:
      inner: a gradtx or optax transformation, given the unscaled gradients.
      initial_scale: :math:`S_0`.
      growth_factor: the factor (>= 1) after ``growth_interval`` good steps.
      backoff_factor: the factor (in (0, 1]) on an overflow.
      growth_interval: good steps in a row before the scale grows.
      min_scale: the smallest scale.
      max_scale: the largest scale.

    Returns:
      A :class:`DynamicLossScale`; its state is ``State(loss_scale, good_steps, skipped, steps,
      inner_state)``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> from gradtx._wrappers.loss_scale import dynamic_loss_scale, loss_scale_value
      >>> tx = dynamic_loss_scale(gradtx.sgd(1.0), initial_scale=4.0, growth_interval=2)
      >>> s = tx.init({"w": jnp.zeros(1, jnp.float16)})
      >>> u, s = tx.update({"w": jnp.array([jnp.inf], jnp.float16)}, s)   # overflow
      >>> u["w"].tolist(), float(loss_scale_value(s)), int(s.skipped)
      ([0.0], 2.0, 1)
      >>> for _ in range(2):
      ...     u, s = tx.update({"w": jnp.array([3.0], jnp.float16) * 2}, s)
      >>> u["w"].tolist(), float(loss_scale_value(s)), int(s.good_steps)
      ([-3.0], 4.0, 0)

    References:
      Micikevicius et al. 2018, Mixed Precision Training, https://arxiv.org/abs/1710.03740;
      ``torch.amp.GradScaler``; jmp, https://github.com/google-deepmind/jmp
    """
    return DynamicLossScale(
        inner,
        initial_scale=initial_scale,
        growth_factor=growth_factor,
        backoff_factor=backoff_factor,
        growth_interval=growth_interval,
        min_scale=min_scale,
        max_scale=max_scale,
    )


def loss_scale_value(state: Any) -> jax.Array:
    """The current loss scale of the ``dynamic_loss_scale`` state nested in ``state``.

    Multiply the loss by it before taking gradients (also under ``jit``).

    Args:
      state: an optimizer state holding one ``dynamic_loss_scale`` state, at any depth.

    Returns:
      The scale, a scalar float32 array (float64 for float64 params).

    Raises:
      ValueError: if ``state`` holds no loss-scale state, or more than one.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> from gradtx._wrappers.loss_scale import dynamic_loss_scale, loss_scale_value
      >>> tx = gradtx.MultiSteps(dynamic_loss_scale(gradtx.adam(1e-3)), every_k_schedule=4)
      >>> float(loss_scale_value(tx.init({"w": jnp.zeros(3)})))
      32768.0
    """
    found = [e for _, kind, e in find_guards(state) if kind == "dynamic_loss_scale"]
    if len(found) != 1:
        raise ValueError(
            f"gradtx.loss_scale_value: state must hold one dynamic_loss_scale state, it holds "
            f"{len(found)}"
        )
    return found[0]["loss_scale"]
