"""Line searches through optax's extra-arguments protocol: what they share, and
:func:`value_and_grad_from_state`. The searches: backtracking (Armijo) in
:mod:`gradtx._stages.backtracking`, zoom (strong Wolfe) in :mod:`gradtx._stages.zoom`.

The protocol is optax's::

    updates, state = tx.update(u, state, params, value=f(params), grad=∇f(params),
                               value_fn=f, **fn_kwargs)

with ``u`` the direction to search along (``−∇f`` after ``sgd``, ``−H∇f`` after L-BFGS).
``value_fn`` is required and declared (``requires``): without it ``update`` raises an error
naming the transformation. ``value`` and ``grad`` may be left out: they are then computed as
``jax.value_and_grad(value_fn)(params, **fn_kwargs)`` (one evaluation more). Keyword arguments
named as parameters of ``value_fn`` (data such as ``x=..., y=...``) are passed to it; others
are ignored (optax raises a ``TypeError`` for them).

A trial point is ``params + η·u`` computed as :func:`gradtx.apply_updates` computes
``params + updates`` for the updates returned, so the value and gradient a search keeps are
those at the parameters the caller gets next. Slopes are ``Re Σ g·u`` with ``g`` JAX's
gradient (for complex leaves ``∂f/∂x − i∂f/∂y``). The search runs under ``jax.jit`` keyed by
``value_fn`` (:func:`run`), so a Python loop of eager updates compiles it once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .._core.numerics import compute_dtype
from .._core.stage import scalar_like
from .._core.state import State
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError, check_float_leaves, check_structure, is_none

__all__ = ["value_and_grad_from_state"]

#: The keyword arguments of the protocol itself, never passed on to ``value_fn``.
PROTOCOL = ("value", "grad", "value_fn")


# --- tree arithmetic in a scalar dtype --------------------------------------------------------
def tmap(fn: Callable[..., Any], *trees: Any) -> Any:
    """``tree_map`` that keeps ``None`` leaves (of the first tree) as ``None``."""
    return jax.tree_util.tree_map(
        lambda x, *rest: None if x is None else fn(x, *rest), *trees, is_leaf=is_none
    )


def where(pred: jax.Array, a: Any, b: Any) -> Any:
    """``jnp.where(pred, a, b)`` leaf by leaf over two trees of one structure."""
    return tmap(lambda x, y: jnp.where(pred, x, y), a, b)


def scalar_dtype(tree: Any) -> Any:
    """The real dtype of a search's scalars (values, slopes, step sizes): the widest compute
    dtype of the leaves, at least float32 (float64 when a leaf is float64 or complex128)."""
    widest = jnp.dtype(jnp.float32)
    for leaf in jax.tree_util.tree_leaves(tree):
        real = jnp.dtype(jnp.finfo(compute_dtype(leaf.dtype)).dtype)
        widest = real if real.itemsize > widest.itemsize else widest
    return widest


def tree_vdot(a: Any, b: Any, dtype: Any) -> jax.Array:
    """``Re⟨a, b⟩ = Σ Re(vdot(a_i, b_i))`` over the leaves (``None`` skipped), in ``dtype``;
    each leaf's product in its compute dtype (at least float32)."""
    total = jnp.zeros((), dtype)
    leaves = lambda t: jax.tree_util.tree_leaves(t, is_leaf=is_none)  # noqa: E731
    for x, y in zip(leaves(a), leaves(b)):
        if x is None or y is None:
            continue
        with jax.numpy_dtype_promotion("standard"):
            cdt = compute_dtype(jnp.result_type(x.dtype, y.dtype))
        x, y = x.astype(cdt), y.astype(cdt)
        # a sum of products, not jnp.vdot: a dot over sharded dimensions has no output
        # sharding under an explicit mesh, a reduction does
        prod = jnp.real(jnp.conj(x) * y) if jnp.iscomplexobj(x) else x * y
        total = total + jnp.sum(prod).astype(dtype)
    return total


