"""``packed_views``: the views of a packed buffer as one linear op, lowered per platform.

Used by :func:`gradtx._core.packed.views` (the rule and why are in its docstring): one op for
all the leaves of a buffer, whose JVP is the op on the tangent and whose transpose is one
concatenation of the leaf cotangents (symbolic-zero cotangents become zeros), so forward and
reverse mode, ``jax.linear_transpose`` and ``jax.vmap`` work exactly as with ``lax.split``.
Lowered for a CPU, each view is a ``dynamic_slice`` at an offset XLA cannot constant-fold
(:func:`runtime_offset_views`), so equal-shape views fused into equal readers are identical
fused computations and XLA:CPU compiles one kernel for all of them; for any other platform,
and vmapped, it is one ``lax.split``. Both give the same bits.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = ["split_views", "runtime_offset_views", "views_p"]


def split_views(buf: jax.Array, *, sizes: tuple, shapes: tuple) -> list:
    """The views as one ``lax.split`` of the 1-D buffer, each part reshaped."""
    return [p.reshape(s) for p, s in zip(jax.lax.split(buf, sizes), shapes)]


def runtime_offset_views(buf: jax.Array, *, sizes: tuple, shapes: tuple) -> list:
    """The views as ``dynamic_slice`` s at offsets XLA cannot fold: the outputs of a ``while``
    loop that runs once, one scalar per view, its trip count read from the buffer's first
    element (its top bit shifted out: 0 for every value, NaN and Inf included). A loop's
    outputs are not fused into their readers, so each reader gets its offset as a parameter
    (were the trip count known, XLA would remove the loop and fold the offsets back in)."""
    if not buf.shape[0]:
        return split_views(buf, sizes=sizes, shapes=shapes)
    bits = buf.dtype.itemsize * 8
    u = jnp.dtype(f"uint{bits}").type
    top = jax.lax.bitcast_convert_type(buf[0], u) >> u(bits - 1)  # 0 or 1, never folded
    zero = (top >> u(1)).astype(jnp.int32)
    offsets = np.cumsum((0,) + sizes[:-1]).tolist()

    def body(c: tuple) -> tuple:
        return (c[0] + 1, *(o + c[0] for o in c[1:]))

    init = (zero, *(jnp.int32(o) for o in offsets))
    outs = jax.lax.while_loop(lambda c: c[0] < 1, body, init)[1:]
    return [
        jax.lax.dynamic_slice(buf, (o,), (n,)).reshape(s) for o, n, s in zip(outs, sizes, shapes)
    ]


def _views_aval(buf: Any, *, sizes: tuple, shapes: tuple) -> list:
    # the buffer's aval (manual axes and mesh kept) with each leaf's shape, replicated
    spec = jax.sharding.PartitionSpec
    return [
        buf.update(shape=s, sharding=buf.sharding.update(spec=spec(*[None] * len(s))))
        for s in shapes
    ]


def _views_jvp(primals: tuple, tangents: tuple, **params: Any) -> tuple:
    # JAX calls this only with a tangent that is not a symbolic zero (one input); instantiate
    # it anyway, should that change
    tangent = ad.instantiate_zeros(tangents[0])
    return views_p.bind(primals[0], **params), views_p.bind(tangent, **params)


def _views_transpose(cts: list, buf: Any, *, sizes: tuple, shapes: tuple) -> list:
    # what JAX's transpose of lax.split does: one concatenation, bit for bit
    dtype = buf.aval.dtype
    parts = [jnp.zeros(n, dtype) if type(c) is ad.Zero else c.ravel() for c, n in zip(cts, sizes)]
    return [jnp.concatenate(parts)]


def _views_batch(args: tuple, dims: tuple, *, sizes: tuple, shapes: tuple) -> tuple:
    # batched buffers (an ensemble of models): one split along the leaf axis, as before
    buf = jnp.moveaxis(args[0], dims[0], 0)
    parts = jax.lax.split(buf, sizes, axis=1)
    return [p.reshape((buf.shape[0], *s)) for p, s in zip(parts, shapes)], [0] * len(shapes)


views_p = Primitive("packed_views")
views_p.multiple_results = True
views_p.def_impl(split_views)
views_p.def_abstract_eval(_views_aval)
ad.primitive_jvps[views_p] = _views_jvp
ad.primitive_transposes[views_p] = _views_transpose
batching.primitive_batchers[views_p] = _views_batch
mlir.register_lowering(views_p, mlir.lower_fun(split_views, multiple_results=True))
mlir.register_lowering(
    views_p, mlir.lower_fun(runtime_offset_views, multiple_results=True), platform="cpu"
)
