"""The packed layout in a plain JAX (or equinox) training loop: a loss that reads views
(:func:`packed_loss`), and packing an ordinary tree into a layout that already exists
(:func:`pack_like`: gradients given per leaf, a restored checkpoint).

:func:`pack` decides a layout; :func:`pack_like` only fills one, so the result is a
:class:`~gradtx.Packed` with *the same* :class:`~gradtx.Layout` object as its target (a jitted
step given it does not retrace) and its buffers placed like the target's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from .._core.packed import Layout, Packed, concat, unpack
from .._core.tree import TransformError, flatten, path_str
from .pack import _buffer, _on_host

__all__ = ["packed_loss", "pack_like", "pack_into", "unpacked_or_kept"]


def packed_loss(loss_fn: Callable[..., Any]) -> Callable[..., Any]:
    """``loss_fn`` made to take packed params: ``loss(packed, *args)`` is
    ``loss_fn(gradtx.unpack(packed), *args)``.

    So ``jax.grad(packed_loss(loss_fn))(packed, batch)`` is the gradient as a
    :class:`~gradtx.Packed` (its buffers written by one concatenation each, see
    :func:`gradtx.unpack`), ready for ``tx.update(grads, state, packed)``. The first argument
    may also be an ordinary tree (``unpack`` leaves a tree without packed nodes as it is), so
    the wrapped loss serves evaluation on unpacked params too. Works as a decorator; keyword
    arguments and ``has_aux`` outputs pass through.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs)``, written for the ordinary params tree (a
        dict, an equinox module...).

    Returns:
      ``loss(params_or_packed, *args, **kwargs)``.

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> params = {"b": jnp.zeros(2), "w": jnp.ones((2, 2))}
      >>> loss = gradtx.packed_loss(lambda p, x: jnp.sum((x @ p["w"] + p["b"]) ** 2))
      >>> packed = gradtx.pack(params)
      >>> grads = jax.grad(loss)(packed, jnp.ones(2))
      >>> type(grads).__name__, gradtx.unpack(grads)["b"].tolist()
      ('Packed', [4.0, 4.0])
    """

    @functools.wraps(loss_fn)
    def loss(params: Any, *args: Any, **kwargs: Any) -> Any:
        return loss_fn(unpack(params), *args, **kwargs)

    return loss


def pack_like(target: Any, tree: Any) -> Any:
    """``tree``, an ordinary tree, in the packed form of ``target``: the inverse of
    :func:`gradtx.unpack` for a layout that exists.

    ``target`` is a :class:`~gradtx.Packed` or any tree holding :class:`~gradtx.Packed` nodes
    (an optimizer state on packed params); ``tree`` has ``target``'s structure with each
    packed node replaced by its original tree (what :func:`gradtx.unpack` gives). Each packed
    node is rebuilt with the target's :class:`~gradtx.Layout` object (so a jitted step does
    not retrace) and its buffers placed like the target's; a node of ``tree`` that is already
    a :class:`~gradtx.Packed` of that layout is taken as it is. Works inside ``jit`` (for
    gradients given per leaf) and on concrete arrays (a restored checkpoint: concatenated on
    the host, one transfer per buffer).

    Args:
      target: the packed tree whose layout to fill (its values are not read, only the
        layouts and the placement of its buffers: ``jax.ShapeDtypeStruct`` leaves do).
      tree: the ordinary tree.

    Returns:
      ``tree`` packed like ``target``.

    Raises:
      TransformError: a leaf path is missing or extra, or a leaf's shape or dtype is not the
        layout's.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> packed = gradtx.pack({"b": jnp.zeros(3), "w": jnp.ones((2, 2))})
      >>> again = gradtx.pack_like(packed, {"b": jnp.ones(3), "w": jnp.zeros((2, 2))})
      >>> again.layout is packed.layout, again.buffers[0].tolist()
      (True, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    """
    is_node = lambda x: x is None or isinstance(x, Packed)  # noqa: E731
    t_nodes, t_def = jax.tree_util.tree_flatten_with_path(target, is_leaf=is_node)
    t_def = cast(Any, t_def)  # flatten_up_to is not in jax's type stubs
    try:
        parts = t_def.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        raise TransformError(
            f"gradtx.pack_like: the tree does not have the target's structure ({e})"
        ) from None
    out = []
    for (path, t), part in zip(t_nodes, parts):
        if not isinstance(t, Packed):
            out.append(part)
        elif isinstance(part, Packed):
            if part.layout != t.layout:
                raise TransformError(
                    f"gradtx.pack_like: the packed value at {path_str(path)} has "
                    f"{part.layout!r}, the target {t.layout!r}"
                )
            out.append(part)
        else:
            out.append(pack_into(t.layout, part, like=t.buffers, at=path_str(path)))
    return t_def.unflatten(out)


def pack_into(
    layout: Layout,
    tree: Any,
    *,
    like: tuple = (),
    at: str = "",
    owner: str = "gradtx.pack_like",
) -> Packed:
    """The ordinary ``tree`` in ``layout`` (leaves matched by path; dict and ``FrozenDict``
    alike), buffers placed like ``like`` (the target's buffers, when known). A target buffer
    of ``None`` (a masked-out slot) stays ``None``."""
    flat, _ = flatten(tree)
    paths = tuple(jax.tree_util.keystr(p) for p, _ in flat)
    where = f" at {at}" if at and at != "<root>" else ""
    if paths != layout.paths:
        missing = sorted(set(layout.paths) - set(paths))[:3]
        extra = sorted(set(paths) - set(layout.paths))[:3]
        why = f"missing {missing}, unexpected {extra}" if missing or extra else "another order"
        raise TransformError(
            f"{owner}: the tree{where} does not have the leaves of {layout!r} ({why})"
        )
    leaves = [x for _, x in flat]
    buffers: list[Any] = []
    for gi, g in enumerate(layout.groups):
        t = like[gi] if gi < len(like) else ()
        if t is None:
            buffers.append(None)
            continue
        parts = [leaves[i] for i in g.indices]
        for i, s, x in zip(g.indices, g.shapes, parts):
            dt = getattr(x, "dtype", None)
            if tuple(np.shape(x)) != s or dt is None or jnp.dtype(dt).name != g.dtype:
                got = f"{jnp.dtype(dt).name if dt is not None else type(x).__name__}"
                raise TransformError(
                    f"{owner}: the leaf {layout.paths[i]}{where} is {got}{list(np.shape(x))}"
                    f", the layout's {g.dtype}{list(s)}"
                )
        if all(_on_host(x) for x in parts):
            buffers.append(_buffer(parts, _sharding(t, parts[0])))
        else:
            buffers.append(concat([jnp.ravel(x) for x in parts]))
    return Packed(tuple(buffers), tuple(leaves[i] for i in layout.big), layout)


def _sharding(target: Any, first: Any) -> Any:
    """Where a buffer rebuilt from concrete leaves goes: the target buffer's sharding if it
    is known (a committed array, or a ``ShapeDtypeStruct`` with one), else the first leaf's
    if it is committed (a restored array), else ``None`` (the default device)."""
    for x in (target, first):
        sh = getattr(x, "sharding", None)
        if isinstance(x, jax.Array) and not x.committed:
            continue
        if isinstance(sh, jax.sharding.Sharding):
            return sh
    return None


def unpacked_or_kept(tree: Any) -> Any:
    """``tree`` with each :class:`~gradtx.Packed` node laid out like its params unpacked (the
    ordinary tree, e.g. Adam's moments) and the others kept packed (slots of a stage that
    runs per stack of equal shapes, such as Adafactor's factored statistics): what a
    checkpoint of the ordinary tree saves, and :func:`pack_like` inverts."""

    def one(x: Any) -> Any:
        if not isinstance(x, Packed):
            return x
        sized = all(
            b is None or tuple(b.shape) == (g.size,) for g, b in zip(x.layout.groups, x.buffers)
        )
        if not sized:
            return x
        if any(isinstance(b, jax.ShapeDtypeStruct) for b in x.buffers):
            return jax.eval_shape(unpack, x)  # an abstract target (of a restore)
        return unpack(x)

    return jax.tree_util.tree_map(one, tree, is_leaf=lambda x: x is None or isinstance(x, Packed))