def slope(grad: Any, direction: Any, dtype: Any) -> jax.Array:
    """``d/dη f(w + η u)`` at 0 from JAX's gradient: ``Re Σ g·u``. (For a complex leaf,
    ``jax.grad`` gives ``∂f/∂x − i ∂f/∂y``, whose product with ``u`` has this real part.)"""
    return tree_vdot(tmap(jnp.conj, grad), direction, dtype)


def scaled(eta: jax.Array, tree: Any) -> Any:
    """``η·x`` leaf by leaf, in each leaf's compute dtype, cast back to its dtype."""

    def one(x: jax.Array) -> jax.Array:
        cdt = compute_dtype(x.dtype)
        return (eta.astype(cdt) * x.astype(cdt)).astype(x.dtype)

    return tmap(one, tree)


def along(params: Any, eta: jax.Array, direction: Any) -> tuple[Any, Any]:
    """``(η·u, params + η·u)``: the updates and the parameters :func:`gradtx.apply_updates`
    makes of them (the sum in the param dtype)."""
    step = scaled(eta, direction)
    moved = tmap(lambda p, s: (p + s.astype(p.dtype)).astype(p.dtype), params, step)
    return step, moved


def zeros(p: jax.Array) -> jax.Array:
    """Zeros of ``p``'s shape, dtype and placement, never weakly typed."""
    return jnp.zeros_like(p, dtype=jnp.result_type(p))


def like(tree: Any, ref: Any) -> Any:
    """``tree`` with every leaf cast to the dtype of the same leaf of ``ref``."""
    return tmap(lambda x, r: jnp.asarray(x).astype(r.dtype), tree, ref)


# --- the protocol -----------------------------------------------------------------------------
def _names(fn: Any) -> frozenset[str]:
    try:
        ps = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in ps if p.kind in kinds)


def objective(owner: str, extra: Mapping[str, Any]) -> tuple[Callable[..., Any], dict[str, Any]]:
    """``value_fn`` from the keyword arguments of ``update``, and those of them it names."""
    value_fn = extra.get("value_fn")
    if value_fn is None:
        raise TransformError(
            f"gradtx.{owner}: update needs the keyword argument value_fn, the objective "
            "(value_fn(params, **fn_kwargs) -> scalar), e.g. tx.update(grads, state, params, "
            "value=loss, grad=grads, value_fn=loss_fn)"
        )
    if not callable(value_fn):
        raise TypeError(
            f"gradtx.{owner}: value_fn must be a function of the params, got "
            f"{type(value_fn).__name__}"
        )
    names = _names(value_fn)
    return value_fn, {k: v for k, v in extra.items() if k in names and k not in PROTOCOL}


def _bind(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[[Any], Any]:
    return functools.partial(fn, **kwargs) if kwargs else fn


@functools.partial(jax.jit, static_argnums=(0, 2))
def _compiled(core: Any, tx: Any, fn: Any, kwargs: dict[str, Any], *args: Any) -> Any:
    return core(tx, _bind(fn, kwargs), *args)


def run(core: Any, tx: Any, fn: Callable[..., Any], kwargs: dict[str, Any], *args: Any) -> Any:
    """``core(tx, f, *args)`` with ``f = value_fn`` and its keyword arguments bound, under
    ``jax.jit`` keyed by ``value_fn`` (so a Python loop of eager updates compiles the search
    once; inside a jitted step it is inlined). Unhashable ``value_fn`` or keyword arguments
    that are not arrays: called as is."""
    try:
        hash(fn)
        arrays = all(
            isinstance(x, (jax.Array, np.ndarray, np.generic))
            for x in jax.tree_util.tree_leaves(kwargs)
        )
    except TypeError:
        arrays = False
    if arrays:
        return _compiled(core, tx, fn, kwargs, *args)
    return core(tx, _bind(fn, kwargs), *args)


def value_and_grad(f: Callable[[Any], Any], params: Any, dtype: Any) -> tuple[jax.Array, Any]:
    """``f(params)`` in ``dtype`` and ``∇f(params)`` in the params' dtypes."""
    value, grad = jax.value_and_grad(f)(params)
    return jnp.asarray(value).astype(dtype), like(grad, params)


def start(
    owner: str, f: Callable[[Any], Any], params: Any, value: Any, grad: Any, dtype: Any
) -> tuple[jax.Array, Any]:
    """The value and gradient at ``params``: ``value``/``grad`` as given, else computed."""
    if value is None or grad is None:
        v, g = value_and_grad(f, params, dtype)
        value = v if value is None else value
        grad = g if grad is None else grad
    v = jnp.asarray(value)
    if v.size != 1 or not (
        jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)
    ):
        raise TransformError(
            f"gradtx.{owner}: value must be a real scalar (the objective at params), got "
            f"{v.dtype}{list(v.shape)}"
        )
    check_structure(owner, "params", params, "grad", grad)
    return v.reshape(()).astype(dtype), like(grad, params)


