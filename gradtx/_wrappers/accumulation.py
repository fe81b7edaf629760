"""``MultiSteps``: gradient accumulation over k micro-steps, optax's class with its semantics.

Rule per call, with ``n`` the micro-steps accumulated so far, ``k = every_k_schedule(step)``
(``step``: optimizer steps taken) and ``a`` the accumulator::

    a = a + (g − a) / (n + 1)      (use_grad_mean: the running mean; else a = a + g)
    if n == k − 1:  u, inner_state = inner.update(a, inner_state); a = 0; step += 1
    else:           u = 0
    n = (n + 1) mod k

so ``inner`` (its schedules, counts and bias corrections) advances once per optimizer step, and
the k micro-steps between give zero updates. With ``should_skip_update_fn`` (optax's protocol,
``(updates, gradient_step, params) -> (skip, skip_state)``) a skipped micro-step changes
nothing but ``skip_state``. The state ``State(mini_step, gradient_step, inner_opt_state,
acc_grads, skip_state)`` has optax's field names.

Unlike optax's, ``inner.update`` runs only on the micro-steps that emit (``lax.cond``), not on
every micro-step with the result discarded; the values are the same. Two static fast paths
take no branch: without ``should_skip_update_fn`` no skip test is compiled, and with
``every_k_schedule`` the int 1 every call emits, so (when each accumulator's dtype holds its
gradient exactly: float32 for float32 or bfloat16 gradients) ``inner.update`` runs on the
gradients themselves and the accumulator, the zeros of ``init``, is neither read nor
written. ``MultiSteps(opt, 1)`` then compiles to ``opt``'s own step: its updates equal those
of the general path (k given as a function returning 1) bit for bit except where a gradient
element is −0.0 (the general path's ``0 + g`` makes it +0.0), and inside a step that also
applies them the addition can fuse as it does for ``opt`` (the general path materializes the
updates at the branch, which can round ``p + u`` differently, by an ulp).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.stage import increment, scalar_like
from .._core.state import State
from .._core.struct import static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError
from .common import as_inner, check_args
from .finite import apply_or_skip

__all__ = ["MultiSteps"]

_ENTRIES = ("mini_step", "gradient_step", "inner_opt_state", "acc_grads", "skip_state")


def _no_skip(*args: Any, **kwargs: Any) -> tuple[jax.Array, tuple]:
    return jnp.array(False), ()


def _map(fn: Any, *trees: Any) -> Any:
    return jax.tree_util.tree_map(fn, *trees, is_leaf=lambda x: x is None)


def _opt(fn: Any) -> Any:
    return lambda x, *rest: None if x is None else fn(x, *rest)


def _holds(acc: Any, grad: Any) -> bool:
    """Whether every value of dtype ``grad`` is one of dtype ``acc``."""
    if acc == grad:
        return True
    if not (jnp.issubdtype(acc, jnp.floating) and jnp.issubdtype(grad, jnp.floating)):
        return False
    a, g = jnp.finfo(acc), jnp.finfo(grad)
    return a.nmant >= g.nmant and a.maxexp >= g.maxexp and a.minexp <= g.minexp


def _zeros(updates: Any, shapes: Any) -> Any:
    """Zero updates of the inner transformation's output dtypes, placed like the gradients
    (``zeros_like`` keeps a leaf's sharding, which ``eval_shape``'s shapes do not carry)."""
    return _map(_opt(lambda g, s: jnp.zeros_like(g, dtype=s.dtype)), updates, shapes)


class MultiSteps(GradientTransformation):
    """Accumulates the gradients of ``every_k_schedule`` micro-steps, then applies ``opt`` once
    to their mean (or sum); see the module docstring for the rule. As ``optax.MultiSteps``:
    the same arguments in the same order, ``has_updated``, ``inner_opt`` and
    ``gradient_transformation()`` (which returns this value itself: it already is a
    transformation).

    Attributes:
      opt: the wrapped gradtx or optax transformation.
      every_k_schedule: micro-steps per optimizer step: an int, or a function of the optimizer
        step count (an int32 array) returning one.
      use_grad_mean: average the accumulated gradients (the default) or sum them.
      should_skip_update_fn: optional ``fn(updates, gradient_step, params) -> (skip,
        skip_state)`` with ``skip`` a scalar bool: a skipped micro-step is as if it never
        happened (``optax.skip_not_finite`` and ``optax.skip_large_updates`` work).
      accumulator_dtype: the accumulator's dtype (float32, as optax); ``None``: the gradient's
        dtype widened to at least float32 (float64 for float64 parameters).
      in_place: (gradtx's; keyword) run a gradtx ``opt`` on every micro-step on the
        accumulated gradients and keep its state where each stage computes it (the new
        value on the emitting micro-step, the old one else; updates zero), instead of a
        ``lax.cond`` around it, as ``skip_nonfinite(..., in_place=True)`` does: no branch, so
        donated state is updated in place and no update buffers are stored at a branch (on
        XLA:CPU the ``lax.cond`` form compiles to ~2 params-sized temporaries per step). It
        costs ``opt``'s work on every micro-step, so it pays for cheap elementwise
        optimizers; values on the emitting micro-steps may differ from the ``lax.cond`` form
        by fused multiply-add rounding; non-emitting micro-steps leave the state exactly as
        it was. An ``opt`` that is not made of gradtx stages takes the ``lax.cond``. The
        accumulator is then reset lazily: after an emitting micro-step ``acc_grads`` still
        holds that step's mean, and the next micro-step starts from its gradient.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.MultiSteps(gradtx.sgd(1.0), every_k_schedule=2)
      >>> state = tx.init({"w": jnp.zeros(1)})
      >>> u, state = tx.update({"w": jnp.array([1.0])}, state)
      >>> u["w"].tolist(), bool(tx.has_updated(state))
      ([0.0], False)
      >>> u, state = tx.update({"w": jnp.array([3.0])}, state)
      >>> u["w"].tolist(), bool(tx.has_updated(state))
      ([-2.0], True)
    """

    name = "multi_steps"
    opt: Any = None
    every_k_schedule: Any = static(1)
    use_grad_mean: bool = static(True)
    should_skip_update_fn: Any = static(None)
    accumulator_dtype: Any = static(jnp.float32)
    in_place: bool = static(False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "opt", as_inner(self.name, self.opt))
        k = self.every_k_schedule
        if not callable(k) and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(
                f"gradtx.{self.name}: every_k_schedule must be an int >= 1 or a function of the "
                f"step, got {k!r}"
            )
        if self.accumulator_dtype is not None:
            object.__setattr__(self, "accumulator_dtype", jnp.dtype(self.accumulator_dtype))
        super().__post_init__()

    @property
    def inner_opt(self) -> GradientTransformation:
        return self.opt

    def gradient_transformation(self) -> MultiSteps:
        return self

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.opt, state["inner_opt_state"])]

    def has_updated(self, state: Any) -> jax.Array:
        """Whether the last call emitted an optimizer step (``mini_step == 0`` after at least one
        optimizer step), as optax's."""
        return jnp.logical_and(state["mini_step"] == 0, state["gradient_step"] > 0)

    def _skip_fn(self) -> Any:
        return self.should_skip_update_fn or _no_skip

    def _acc_dtype(self, x: Any) -> Any:
        if self.accumulator_dtype is not None:
            return self.accumulator_dtype
        return compute_dtype(jnp.result_type(x))

    def _k(self, step: jax.Array) -> jax.Array:
        k = self.every_k_schedule
        return jnp.asarray(k(step) if callable(k) else k, jnp.int32)

    def init(self, params: Any) -> State:
        step = scalar_like(params, 0, jnp.int32)
        zeros = _map(_opt(jnp.zeros_like), params)
        _, skip_state = self._skip_fn()(zeros, step, params)
        return State(
            mini_step=scalar_like(params, 0, jnp.int32),
            gradient_step=step,
            inner_opt_state=self.opt.init(params),
            acc_grads=_map(_opt(lambda p: jnp.zeros_like(p, self._acc_dtype(p))), params),
            skip_state=skip_state,
        )

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, _ENTRIES, updates, params)
        n, step = state["mini_step"], state["gradient_step"]
        k = self._k(step)
        skip, skip_state = self._skip_fn()(updates, step, params)
        if getattr(skip, "dtype", None) != jnp.bool_ or jnp.shape(skip) != ():
            raise TransformError(
                f"gradtx.{self.name}: should_skip_update_fn must return a scalar bool array "
                f"first, got {getattr(skip, 'dtype', type(skip).__name__)}{jnp.shape(skip)}"
            )
        inner_state, a0 = state["inner_opt_state"], state["acc_grads"]
        # the k = 1 fast path (below) when each accumulator holds its gradient exactly (else a
        # fused round trip through it could be skipped as excess precision)
        wide = _map(_opt(lambda a, g: _holds(a.dtype, jnp.result_type(g))), a0, updates)
        exact = all(jax.tree_util.tree_leaves(wide))

        def accumulate(a: jax.Array, g: jax.Array) -> jax.Array:
            g = g.astype(a.dtype)
            if self.use_grad_mean:  # Welford's running mean
                return a + (g - a) / (n + 1).astype(a.dtype)
            return a + g

        def step_inner(acc: Any) -> tuple[Any, Any]:
            cast = _map(_opt(lambda a, g: a.astype(jnp.result_type(g))), acc, updates)
            return self.opt.update(cast, inner_state, params, **extra)

        def hold(acc: Any) -> tuple[Any, Any]:
            shapes = jax.eval_shape(step_inner, acc)[0]
            return _zeros(updates, shapes), inner_state

        def do(_: Any) -> tuple[Any, State]:
            if self.every_k_schedule == 1 and not callable(self.every_k_schedule) and exact:
                cast = _map(
                    _opt(lambda a, g: g.astype(a.dtype).astype(jnp.result_type(g))), a0, updates
                )
                out, new_inner = self.opt.update(cast, inner_state, params, **extra)
                return out, state.replace(
                    mini_step=increment(n) % k,
                    gradient_step=increment(step),
                    inner_opt_state=new_inner,
                    skip_state=skip_state,
                )
            last = n == k - 1
            if self.in_place:
                # reset lazily: the first micro-step of a cycle starts from g itself, so the
                # stored accumulator is the value the inner update reads (one buffer, written
                # in place), not a reset copy of it
                def restart(a: jax.Array, g: jax.Array) -> jax.Array:
                    return jnp.where(n == 0, g.astype(a.dtype), accumulate(a, g))

                acc = _map(_opt(restart), a0, updates)
                cast = _map(_opt(lambda a, g: a.astype(jnp.result_type(g))), acc, updates)
                out, new_inner = apply_or_skip(
                    self.opt, last, cast, inner_state, params, extra, in_place=True
                )
                kept = acc
            else:
                acc = _map(_opt(accumulate), a0, updates)
                out, new_inner = jax.lax.cond(last, step_inner, hold, acc)
                kept = _map(_opt(lambda a: jnp.where(last, jnp.zeros_like(a), a)), acc)
            return out, State(
                mini_step=increment(n) % k,
                gradient_step=jnp.where(last, increment(step), step),
                inner_opt_state=new_inner,
                acc_grads=kept,
                skip_state=skip_state,
            )

        def skipped(_: Any) -> tuple[Any, State]:
            shapes = jax.eval_shape(step_inner, a0)[0]
            return _zeros(updates, shapes), state.replace(skip_state=skip_state)

        if self.should_skip_update_fn is None:  # statically never skips: no branch
            return do(None)
        return jax.lax.cond(skip, skipped, do, None)
