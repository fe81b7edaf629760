"""``reduce_on_plateau``: scale the updates down when a metric stops improving, as optax's.

Rule per call ``update(g, state, value=v)``, with ``n`` the values averaged so far in the
current window, ``a`` their mean, ``b`` the best mean so far, ``p`` the windows without
improvement, ``c`` the cooldown windows left and ``s`` the scale::

    n = n + 1;  a = ((n − 1)·a + v) / n
    if n == accumulation_size:                     (a window closes)
        improved = a < b − rtol·|b| − atol         (b = B at first: any a < B improves)
        b = a if improved else b
        p = 0 if improved else p + 1
        if c > 0:   p = 0;  c = c − 1              (cooldown: no reduction)
        elif p == patience:  s = s·factor;  p = 0;  c = cooldown
        s = max(s, min_scale)                      (outside cooldown)
        n = 0;  a = 0
    u = s·g

with ``B`` the largest finite value of the state's dtype (optax starts from ``b = +inf``; a
finite ``B`` keeps the state finite, and no metric ever reaches it). The state
``State(scale, best_value, plateau_count, cooldown_count, count, avg_value)`` has optax's field
names (``optax.contrib.ReduceLROnPlateauState``); ``scale``, ``best_value`` and ``avg_value``
are kept in the widest floating dtype of the params, at least float32.
"""

from __future__ import annotations

import operator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.stage import increment, scalar_like
from .._core.state import State
from .._core.struct import hyper, is_schedule_like, static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError
from .common import check_args

__all__ = ["ReduceOnPlateau", "reduce_on_plateau"]

_ENTRIES = ("scale", "best_value", "plateau_count", "cooldown_count", "count", "avg_value")


def _state_dtype(params: Any) -> Any:
    """The widest floating dtype among the leaves of ``params``, widened to at least float32."""
    widest = jnp.dtype(jnp.float32)
    for leaf in jax.tree_util.tree_leaves(params):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            widest = compute_dtype(dtype) if jnp.dtype(dtype).itemsize > widest.itemsize else widest
    return widest


def _count(owner: str, what: str, value: Any, least: int) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        n = None
    if isinstance(value, bool) or n is None or n < least:
        raise ValueError(f"gradtx.{owner}: {what} must be an int >= {least}, got {value!r}")
    return n


def threshold(best: jax.Array, rtol: Any, atol: Any) -> jax.Array:
    """``best − rtol·|best| − atol``: a mean below it improves on ``best``. For ``best >= 0``
    it is computed as optax does, ``(1 − rtol)·best − atol``. ``best`` at the largest finite
    value of its dtype (no mean yet) is returned as is, so any smaller mean improves."""
    shrink = jnp.where(best >= 0, 1 - rtol, 1 + rtol)
    return jnp.where(best >= jnp.finfo(best.dtype).max, best, shrink * best - atol)