def check_update(owner: str, entries: tuple[str, ...], updates: Any, state: Any, params: Any):
    """The checks every line search makes of ``update``'s arguments."""
    if not isinstance(state, State) or any(e not in state for e in entries):
        got = list(state) if isinstance(state, Mapping) else type(state).__name__
        raise TransformError(
            f"gradtx.{owner}: state is not this transformation's state (expected entries "
            f"{list(entries)}, got {got})"
        )
    check_float_leaves(owner, "updates", updates)
    if params is None:
        raise TransformError(
            f"gradtx.{owner}: update needs params=... (the line search evaluates value_fn at "
            "params + η·updates), got None"
        )
    check_structure(owner, "updates", updates, "params", params)


def count_arg(owner: str, what: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"gradtx.{owner}: {what} must be an int >= {least}, got {value!r}")
    return value


def start_state(owner: str, params: Any, grad: Any, errors: tuple[str, ...]) -> State:
    """A line search's state before its first update, with optax's entry names. ``value`` and
    the errors start at the largest finite value of their dtype (optax: ``+inf``), so the
    state is finite; ``num_linesearch_steps`` 0 marks it as holding no value yet."""
    check_float_leaves(owner, "params", params)
    dt = scalar_dtype(params)
    big = jnp.finfo(dt).max
    info = {"num_linesearch_steps": scalar_like(params, 0, jnp.int32)}
    info.update({e: scalar_like(params, big, dt) for e in errors})
    return State(
        learning_rate=scalar_like(params, 1.0, dt),
        value=scalar_like(params, big, dt),
        grad=grad,
        info=State(info),
    )


def report_failure(owner: str, failed: jax.Array, **values: jax.Array) -> None:
    """Prints the search's numbers (``verbose=True``) when ``failed``."""
    text = ", ".join(f"{k}={{}}" for k in values)

    def say() -> None:
        jax.debug.print(
            f"gradtx.{owner}: no step size met the conditions; {text}", *values.values()
        )

    jax.lax.cond(failed, say, lambda: None)


class Linesearch(GradientTransformation):
    """The base of the line searches: ``update`` checks its arguments, takes ``value_fn``
    (declared in ``requires``), ``value`` and ``grad`` from the keyword arguments, and runs
    the subclass's :meth:`search` through :func:`run`, given the value, gradient and slope
    ``⟨∇f, u⟩`` at ``params`` (computed when not given)."""

    requires: ClassVar[tuple[str, ...]] = ("value_fn",)

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_update(self.name, ("learning_rate", "value", "grad", "info"), updates, state, params)
        fn, kwargs = objective(self.name, extra)
        value, grad = extra.get("value"), extra.get("grad")
        return run(_start_search, self, fn, kwargs, updates, state, params, value, grad)

    def search(self, f: Any, u: Any, state: State, params: Any, at: tuple) -> tuple[Any, State]:
        """The step ``(η·u, new state)``; ``f`` is ``value_fn`` with its arguments bound and
        ``at`` is ``(value, grad, slope, dtype)`` at ``params``."""
        raise NotImplementedError


