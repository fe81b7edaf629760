"""The transformation protocol, optax's, so flax and optax accept gradtx unchanged::

    state = tx.init(params)
    updates, state = tx.update(grads, state, params=None, **extra)
    params = gradtx.apply_updates(params, updates)

:class:`GradientTransformation` is the base of every gradtx transformation (a frozen, hashable
:class:`~gradtx._core.struct.Struct`); :class:`FunctionTransformation` is one made of two
functions, as optax's ``GradientTransformation(init_fn, update_fn)``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp

from .struct import Struct, static
from .tree import TransformError, check_structure, flatten, is_none, path_str

__all__ = ["GradientTransformation", "FunctionTransformation", "apply_updates"]


class GradientTransformation(Struct):
    """Base of every gradtx transformation: a frozen, hashable value with ``init``/``update``.

    As in optax, ``GradientTransformation(init_fn, update_fn)`` builds a transformation from
    two functions (a :class:`FunctionTransformation`); subclasses are built from their fields.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is GradientTransformation and (args or kwargs):
            return object.__new__(FunctionTransformation)
        return object.__new__(cls)

    def init(self, params: Any) -> Any:
        raise NotImplementedError

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, Any]:
        raise NotImplementedError


class FunctionTransformation(GradientTransformation):
    """A transformation made of two functions, ``init_fn(params) -> state`` and
    ``update_fn(updates, state, params=None, **extra) -> (updates, state)``, as optax's
    ``GradientTransformation(init_fn, update_fn)``.

    Both functions are static (hashed by identity). Keyword arguments of ``update`` reach
    ``update_fn`` when it accepts them (by name, or all of them with ``**kwargs``) and are
    dropped otherwise, as optax's ``with_extra_args_support`` does.
    """

    name = "function_transformation"
    init_fn: Any = static()
    update_fn: Any = static()

    def init(self, params: Any) -> Any:
        return self.init_fn(params)

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, Any]:
        if extra:
            extra = _accepted_kwargs(self.update_fn, extra)
        return self.update_fn(updates, state, params, **extra)


def _accepted_kwargs(fn: Any, extra: dict[str, Any]) -> dict[str, Any]:
    try:
        names = _accepted_names(fn)
    except TypeError:  # an unhashable callable: not cached
        names = _accepted_names.__wrapped__(fn)
    return extra if names is None else {k: v for k, v in extra.items() if k in names}


@functools.lru_cache(maxsize=512)
def _accepted_names(fn: Any) -> frozenset[str] | None:
    """The keyword names ``fn`` accepts, or ``None`` for all of them (``**kwargs``, or no
    signature to read); cached, so ``update`` inspects a function once, not at every call."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature: pass everything
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates`` leaf by leaf, keeping each param's dtype, as ``optax.apply_updates``.

    The rule: the result has the structure of ``params``. Where ``params`` has ``None`` (a
    leaf, or the whole tree: ``apply_updates(None, updates)`` is ``None``), the result is
    ``None`` whatever ``updates`` holds there; where ``updates`` has ``None``, the param is
    kept. Elsewhere ``updates`` must have the params' structure and shapes (a
    :class:`TransformError` names the leaf), and the sum is cast to the param's dtype.
    """
    treedef: Any = jax.tree_util.tree_structure(params, is_leaf=is_none)
    try:
        ups = treedef.flatten_up_to(updates)
    except (ValueError, TypeError):
        check_structure("apply_updates", "params", params, "updates", updates)
        raise  # pragma: no cover  (check_structure raises for any mismatch flatten_up_to finds)
    out = []
    for (path, p), u in zip(flatten(params)[0], ups):
        if p is None or u is None:
            out.append(p)
            continue
        if jnp.shape(p) != jnp.shape(u):
            raise TransformError(
                f"gradtx.apply_updates: at {path_str(path)}, updates has shape {jnp.shape(u)} "
                f"but params has shape {jnp.shape(p)}"
            )
        dtype = jnp.result_type(p)
        out.append(jnp.asarray(p + jnp.asarray(u).astype(dtype)).astype(dtype))
    return treedef.unflatten(out)
