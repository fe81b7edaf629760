"""Distance over gradients: step sizes from how far the params have moved from where they
started, over the gradients seen so far. DoG and DoWG with one step for the whole tree
(``optax.contrib.scale_by_dog``/``scale_by_dowg``), layer-wise DoG with one step per array
(``optax.scale_by_distance_over_gradients``).

In every rule the distance is measured at the params the update is given (``x_t``, before
this update is applied), ``‖x_0 − x_0‖ = 0`` at the first step, and the step multiplies the
gradient: chain ``scale_by_learning_rate`` (or use :func:`gradtx.dog`) to descend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._core.context import Context
from .._core.numerics import abs_sq, compute_dtype, safe_sqrt
from .._core.placement import follow, place_like, scalar_like
from .._core.stage import Stage
from .._core.state import State
from .._core.struct import has_schedule, hyper, static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError, check_float_leaves, check_structure
from .clipping import global_norm
from .linesearch import scalar_dtype, scaled, tmap, tree_vdot

__all__ = [
    "ScaleByDog",
    "ScaleByDowg",
    "ScaleByDistanceOverGradients",
    "scale_by_dog",
    "scale_by_dowg",
    "scale_by_distance_over_gradients",
    "check_global_update",
    "copy_tree",
    "distance",
]

_INIT_STEPS = ("distance", "learning_rate", "heuristic")


def check_global_update(
    owner: str, entries: tuple[str, ...], updates: Any, state: Any, params: Any, ref: str
) -> None:
    """The checks of ``update``'s arguments for a transformation with tree-wide state:
    ``state`` is a :class:`State` with ``entries``, the updates are floating, ``params`` is
    given and has the structure of ``updates`` and of ``state[ref]`` (a params-shaped entry)."""
    if not isinstance(state, State) or any(e not in state for e in entries):
        got = list(state) if isinstance(state, Mapping) else type(state).__name__
        raise TransformError(
            f"gradtx.{owner}: state is not this transformation's state (expected entries "
            f"{list(entries)}, got {got})"
        )
    check_float_leaves(owner, "updates", updates)
    if params is None:
        raise TransformError(f"gradtx.{owner}: update needs params=..., got None")
    check_structure(owner, "updates", updates, "params", params)
    check_structure(owner, "updates", updates, f"state.{ref}", state[ref])


def no_schedules(obj: Any) -> None:
    """Raises if a hyperparameter of ``obj`` is a schedule (its state keeps no step count)."""
    if has_schedule(obj):
        raise TypeError(
            f"gradtx.{obj.name}: its hyperparameters cannot be schedules (it keeps no step "
            "count); schedule the learning rate that follows it instead"
        )


def copy_tree(params: Any, dtype: Any = None) -> Any:
    """A copy of ``params`` (``dtype``: each leaf's own), placed as a step returns it; a copy
    so that params and state may both be donated."""
    return tmap(lambda p: follow(p, jnp.array(p, dtype or p.dtype, copy=True)), params)


def distance(params: Any, start: Any) -> jax.Array:
    r""":math:`\lVert x - x_0\rVert_2` over the whole tree, each difference in its compute dtype."""

    def diff(p: jax.Array, p0: jax.Array) -> jax.Array:
        cdt = compute_dtype(p.dtype)
        return p.astype(cdt) - p0.astype(cdt)

    return global_norm(tmap(diff, params, start))


class _TreeStep(GradientTransformation):
    """What DoG and DoWG share: one step for the whole tree from ``‖x_t − x_0‖`` and
    ``‖g_t‖²``, with ``init_params`` (:math:`x_0`) and scalars in the state."""

    _ENTRIES: ClassVar[tuple[str, ...]] = ()
    _ETA: ClassVar[str] = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        no_schedules(self)

    def knob_text(self) -> dict[str, str]:
        return {"g": "none (the gradient)", "sigma": "none (σ = 1)", "eta": self._ETA}

    def start(self, params: Any, dt: Any) -> dict[str, Any]:
        """The state entries at ``init`` (scalars in ``dt``)."""
        raise NotImplementedError

    def rule(
        self, state: State, dist: jax.Array, g_sq: jax.Array
    ) -> tuple[jax.Array, dict[str, Any]]:
        """The step and the changed entries, from ``‖x_t − x_0‖`` and ``‖g_t‖²``."""
        raise NotImplementedError

    def init(self, params: Any) -> State:
        check_float_leaves(self.name, "params", params)
        return State(self.start(params, scalar_dtype(params)))

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_global_update(self.name, self._ENTRIES, updates, state, params, "init_params")
        dt = state[self._ENTRIES[-1]].dtype
        dist = distance(params, state["init_params"]).astype(dt)
        step, changed = self.rule(state, dist, tree_vdot(updates, updates, dt))
        return scaled(step, updates), state.replace(**changed)


class ScaleByDog(_TreeStep):
    r"""What :func:`scale_by_dog` returns: DoG's step for the whole tree.

    .. math::
        \bar r_t = \max(\bar r_{t-1}, \lVert x_t - x_0\rVert), \quad
        G_t = G_{t-1} + \lVert g_t\rVert^2, \quad
        u_t = \frac{\bar r_t}{\sqrt{G_t + \epsilon}}\, g_t

    with :math:`\bar r_0` from ``init_step`` (see :func:`scale_by_dog`). State (optax's
    fields): ``is_init_step`` (bool), ``init_params`` (:math:`x_0`, a copy in the params'
    dtypes), ``max_dist`` (:math:`\bar r`), ``sum_sq_norm_grads`` (:math:`G`); scalars in
    float32 (float64 for float64 params).
    """

    name = "scale_by_dog"
    init_step_type: str = static("heuristic")
    init_step_value: float = hyper(1e-6, "nonnegative")
    eps: float = hyper(1e-8, "nonnegative")

    _ENTRIES = ("is_init_step", "init_params", "max_dist", "sum_sq_norm_grads")
    _ETA = "r̄_t/√(G_t + ε): r̄_t the largest ‖x_s − x_0‖ so far, G_t = Σ‖g_s‖² (DoG)"

    def __post_init__(self) -> None:
        if self.init_step_type not in _INIT_STEPS:
            raise ValueError(
                f"gradtx.{self.name}: init_step must be (tag, value) with tag one of "
                f"{list(_INIT_STEPS)}, got tag {self.init_step_type!r}"
            )
        super().__post_init__()

    def start(self, params: Any, dt: Any) -> dict[str, Any]:
        value = jnp.asarray(self.init_step_value, dt)
        if self.init_step_type == "distance":
            r0 = value
        elif self.init_step_type == "heuristic":
            r0 = value * (1 + global_norm(params).astype(dt))
        else:
            r0 = jnp.zeros((), dt)
        return {
            "is_init_step": scalar_like(params, True, jnp.bool_),
            "init_params": copy_tree(params),
            "max_dist": place_like(params, r0),
            "sum_sq_norm_grads": scalar_like(params, 0.0, dt),
        }

    def rule(self, state: State, dist: jax.Array, g_sq: jax.Array) -> tuple:
        dt = dist.dtype
        max_dist = jnp.maximum(state["max_dist"], dist)
        g_sq = state["sum_sq_norm_grads"] + g_sq
        step = max_dist / jnp.sqrt(g_sq + jnp.asarray(self.eps, dt))
        if self.init_step_type == "learning_rate":
            step = jnp.where(state["is_init_step"], jnp.asarray(self.init_step_value, dt), step)
        first = jnp.zeros_like(state["is_init_step"])
        return step, {"is_init_step": first, "max_dist": max_dist, "sum_sq_norm_grads": g_sq}


class ScaleByDowg(_TreeStep):
    r"""What :func:`scale_by_dowg` returns: DoWG's step for the whole tree.

    .. math::
        \bar r_t^2 = \max(\bar r_{t-1}^2, \lVert x_t - x_0\rVert^2), \quad
        v_t = v_{t-1} + \bar r_t^2 \lVert g_t\rVert^2, \quad
        u_t = \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon}\, g_t

    with :math:`\bar r_0^2` = ``init_estim_sq_dist`` (``eps`` when ``None``). State (optax's
    fields): ``init_params``, ``weighted_sq_norm_grads`` (:math:`v`), ``estim_sq_dist``
    (:math:`\bar r^2`); scalars in float32 (float64 for float64 params).
    """

    name = "scale_by_dowg"
    init_estim_sq_dist: float | None = hyper(None, "nonnegative")
    eps: float = hyper(1e-4, "nonnegative")

    _ENTRIES = ("init_params", "weighted_sq_norm_grads", "estim_sq_dist")
    _ETA = "r̄_t²/(√v_t + ε): r̄_t the largest ‖x_s − x_0‖ so far, v_t = Σ r̄_s²‖g_s‖² (DoWG)"

    def start(self, params: Any, dt: Any) -> dict[str, Any]:
        r2 = self.eps if self.init_estim_sq_dist is None else self.init_estim_sq_dist
        return {
            "init_params": copy_tree(params),
            "weighted_sq_norm_grads": scalar_like(params, 0.0, dt),
            "estim_sq_dist": place_like(params, jnp.asarray(r2, dt)),
        }

    def rule(self, state: State, dist: jax.Array, g_sq: jax.Array) -> tuple:
        r2 = jnp.maximum(state["estim_sq_dist"], dist * dist)
        v = state["weighted_sq_norm_grads"] + r2 * g_sq
        step = r2 / (safe_sqrt(v) + jnp.asarray(self.eps, dist.dtype))
        return step, {"weighted_sq_norm_grads": v, "estim_sq_dist": r2}


class ScaleByDistanceOverGradients(Stage):
    r"""What :func:`scale_by_distance_over_gradients` returns: layer-wise DoG (L-DoG), one
    step per array.

    For each array (layer) :math:`\ell`, with :math:`x^\ell_t` its params before the update:

    .. math::
        \bar r^\ell_t = \max(\bar r^\ell_{t-1}, \lVert x^\ell_t - x^\ell_0\rVert), \quad
        G^\ell_t = G^\ell_{t-1} + \lVert g^\ell_t\rVert^2, \quad
        u^\ell_t = s\,\frac{\bar r^\ell_t}{\sqrt{G^\ell_t + \epsilon}}\, g^\ell_t

    with :math:`\bar r^\ell_0 = r_\epsilon (1 + \lVert x^\ell_0\rVert)` (``reps_rel``) and
    :math:`s` = ``global_scale``. State per array: ``max_dist`` and ``grad_sum_of_squares``
    (scalars in the param's compute dtype, float32 or wider) and ``init_params``
    (:math:`x^\ell_0` in ``param_dtype``; ``None``: the param's dtype; for complex params its
    complex counterpart, where optax's cast drops the imaginary part).

    The same rule as ``optax.scale_by_distance_over_gradients``, which keeps
    ``grad_sum_of_squares`` with shape ``(1,)`` (so a scalar param's update comes back with
    shape ``(1,)`` there) and casts float64 params' ``init_params`` to its default float32.
    """

    name = "scale_by_distance_over_gradients"
    needs_params = True
    slots = ("max_dist", "grad_sum_of_squares", "init_params")
    reps_rel: float = hyper(1e-6, "nonnegative")
    eps: float = hyper(1e-8, "nonnegative")
    param_dtype: Any = static(jnp.float32)
    global_scale: float = hyper(1.0, "any")

    def __post_init__(self) -> None:
        if self.param_dtype is not None:
            dt = jnp.dtype(self.param_dtype)
            if not jnp.issubdtype(dt, jnp.inexact):
                raise TypeError(
                    f"gradtx.{self.name}: param_dtype must be a floating dtype or None, got {dt}"
                )
            object.__setattr__(self, "param_dtype", dt)
        super().__post_init__()

    def _store_dtype(self, dtype: Any) -> Any:
        """``param_dtype`` (the param's dtype if ``None``); complex for complex params."""
        store = self.param_dtype or dtype
        if jnp.issubdtype(dtype, jnp.complexfloating) and not jnp.issubdtype(
            store, jnp.complexfloating
        ):
            with jax.numpy_dtype_promotion("standard"):
                return jnp.promote_types(store, jnp.complex64)
        return store

    def init_leaf(self, param: jax.Array) -> dict[str, jax.Array]:
        cdt = compute_dtype(param.dtype)
        norm = safe_sqrt(jnp.sum(jnp.real(abs_sq(param.astype(cdt)))))
        reps = jnp.asarray(self.reps_rel, norm.dtype)
        return {
            "max_dist": (reps * (1 + norm)).astype(cdt),
            "grad_sum_of_squares": jnp.zeros((), cdt),
            "init_params": jnp.array(param, self._store_dtype(param.dtype), copy=True),
        }

    def update_leaf(self, g, slots, param, ctx: Context):
        diff = param - slots["init_params"]
        dist = safe_sqrt(jnp.sum(jnp.real(abs_sq(diff))))
        max_dist = jnp.maximum(jnp.real(slots["max_dist"]), dist)
        g_sq = jnp.real(slots["grad_sum_of_squares"]) + jnp.sum(jnp.real(abs_sq(g)))
        step = jnp.real(self.global_scale) * max_dist / jnp.sqrt(g_sq + jnp.real(self.eps))
        out = {
            "max_dist": max_dist.astype(g.dtype),
            "grad_sum_of_squares": g_sq.astype(g.dtype),
            "init_params": slots["init_params"],
        }
        return step.astype(g.dtype) * g, out


def scale_by_dog(init_step: tuple[str, float], eps: float = 1e-8) -> ScaleByDog:
    r"""Scales the updates by DoG's step size, one for the whole tree
    (``optax.contrib.scale_by_dog``, same arguments; see :class:`ScaleByDog` for the rule).

    ``update`` needs ``params``; ``init`` needs the real params when ``init_step`` is
    ``"heuristic"``.

    Args:
      init_step: ``(tag, value)``: ``("distance", r)`` sets :math:`\bar r_0 = r`;
        ``("heuristic", α)`` sets :math:`\bar r_0 = α(1 + \lVert x_0\rVert)` (the paper's
        suggestion: α = 1e-6, 1e-4 with batch normalisation); ``("learning_rate", η_0)`` takes
        the step :math:`η_0` at the first update and :math:`\bar r_0 = 0`.
      eps: ε added to :math:`G_t` under the root.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_dog(("distance", 0.5))
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
      >>> [round(x, 4) for x in u["w"].tolist()]  # 0.5/√25 · g
      [0.3, 0.4]

    References:
      Ivgi, Hinder & Carmon, *DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
      Schedule*, ICML 2023. https://arxiv.org/abs/2302.12022
    """
    tag, value = init_step
    return ScaleByDog(tag, value, eps)


def scale_by_dowg(init_estim_sq_dist: float | None = None, eps: float = 1e-4) -> ScaleByDowg:
    r"""Scales the updates by DoWG's step size, one for the whole tree
    (``optax.contrib.scale_by_dowg``, same arguments; see :class:`ScaleByDowg` for the rule).

    Args:
      init_estim_sq_dist: :math:`\bar r_0^2`, a guess of the squared distance to a solution;
        ``None``: ``eps``.
      eps: ε added to :math:`\sqrt{v_t}`.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_dowg(0.25, eps=0.0)
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
      >>> [round(x, 4) for x in u["w"].tolist()]  # 0.25/(0.5·5) · g
      [0.3, 0.4]

    References:
      Khaled, Mishchenko & Jin, *DoWG Unleashed: An Efficient Universal Parameter-Free
      Gradient Descent Method*, NeurIPS 2023. https://arxiv.org/abs/2305.16284
    """
    return ScaleByDowg(init_estim_sq_dist, eps)


def scale_by_distance_over_gradients(
    reps_rel: float = 1e-6,
    eps: float = 1e-8,
    param_dtype: Any = jnp.float32,
    global_scale: float = 1.0,
) -> ScaleByDistanceOverGradients:
    r"""Layer-wise DoG: scales each array by its own distance over gradients
    (``optax.scale_by_distance_over_gradients``, same arguments; see
    :class:`ScaleByDistanceOverGradients` for the rule). ``update`` needs ``params``.

    Args:
      reps_rel: :math:`r_\epsilon`, the initial distance relative to :math:`1 + \lVert
        x_0\rVert` (the authors: 1e-4 with batch normalisation, 1e-6 otherwise).
      eps: ε added to :math:`G_t` under the root.
      param_dtype: the dtype ``init_params`` is stored in (``None``: the param's).
      global_scale: :math:`s`, multiplying every step (``-1.0`` descends).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_distance_over_gradients(reps_rel=0.1, eps=0.0, global_scale=-1.0)
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> u, _ = tx.update({"w": jnp.array([0.6, 0.8])}, tx.init(params), params)
      >>> [round(x, 4) for x in u["w"].tolist()]  # −0.1·(1 + ‖x₀‖)/‖g‖ · g, ‖x₀‖ = 5, ‖g‖ = 1
      [-0.36, -0.48]

    References:
      Ivgi, Hinder & Carmon, *DoG is SGD's Best Friend*, ICML 2023 (L-DoG).
      https://arxiv.org/abs/2302.12022
    """
    return ScaleByDistanceOverGradients(reps_rel, eps, param_dtype, global_scale)