def _start_search(
    tx: Linesearch, f: Any, u: Any, state: State, params: Any, value: Any, grad: Any
) -> tuple[Any, State]:
    dt = state["learning_rate"].dtype
    value, grad = start(tx.name, f, params, value, grad, dt)
    return tx.search(f, u, state, params, (value, grad, slope(grad, u, dt), dt))


# --- reusing the last evaluation --------------------------------------------------------------
def _searches(state: Any) -> list[Any]:
    """Every line-search state inside ``state`` (gradtx's or optax's): a node holding
    ``value``, ``grad`` and ``info``."""
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, Mapping):
            if all(k in node for k in ("value", "grad", "info")):
                found.append(node)
                return
            children = list(node.values())
        elif isinstance(node, tuple) and hasattr(node, "_fields"):  # optax's named tuples
            if all(k in node._fields for k in ("value", "grad", "info")):
                found.append({k: getattr(node, k) for k in ("value", "grad", "info")})
                return
            children = list(node)
        elif isinstance(node, (tuple, list)):
            children = list(node)
        else:
            return
        for child in children:
            visit(child)

    visit(state)
    return found


def _get(node: Any, key: str) -> Any:
    return node[key] if isinstance(node, Mapping) else getattr(node, key)


def value_and_grad_from_state(value_fn: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
    r"""``jax.value_and_grad(value_fn)`` that reuses the value and gradient a line search kept,
    as ``optax.value_and_grad_from_state``.

    The returned function is called as ``value_and_grad(params, *args, state=opt_state,
    **kwargs)``. It finds the one line-search state in ``opt_state`` (gradtx's zoom or
    backtracking search, or optax's) and returns its ``value`` and ``grad``: those at the
    params the last update led to. Before the first update (``num_linesearch_steps`` is 0),
    or when the kept value is not finite, it evaluates ``value_fn`` instead (under
    ``lax.cond``, so only one branch runs). A search in a deterministic loop then costs one
    evaluation of ``value_fn`` and its gradient per accepted point, not two.

    Args:
      value_fn: the objective, ``value_fn(params, *args, **kwargs) -> scalar``.

    Returns:
      ``value_and_grad(params, *args, state, **kwargs) -> (value, grad)``.

    Raises:
      ValueError: (when called) if ``state`` holds no line-search state or more than one, or
        if its ``grad`` is ``None`` (a backtracking search without ``store_grad=True``).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> f = lambda w: jnp.sum((w - 1.0) ** 2)
      >>> tx = gradtx.lbfgs()
      >>> w = jnp.zeros(3)
      >>> state = tx.init(w)
      >>> value_and_grad = gradtx.value_and_grad_from_state(f)
      >>> for _ in range(2):
      ...     value, grad = value_and_grad(w, state=state)
      ...     u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
      ...     w = gradtx.apply_updates(w, u)
      >>> [round(x, 6) for x in w.tolist()]
      [1.0, 1.0, 1.0]
    """

    def value_and_grad(params: Any, *args: Any, state: Any, **kwargs: Any) -> tuple[Any, Any]:
        found = _searches(state)
        if len(found) != 1:
            raise ValueError(
                "gradtx.value_and_grad_from_state: the state holds "
                f"{'no' if not found else len(found)} line-search states (entries value, grad "
                "and info); it needs exactly one"
            )
        value, grad = _get(found[0], "value"), _get(found[0], "grad")
        if grad is None:
            raise ValueError(
                "gradtx.value_and_grad_from_state: the line search keeps no gradient; build "
                "it with store_grad=True"
            )
        steps = _get(_get(found[0], "info"), "num_linesearch_steps")
        kept = (steps > 0) & jnp.isfinite(value)

        def fresh() -> tuple[Any, Any]:
            v, g = jax.value_and_grad(value_fn)(params, *args, **kwargs)
            return jnp.asarray(v).astype(value.dtype), like(g, grad)

        return jax.lax.cond(kept, lambda: (value, grad), fresh)

    return value_and_grad
