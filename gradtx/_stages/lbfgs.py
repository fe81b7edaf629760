"""L-BFGS's direction: the two-loop recursion over the last ``m`` curvature pairs, as
``optax.scale_by_lbfgs``.

At update ``k`` (``count``), with ``w_k`` the params and ``g_k`` the updates (gradients), the
pair of the last step ``s = w_k − w_{k−1}``, ``y = g_k − g_{k−1}``, ``ρ = 1/⟨y, s⟩`` (0 when
``⟨y, s⟩ = 0``; no pair at ``k = 0``) enters a ring buffer of ``m`` pairs, and the output is
``H_k g_k`` by the two-loop recursion (Nocedal & Wright, Algorithm 7.4), newest pair ``i``
first::

    q = g_k
    for i = newest … oldest:  α_i = ρ_i ⟨s_i, q⟩;  q = q − α_i y_i
    r = γ_k q,   γ_k = ⟨y, s⟩/⟨y, y⟩ (1 if ⟨y, y⟩ = 0);  γ_0 = min(1, 1/‖g_0‖)
    for i = oldest … newest:  β = ρ_i ⟨y_i, r⟩;  r = r + (α_i − β) s_i

(``γ_k = 1`` throughout with ``scale_init_precond=False``). Inner products run over the whole
tree: the pairs are of the full parameter vector, each leaf a block of it. Empty slots of the
buffer hold ``ρ = 0`` and change nothing.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.stage import increment, place_like, scalar_like
from .._core.state import State
from .._core.struct import static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError, check_float_leaves, check_structure
from .linesearch import scalar_dtype, tmap, tree_vdot

__all__ = ["ScaleByLBFGS", "scale_by_lbfgs", "two_loop"]

_ENTRIES = (
    "count",
    "params",
    "updates",
    "diff_params_memory",
    "diff_updates_memory",
    "weights_memory",
)


def _wide(x: jax.Array) -> jax.Array:
    return x.astype(compute_dtype(x.dtype))


def two_loop(
    g: Any, s_mem: Any, y_mem: Any, rho: jax.Array, gamma: jax.Array, oldest: jax.Array
) -> Any:
    """``H g`` by the two-loop recursion (see the module docstring) over a ring buffer.

    Args:
      g: the vector (a tree), in its compute dtype.
      s_mem, y_mem: trees whose leaves stack ``m`` pairs along axis 0.
      rho: ``(m,)``, the weights ``1/⟨y_i, s_i⟩`` (0 for an empty slot).
      gamma: the scale of the initial matrix ``H⁰ = γ I``.
      oldest: the slot of the oldest pair; the newest is the one before it (mod ``m``).
    """
    dt = rho.dtype
    m = rho.shape[0]
    order = (oldest + jnp.arange(m, dtype=jnp.int32)) % m  # oldest … newest
    pair = lambda i: (tmap(lambda x: x[i], s_mem), tmap(lambda x: x[i], y_mem))  # noqa: E731

    def backward(q: Any, i: jax.Array) -> tuple[Any, jax.Array]:
        s_i, y_i = pair(i)
        alpha = rho[i] * tree_vdot(s_i, q, dt)
        return tmap(lambda a, b: a - alpha.astype(a.dtype) * b, q, y_i), alpha

    q, alphas = jax.lax.scan(backward, g, order, reverse=True)
    r = tmap(lambda a: gamma.astype(a.dtype) * a, q)

    def forward(r: Any, i_alpha: tuple) -> tuple[Any, None]:
        i, alpha = i_alpha
        s_i, y_i = pair(i)
        beta = rho[i] * tree_vdot(y_i, r, dt)
        return tmap(lambda a, b: a + (alpha - beta).astype(a.dtype) * b, r, s_i), None

    return jax.lax.scan(forward, r, (order, alphas))[0]


class ScaleByLBFGS(GradientTransformation):
    """What :func:`scale_by_lbfgs` returns; see it and :mod:`gradtx._stages.lbfgs`."""

    name = "scale_by_lbfgs"
    memory_size: int = static(10)
    scale_init_precond: bool = static(True)

    def __post_init__(self) -> None:
        m = self.memory_size
        try:
            ok = not isinstance(m, bool) and operator.index(m) >= 1
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"gradtx.{self.name}: memory_size must be an int >= 1, got {m!r}")
        object.__setattr__(self, "memory_size", operator.index(m))
        if not isinstance(self.scale_init_precond, bool):
            raise TypeError(
                f"gradtx.{self.name}: scale_init_precond must be a bool, got "
                f"{self.scale_init_precond!r}"
            )
        super().__post_init__()

    def init(self, params: Any) -> State:
        check_float_leaves(self.name, "params", params)
        m = self.memory_size
        zeros = lambda p: jnp.zeros_like(p, compute_dtype(p.dtype))  # noqa: E731
        stacked = lambda p: jnp.broadcast_to(zeros(p)[None], (m, *jnp.shape(p)))  # noqa: E731
        return State(
            count=scalar_like(params, 0, jnp.int32),
            params=tmap(zeros, params),
            updates=tmap(zeros, params),
            diff_params_memory=tmap(stacked, params),
            diff_updates_memory=tmap(stacked, params),
            weights_memory=place_like(params, jnp.zeros((m,), scalar_dtype(params))),
        )

    def _check(self, updates: Any, state: Any, params: Any) -> None:
        if not isinstance(state, State) or any(e not in state for e in _ENTRIES):
            raise TransformError(
                f"gradtx.{self.name}: state is not this transformation's state (expected "
                f"entries {list(_ENTRIES)}, got "
                f"{list(state) if isinstance(state, dict) else type(state).__name__})"
            )
        check_float_leaves(self.name, "updates", updates)
        if params is None:
            raise TransformError(
                f"gradtx.{self.name}: update needs params=... (the curvature pairs are "
                "differences of params), got None"
            )
        check_structure(self.name, "updates", updates, "params", params)
        check_structure(self.name, "updates", updates, "state.params", state["params"])
        check_structure(self.name, "updates", updates, "state.updates", state["updates"])
        for key in ("diff_params_memory", "diff_updates_memory"):
            for u, mem in zip(
                jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(state[key])
            ):
                if jnp.shape(mem) != (self.memory_size, *jnp.shape(u)):
                    raise TransformError(
                        f"gradtx.{self.name}: state.{key} has a leaf of shape "
                        f"{jnp.shape(mem)} for updates of shape {jnp.shape(u)}; expected "
                        f"{(self.memory_size, *jnp.shape(u))} (was the state built for "
                        "other params or another memory_size?)"
                    )

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        self._check(updates, state, params)
        return _step(self, updates, state, params)


@jax.jit
def _step(tx: ScaleByLBFGS, updates: Any, state: State, params: Any) -> tuple[Any, State]:
    """One update (the rule in the module docstring), compiled once per configuration and
    shapes when called eagerly; inlined in a jitted step."""
    m = tx.memory_size
    k = state["count"]
    rho_mem = state["weights_memory"]
    dt = rho_mem.dtype
    w, g = tmap(_wide, params), tmap(_wide, updates)
    first = k == 0
    zero_if_first = lambda x: jnp.where(first, jnp.zeros_like(x), x)  # noqa: E731
    s = tmap(lambda a, b: zero_if_first(a - b.astype(a.dtype)), w, state["params"])
    y = tmap(lambda a, b: zero_if_first(a - b.astype(a.dtype)), g, state["updates"])
    ys = tree_vdot(y, s, dt)
    rho = jnp.where(ys == 0.0, jnp.zeros_like(ys), 1.0 / ys)
    newest = (k - 1) % m  # the slot of the pair made now (m − 1 at k = 0, left empty)
    put = lambda mem, x: mem.at[newest].set(x.astype(mem.dtype))  # noqa: E731
    s_mem = tmap(put, state["diff_params_memory"], s)
    y_mem = tmap(put, state["diff_updates_memory"], y)
    rho_mem = rho_mem.at[newest].set(rho)
    if tx.scale_init_precond:
        yy = tree_vdot(y, y, dt)
        gamma = jnp.where(yy > 0.0, ys / yy, jnp.ones_like(yy))
        g_norm = jnp.sqrt(tree_vdot(g, g, dt))
        gamma = jnp.where(first, jnp.minimum(1.0, 1.0 / jax.lax.stop_gradient(g_norm)), gamma)
    else:
        gamma = jnp.ones((), dt)
    direction = two_loop(g, s_mem, y_mem, rho_mem, gamma, k % m)
    out = tmap(lambda d, u: d.astype(u.dtype), direction, updates)
    return out, State(
        count=increment(k),
        params=tmap(lambda a, b: a.astype(b.dtype), w, state["params"]),
        updates=tmap(lambda a, b: a.astype(b.dtype), g, state["updates"]),
        diff_params_memory=s_mem,
        diff_updates_memory=y_mem,
        weights_memory=rho_mem,
    )


def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True) -> ScaleByLBFGS:
    r"""Multiplies the updates by L-BFGS's inverse-Hessian estimate, as
    ``optax.scale_by_lbfgs`` (same arguments, order, defaults and state fields).

    With :math:`w_k` the params and :math:`g_k` the updates at update :math:`k`, the output is
    :math:`H_k g_k` where, over the last :math:`m` pairs :math:`s_j = w_{j+1} - w_j`,
    :math:`y_j = g_{j+1} - g_j`, :math:`\rho_j = 1/\langle y_j, s_j\rangle`,

    .. math::
        H_k = H_{k,k}, \qquad H_{k,k-m} = \gamma_k I, \qquad
        H_{k,j+1} = V_j^\top H_{k,j} V_j + \rho_j s_j s_j^\top, \qquad
        V_j = I - \rho_j y_j s_j^\top,

    with :math:`\gamma_k = \langle y_{k-1}, s_{k-1}\rangle / \langle y_{k-1}, y_{k-1}\rangle`
    (``scale_init_precond``; else 1) and :math:`\gamma_0 = \min(1, 1/\lVert g_0\rVert)`,
    computed by the two-loop recursion in :math:`O(m n)` (see :mod:`gradtx._stages.lbfgs`).
    The sign is not flipped: chain a negative step (``scale(-1.0)``) and a line search, as
    :func:`gradtx.lbfgs` does.

    Args:
      memory_size: :math:`m`, the number of pairs kept (int >= 1).
      scale_init_precond: whether :math:`H^0 = \gamma_k I` (else :math:`I`).

    Returns:
      A :class:`ScaleByLBFGS`; its state is ``State(count, params, updates,
      diff_params_memory, diff_updates_memory, weights_memory)``, optax's fields; the memory
      leaves stack :math:`m` arrays of the param's shape.

    Note:
      The state is kept in the params' compute dtype (at least float32; optax: the param
      dtype, float32 weights). As in optax, a pair with :math:`\langle y, s\rangle < 0` is kept
      (only :math:`\langle y, s\rangle = 0` gets :math:`\rho = 0`); a line search with the
      curvature condition (:func:`gradtx.scale_by_zoom_linesearch`) makes it positive.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_lbfgs(memory_size=5)
      >>> w = jnp.array([1.0, 2.0])
      >>> state = tx.init(w)
      >>> u, state = tx.update(jnp.array([3.0, 4.0]), state, w)  # γ₀ = 1/‖g‖ = 0.2
      >>> u.tolist(), state.diff_params_memory.shape
      ([0.6000000238418579, 0.800000011920929], (5, 2))

    References:
      Nocedal, `Updating quasi-Newton matrices with limited storage
      <https://doi.org/10.1090/S0025-5718-1980-0572855-7>`_, 1980; Liu & Nocedal, `On the
      limited memory BFGS method for large scale optimization
      <https://doi.org/10.1007/BF01589116>`_, 1989; Nocedal & Wright, *Numerical
      Optimization*, 2nd ed., Algorithms 7.4 and 7.5, 2006.
    """
    return ScaleByLBFGS(memory_size, scale_init_precond)
