"""SM3's σ: Adagrad's accumulator kept as one vector per axis (a cover of the array by its rows,
columns, ...), so an ``n × m`` matrix keeps ``n + m`` statistics instead of ``n·m``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, PartitionSpec

from .._core.context import Context
from .._core.knobs import Scale
from .._core.numerics import abs_sq
from .._core.struct import hyper
from .common import moment_dtype

__all__ = ["SM3Scale"]


def _replicated(x: jax.Array) -> jax.Array:
    """``x`` gathered to every device when its type shards it over an ``Explicit`` mesh axis
    (a row statistic of a row-sharded matrix), so the statistics of all axes concatenate."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if sharding is None or AxisType.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return x
    if all(e is None for e in sharding.spec):
        return x
    return jax.sharding.reshard(x, PartitionSpec())


def _axes_view(x: jax.Array) -> jax.Array:
    """``x`` with at least one axis (a scalar parameter is covered by itself)."""
    return x.reshape(1) if x.ndim == 0 else x


class SM3Scale(Scale):
    r"""SM3-II's σ: the minimum over the cover sets holding an entry of their accumulated maxima.

    For an array with axes :math:`1..k`, the cover sets are its slices along each axis (for
    :math:`k \le 1`, every entry alone), with one statistic :math:`\mu_t(r)` per slice:

    .. math::
        \nu_t(i) = c\,|g_t(i)|^2 + \beta_2 \min_{r \ni i} \mu_{t-1}(r), \qquad
        \mu_t(r) = \max_{i \in r} \nu_t(i), \qquad
        u_t(i) = d_t(i) / \sqrt{\nu_t(i) + \epsilon} \;\;(0 \text{ where } \nu_t(i) = 0)

    with :math:`c = 1` for :math:`\beta_2 = 1` (the paper's SM3-II, a sum) and
    :math:`c = 1-\beta_2` otherwise (an EMA), as ``optax.scale_by_sm3``. Applied to the
    gradient before the direction (``scale_first``): optax's SM3 takes the EMA of the scaled
    gradients.

    Slot ``nu``: the statistics of all axes concatenated (length :math:`\sum_j n_j`; for a
    vector, one per entry), float32 for float16 params.

    References:
      Anil, Gupta, Koren & Singer, *Memory-Efficient Adaptive Optimization*, NeurIPS 2019
      (SM3-II). https://arxiv.org/abs/1901.11150
    """

    slots = ("nu",)
    summary = "σ = √(min over rows/cols of max accumulated g²) (SM3)"
    b2: float = hyper(1.0, "unit_closed")
    eps: float = hyper(1e-8, "nonnegative")

    def init_leaf(self, param: jax.Array) -> dict:
        n = int(np.sum(param.shape)) if param.ndim else 1
        return {"nu": jnp.zeros((n,), moment_dtype(param.dtype))}

    def step(self, g, m, slots, param, ctx: Context):
        x = _axes_view(g)
        shape, k = x.shape, x.ndim
        offsets = np.cumsum((0, *shape))
        per_axis = [slots["nu"][offsets[i] : offsets[i + 1]] for i in range(k)]
        expanded = [
            v.reshape((1,) * i + (shape[i],) + (1,) * (k - i - 1)) for i, v in enumerate(per_axis)
        ]
        previous = functools.reduce(jnp.minimum, expanded)
        c = jnp.where(self.b2 == 1, jnp.ones_like(self.b2), 1 - self.b2)
        accum = c * abs_sq(x) + self.b2 * previous
        inv = jnp.where(accum > 0, jax.lax.rsqrt(accum + self.eps), jnp.zeros_like(accum))
        u = _axes_view(m) * inv
        if k == 1:
            new = accum
        else:
            others = lambda i: tuple(j for j in range(k) if j != i)  # noqa: E731
            new = jnp.concatenate([_replicated(jnp.max(accum, axis=others(i))) for i in range(k)])
        return u.reshape(g.shape), {"nu": new}