class ReduceOnPlateau(GradientTransformation):
    """Scales the updates by a factor that drops when the metric ``value`` stops improving;
    see :func:`reduce_on_plateau` and the module docstring for the rule.

    ``factor``, ``rtol``, ``atol`` and ``min_scale`` are numeric hyperparameters (pytree
    leaves: traced under ``jit``, batched under ``vmap``); ``patience``, ``cooldown`` and
    ``accumulation_size`` are static ints.
    """

    name = "reduce_on_plateau"
    requires: ClassVar[tuple[str, ...]] = ("value",)
    factor: float = hyper(0.1, check="positive")
    patience: int = static(10)
    rtol: float = hyper(1e-4, check="unit_closed")
    atol: float = hyper(0.0, check="nonnegative")
    cooldown: int = static(0)
    accumulation_size: int = static(1)
    min_scale: float = hyper(0.0, check="nonnegative")

    def __post_init__(self) -> None:
        for f in ("factor", "rtol", "atol", "min_scale"):
            if is_schedule_like(getattr(self, f)):
                raise TypeError(
                    f"gradtx.{self.name}: {f} must be a number, not a schedule (the scale "
                    "changes with the metric, not with a step count)"
                )
        for f, least in (("patience", 1), ("cooldown", 0), ("accumulation_size", 1)):
            object.__setattr__(self, f, _count(self.name, f, getattr(self, f), least))
        super().__post_init__()
        factor, rtol, atol = self.factor, self.rtol, self.atol
        if isinstance(factor, float) and factor >= 1.0:
            raise ValueError(f"gradtx.{self.name}: factor must be in (0, 1), got {factor!r}")
        if isinstance(rtol, float) and isinstance(atol, float) and rtol == 0.0 and atol == 0.0:
            raise ValueError(f"gradtx.{self.name}: rtol and atol must not both be 0")

    def init(self, params: Any) -> State:
        dtype = _state_dtype(params)
        return State(
            scale=scalar_like(params, 1.0, dtype),
            best_value=scalar_like(params, jnp.finfo(dtype).max, dtype),
            plateau_count=scalar_like(params, 0, jnp.int32),
            cooldown_count=scalar_like(params, 0, jnp.int32),
            count=scalar_like(params, 0, jnp.int32),
            avg_value=scalar_like(params, 0.0, dtype),
        )

    def update(
        self,
        updates: Any,
        state: Any,
        params: Any | None = None,
        *,
        value: Any = None,
        **extra: Any,
    ) -> tuple[Any, State]:
        check_args(self.name, state, _ENTRIES, updates, params)
        if value is None:
            raise TransformError(
                f"gradtx.{self.name}: update needs the metric as the keyword argument value "
                "(e.g. tx.update(grads, state, params, value=loss))"
            )
        v = jnp.asarray(value)
        if v.shape != () or not (
            jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)
        ):
            raise TransformError(
                f"gradtx.{self.name}: value must be a real scalar (the metric), got "
                f"{v.dtype}{list(v.shape)}"
            )
        new = self._step(state, v)
        scale = new["scale"]
        out = jax.tree_util.tree_map(
            lambda g: (
                g.astype(compute_dtype(g.dtype)) * scale.astype(compute_dtype(g.dtype))
            ).astype(g.dtype),
            updates,
        )
        return out, new

    def _step(self, state: State, value: jax.Array) -> State:
        dtype = state["avg_value"].dtype
        cast = lambda x: jnp.asarray(x, dtype)  # noqa: E731
        n = increment(state["count"])
        avg = (state["count"].astype(dtype) * state["avg_value"] + value.astype(dtype)) / (
            n.astype(dtype)
        )
        best, plateau, cool, scale = (
            state["best_value"],
            state["plateau_count"],
            state["cooldown_count"],
            state["scale"],
        )
        improved = avg < threshold(best, cast(self.rtol), cast(self.atol))
        new_best = jnp.where(improved, avg, best)
        waited = jnp.where(improved, jnp.zeros_like(plateau), increment(plateau))
        cooling = cool > 0
        reduce = jnp.logical_and(jnp.logical_not(cooling), waited >= self.patience)
        reduced = jnp.where(reduce, scale * cast(self.factor), scale)
        new_scale = jnp.where(cooling, scale, jnp.maximum(reduced, cast(self.min_scale)))
        new_plateau = jnp.where(jnp.logical_or(cooling, reduce), jnp.zeros_like(waited), waited)
        new_cool = jnp.where(
            cooling, cool - 1, jnp.where(reduce, self.cooldown, 0).astype(jnp.int32)
        )
        close = n >= self.accumulation_size
        pick = lambda closed, kept: jnp.where(close, closed, kept)  # noqa: E731
        return State(
            scale=pick(new_scale, scale),
            best_value=pick(new_best, best),
            plateau_count=pick(new_plateau, plateau),
            cooldown_count=pick(new_cool, cool),
            count=pick(jnp.zeros_like(n), n),
            avg_value=pick(jnp.zeros_like(avg), avg),
        )


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
) -> ReduceOnPlateau:
    r"""Scales the updates down by ``factor`` when a metric stops improving, as
    ``optax.contrib.reduce_on_plateau`` (same arguments, order, defaults and state fields).

    Each ``update`` takes the metric (a loss, lower is better) as ``value=``. The values of
    ``accumulation_size`` calls are averaged into one mean :math:`a`; a mean improves on the
    best one :math:`b` if

    .. math:: a < b - \mathrm{rtol}\,|b| - \mathrm{atol},

    and after ``patience`` means in a row without improvement the scale :math:`s` becomes
    :math:`\max(s \cdot \mathrm{factor}, \mathrm{min\_scale})`, after which ``cooldown`` means
    are ignored. The updates are :math:`u_t = s_t\, g_t` with the scale after this call.
    Chain it after the optimizer: ``gradtx.chain(gradtx.adam(lr), reduce_on_plateau())``.
    The exact rule is in :mod:`gradtx._wrappers.plateau`.

    Warning:
      For a negative best value gradtx departs from optax. optax's test is
      ``a < (1 − rtol)·b − atol``, which for ``b < 0`` lies *above* ``b``: a mean worse than
      the best by up to ``rtol·|b|`` counts as an improvement, so a slowly worsening negative
      metric (a log-likelihood loss, a negated reward) never reduces the scale. gradtx uses
      ``b − rtol·|b| − atol``, equal to optax's for ``b >= 0`` (computed the same way there,
      so positive metrics give identical scales) and correct for either sign. With
      ``rtol=1``, optax's first threshold is ``0·inf = nan`` and nothing ever improves; in
      gradtx the first finite mean always does.

    Note:
      Before the first mean, ``best_value`` is the largest finite value of its dtype (optax:
      ``+inf``), so the state is finite; the first mean below it improves. (With ``rtol=1``
      optax's first threshold is ``0·inf = nan`` and no mean ever improves.)
      ``patience`` must be >= 1 (optax accepts 0, which would reduce at every improvement).
      ``scale``, ``best_value`` and ``avg_value`` are kept in the widest floating dtype of the
      params, at least float32 (optax: the scale in the narrowest, the others in the widest),
      and ``s·g`` is computed in at least float32, then cast to ``g``'s dtype. Values differ
      from optax's only for bfloat16/float16 or mixed-precision params. A missing ``value`` is
      a :class:`gradtx.TransformError` naming this transformation.

    Args:
      factor: the scale is multiplied by it on a plateau, in (0, 1).
      patience: means in a row without improvement before the scale is reduced (int >= 1).
      rtol: relative tolerance of an improvement, in [0, 1].
      atol: absolute tolerance of an improvement, >= 0 (not both 0).
      cooldown: means ignored after a reduction (int >= 0).
      accumulation_size: calls whose values are averaged into one mean (int >= 1); 1 for a
        validation metric, more for a noisy minibatch loss.
      min_scale: the scale never drops below it (>= 0).

    Returns:
      A :class:`ReduceOnPlateau`; its state is ``State(scale, best_value, plateau_count,
      cooldown_count, count, avg_value)``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.reduce_on_plateau(factor=0.5, patience=2)
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> for loss in [3.0, 2.0, 2.5, 2.4]:  # two means in a row no better than 2.0
      ...     u, state = tx.update({"w": jnp.ones(2)}, state, value=loss)
      >>> u["w"].tolist(), float(state.best_value), int(state.plateau_count)
      ([0.5, 0.5], 2.0, 0)

    References:
      PyTorch's ``torch.optim.lr_scheduler.ReduceLROnPlateau``
      (https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.ReduceLROnPlateau.html);
      ``optax.contrib.reduce_on_plateau``
      (https://optax.readthedocs.io/en/latest/api/contrib.html).
    """
    return ReduceOnPlateau(factor, patience, rtol, atol, cooldown, accumulation_size, min_scale)
