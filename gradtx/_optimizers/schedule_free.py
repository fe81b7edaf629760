"""Schedule-free learning (Defazio et al. 2024): momentum replaced by interpolation and
averaging. The wrapper and its SGD and AdamW forms; the rule is in :func:`schedule_free`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .._core.chain import as_inner
from .._core.numerics import compute_dtype
from .._core.stage import increment, scalar_like
from .._core.state import State
from .._core.struct import hyper, is_schedule_like, static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError, check_structure, flatten, path_str
from .._scale.rms import RMSPropScale
from ..schedules._warmup import warmup_constant
from .builder import naming, optimizer
from .common import Schedule, decayed_weights

__all__ = ["schedule_free", "schedule_free_sgd", "schedule_free_adamw", "schedule_free_eval_params"]

_ENTRIES = ("b1", "weight_sum", "step_count", "max_lr", "base_optimizer_state", "z")


def _leaf_dtype(*xs: Any) -> Any:
    with jax.numpy_dtype_promotion("standard"):
        return compute_dtype(jnp.result_type(*(x.dtype for x in xs)))


class ScheduleFree(GradientTransformation):
    """What :func:`schedule_free` and its SGD/AdamW forms return; ``name`` (the function's)
    names it in errors and in a chain's state."""

    base_optimizer: Any
    learning_rate: Any = hyper(check="step_size")
    b1: float = hyper(0.9, "unit_closed")
    weight_lr_power: float = hyper(2.0, "nonnegative")
    state_dtype: Any = static(None)
    name: str = static("schedule_free")  # type: ignore[misc]  # per instance, not per class

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "base_optimizer", as_inner(self.name, self.base_optimizer, "base_optimizer")
        )
        dt = None if self.state_dtype is None else jnp.dtype(self.state_dtype)
        if dt is not None and not jnp.issubdtype(dt, jnp.inexact):
            raise TypeError(f"gradtx.{self.name}: state_dtype must be a floating dtype, got {dt}")
        object.__setattr__(self, "state_dtype", dt)
        super().__post_init__()
        if isinstance(self.b1, float) and self.b1 <= 0:  # x = (y - (1 - b1) z) / b1
            raise ValueError(f"gradtx.{self.name}: b1 must be > 0, got {self.b1!r}")

    def init(self, params: Any) -> State:
        # the scalars: float64 if a leaf computes in (complex) float64, else float32
        wide = any(
            p is not None and jnp.finfo(compute_dtype(p.dtype)).bits == 64
            for _, p in flatten(params)[0]
        )
        dt = jnp.float64 if wide else jnp.float32
        return State(
            b1=scalar_like(params, self.b1, dt),
            weight_sum=scalar_like(params, 0.0, dt),
            step_count=scalar_like(params, 1, jnp.int32),
            max_lr=scalar_like(params, 0.0, dt),
            base_optimizer_state=self.base_optimizer.init(params),
            z=jax.tree_util.tree_map(self._z0, params),  # a copy: both may be donated
        )

    def _z0(self, p: Any) -> Any:
        return jnp.array(p, self.state_dtype or jnp.result_type(p), copy=True)

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        if not isinstance(state, State) or any(e not in state for e in _ENTRIES):
            raise TransformError(
                f"gradtx.{self.name}: state is not this transformation's state (expected "
                f"entries {list(_ENTRIES)}, got {type(state).__name__})"
            )
        if params is None:
            raise TransformError(f"gradtx.{self.name}: update needs params=... (y_t), got None")
        check_structure(self.name, "updates", updates, "params", params)
        check_structure(self.name, "updates", updates, "state.z", state["z"])
        dt, lr = state["max_lr"].dtype, self.learning_rate
        lr = lr(state["step_count"]) if is_schedule_like(lr) else lr
        max_lr = jnp.maximum(state["max_lr"], jnp.asarray(lr).astype(dt))
        weight = max_lr ** jnp.asarray(self.weight_lr_power, dt)
        total = state["weight_sum"] + weight
        pos = total > 0  # c = 0 while the weights are 0 (η = 0); a NaN propagates
        ck = jnp.where(pos, weight / jnp.where(pos, total, 1), jnp.where(total == 0, 0, total))
        base_updates, base_state = self.base_optimizer.update(
            updates, state["base_optimizer_state"], params, **extra
        )
        check_structure(self.name, "updates", updates, "the base's updates", base_updates)
        leaves, treedef = flatten(updates)
        out: list[Any] = []
        new_z: list[Any] = []
        for (_, g), u, y, z in zip(
            leaves, *(treedef.flatten_up_to(t) for t in (base_updates, params, state["z"]))
        ):
            new_z.append(z)  # replaced below, unless there is no gradient here
            if g is None:
                out.append(None)
                continue
            cdt = _leaf_dtype(y, z)
            b_old, b_new, a_new, c = (
                jnp.asarray(v).astype(cdt) for v in (state["b1"], self.b1, 1 - self.b1, ck)
            )
            z_next = (z.astype(cdt) + u.astype(cdt)).astype(z.dtype)
            zc, zn, yc = z.astype(cdt), z_next.astype(cdt), y.astype(cdt)
            x = (1 - c) * ((yc - (1 - b_old) * zc) / b_old) + c * zn  # x_t from y_t, then x_{t+1}
            out.append((b_new * x + a_new * zn - yc).astype(g.dtype))
            new_z[-1] = z_next
        return treedef.unflatten(out), State(
            # the b1 that made y_{t+1}, derived from the old entry so that it is placed alike
            b1=jnp.zeros_like(state["b1"]) + jnp.asarray(self.b1).astype(dt),
            weight_sum=total,
            step_count=increment(state["step_count"]),
            max_lr=max_lr,
            base_optimizer_state=base_state,
            z=treedef.unflatten(new_z),
        )

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.base_optimizer, state["base_optimizer_state"])]

    def describe(self) -> dict[str, Any]:
        """The base optimizer's ``describe()`` (if it has one), g the schedule-free rule."""
        base = self.base_optimizer
        inner = base.describe() if callable(getattr(base, "describe", None)) else {}
        p = self.weight_lr_power
        g = f"schedule-free: y = (1 − b1)·z + b1·x, x = mean of z by max(η)^{p!r} (b1={self.b1!r})"
        if inner.get("g", "none").split(" ")[0] not in ("none", ""):
            g += f"; the base's own g too: {inner['g']}"
        return {**inner, "name": self.name, "g": g, "base": repr(base)}


def schedule_free(
    base_optimizer: Any,
    learning_rate: Schedule,
    b1: float = 0.9,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
) -> ScheduleFree:
    r"""Makes ``base_optimizer`` schedule-free, as ``optax.contrib.schedule_free``.

    Three sequences: :math:`z_t`, the base optimizer's iterate (the state's ``z``); :math:`x_t`,
    a weighted average of the :math:`z`'s, the params to *evaluate* at; :math:`y_t`, the params
    the loop holds and takes gradients at, from which :math:`x_t = (y_t - (1-\beta_1)
    z_t)/\beta_1` is recovered. From :math:`y_1 = z_1 = x_1` (the params given to ``init``),
    step :math:`t = 1, 2, \dots` with :math:`g_t = \nabla f(y_t)`:

    .. math::
        z_{t+1} = z_t + \Delta_t, \qquad \Delta_t = \text{base}(g_t)
        \quad (\text{SGD: } \Delta_t = -\eta_t g_t)

    .. math::
        \bar\eta_t = \max(\bar\eta_{t-1}, \eta(t)), \quad W_t = W_{t-1} + \bar\eta_t^{\,p},
        \quad c_{t+1} = \bar\eta_t^{\,p} / W_t \;\; (0 \text{ while } W_t = 0)

    .. math::
        x_{t+1} = (1 - c_{t+1})\, x_t + c_{t+1}\, z_{t+1}, \qquad
        y_{t+1} = (1-\beta_1)\, z_{t+1} + \beta_1\, x_{t+1}

    and the update is :math:`y_{t+1} - y_t`. :math:`p` = ``weight_lr_power`` (2: the paper's
    :math:`c_{t+1} = \gamma_t^2 / \sum_{i \le t} \gamma_i^2`), :math:`\eta(t)` is
    ``learning_rate`` at the 1-based step (``step_count``), :math:`\bar\eta` (``max_lr``) keeps
    the weights from falling during a warmup. Knobs: this is the g knob; the base, which should
    have no momentum, supplies σ and η, and η needs no decay. Evaluate the model at
    :func:`schedule_free_eval_params` (:math:`x_t`), not at the params.

    Args:
      base_optimizer: a gradtx or optax transformation without momentum (``gradtx.sgd(η)``,
        ``gradtx.adam(η, b1=0.0)``).
      learning_rate: η for the weights (a float or a schedule), the base's (warmup, no decay).
      b1: :math:`\beta_1` in (0, 1], the interpolation between :math:`z` and :math:`x`.
      weight_lr_power: :math:`p` >= 0.
      state_dtype: the dtype of ``z``; ``None``: each param's.

    Returns:
      A :class:`ScheduleFree`; its state is ``State(b1, weight_sum, step_count, max_lr,
      base_optimizer_state, z)``, optax's fields.

    Warning:
      As in optax, η(t) is read at the 1-based ``step_count`` and a base's schedule at its
      0-based count: with a warmup, step t is weighted by η(t) and moves z by η(t − 1). Unlike
      optax: the scalars are float32 (float64 for float64 params), not the lowest param dtype;
      everything is computed in at least float32 (optax rounds (1 − b1)·z to a bfloat16
      ``state_dtype``) and returned in each param's dtype; x_t is recovered with the state's
      ``b1`` (the one that made y_t), so changing ``b1`` mid-run stays exact; ``weight_lr_power``
      must be >= 0.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.schedule_free(gradtx.sgd(0.5), learning_rate=0.5)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> u, state = tx.update({"w": params["w"]}, tx.init(params), params)
      >>> gradtx.apply_updates(params, u)["w"].tolist()  # y = 0.1·z + 0.9·x, x = z = 0.5·w
      [0.5, -1.0]

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, *The Road Less Scheduled*,
      NeurIPS 2024. https://arxiv.org/abs/2405.15682
    """
    return ScheduleFree(base_optimizer, learning_rate, b1, weight_lr_power, state_dtype)


def _warmed(name: str, learning_rate: Any, warmup_steps: Any) -> Any:
    """optax's warmup: linear from 0 at step 0 to ``learning_rate`` at ``warmup_steps``."""
    if warmup_steps is None:
        return learning_rate
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"gradtx.{name}: warmup_steps must be an int >= 1, got {warmup_steps!r}")
    if is_schedule_like(learning_rate):
        msg = "learning_rate must be a number when warmup_steps is given, got a schedule"
        raise TypeError(f"gradtx.{name}: {msg}")
    return warmup_constant(0.0, learning_rate, warmup_steps)


def schedule_free_sgd(
    learning_rate: float = 1.0,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    weight_decay: float | None = None,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
) -> ScheduleFree:
    r"""Schedule-free SGD, as ``optax.contrib.schedule_free_sgd``.

    :math:`\Delta_t = -\eta_t (g_t + \lambda y_t)` in :func:`schedule_free`'s rule, η linear
    from 0 to ``learning_rate`` over ``warmup_steps`` (if given), then constant. Knobs: g =
    schedule-free, σ = 1, before = weight decay λ (coupled: times η, as PyTorch), η.
    ``b1``, ``weight_lr_power`` and ``state_dtype`` are as in :func:`schedule_free`.

    Args:
      learning_rate: the (peak) step size η.
      warmup_steps: the length of the linear warmup, an int >= 1, or ``None`` for none.
      weight_decay: λ, added to the gradient; ``None``: no decay stage.

    Returns:
      A :class:`ScheduleFree` around an SGD :class:`~gradtx.Optimizer`.

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> f = lambda w: jnp.sum(w**2)
      >>> tx, w = gradtx.schedule_free_sgd(0.4), jnp.array([1.0, 2.0, 3.0])
      >>> state = tx.init(w)
      >>> for _ in range(10):
      ...     u, state = tx.update(jax.grad(f)(w), state, w)
      ...     w = gradtx.apply_updates(w, u)
      >>> bool(f(gradtx.schedule_free_eval_params(state, w)) < 1e-2)
      True

    References:
      Defazio et al., *The Road Less Scheduled*, NeurIPS 2024. https://arxiv.org/abs/2405.15682
    """
    name = "schedule_free_sgd"
    with naming(name):
        lr = _warmed(name, learning_rate, warmup_steps)
        before = () if weight_decay is None else decayed_weights(weight_decay, None)
        base = optimizer(None, None, lr, before=before, name=name)
        return ScheduleFree(base, lr, b1, weight_lr_power, state_dtype, name=name)


def schedule_free_adamw(
    learning_rate: float = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
) -> ScheduleFree:
    r"""Schedule-free AdamW, as ``optax.contrib.schedule_free_adamw``.

    :func:`schedule_free`'s rule with Adam without momentum, and decoupled weight decay:

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        \Delta_t = -\eta_t \Bigl(\frac{g_t}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}
        + \lambda\, y_t\Bigr)

    Knobs: g = schedule-free, σ = :class:`~gradtx.RMSPropScale` with bias correction, after =
    decoupled weight decay λ, η. ``learning_rate`` and ``warmup_steps`` are as in
    :func:`schedule_free_sgd`; ``b1`` (the interpolation, not a moment's decay),
    ``weight_lr_power`` and ``state_dtype`` as in :func:`schedule_free`.

    Args:
      b2: the decay of the second moment, in [0, 1).
      eps: added outside the root.
      weight_decay: λ, multiplied by η.

    Returns:
      A :class:`ScheduleFree`; its ``base_optimizer_state.knobs`` holds ``count`` and ``nu``.

    Note:
      This is optax's form. The paper's Algorithm 1 puts the bias correction into the step,
      :math:`\gamma_t = \gamma\sqrt{1-\beta_2^t}`, so into the averaging weights too, and adds
      ε to :math:`\sqrt{v_t}`: ``schedule_free(base, γ)`` with the base's η being γ one step
      ahead (its count is 0-based) is that form exactly.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.schedule_free_adamw(1e-2, warmup_steps=100, weight_decay=1e-4)
      >>> sorted(tx.init({"w": jnp.ones(3)}).base_optimizer_state.knobs)
      ['count', 'nu']

    References:
      Defazio et al., *The Road Less Scheduled*, NeurIPS 2024. https://arxiv.org/abs/2405.15682
    """
    name = "schedule_free_adamw"
    with naming(name, decay="b2"):
        lr = _warmed(name, learning_rate, warmup_steps)
        scale = RMSPropScale(b2, eps, 0.0, bias_correction=True)
        base = optimizer(None, scale, lr, after=decayed_weights(weight_decay, None), name=name)
        return ScheduleFree(base, lr, b1, weight_lr_power, state_dtype, name=name)


def _find(state: Any, found: list[Any]) -> None:
    """Appends the schedule-free states in ``state`` (gradtx's, or optax's named tuple)."""
    names = list(state) if isinstance(state, State) else getattr(state, "_fields", None)
    if isinstance(names, (list, tuple)) and all(e in names for e in _ENTRIES):
        found.append(state)
    elif isinstance(state, Mapping):
        for v in state.values():
            _find(v, found)
    elif isinstance(state, (tuple, list)):
        for v in state:
            _find(v, found)


def schedule_free_eval_params(state: Any, params: Any) -> Any:
    r"""The params to evaluate at, :math:`x_t = (y_t - (1-\beta_1) z_t)/\beta_1`.

    ``state`` is the state of :func:`schedule_free` (or its sgd/adamw forms, gradtx's or
    optax's) or of anything holding one: a chain, ``masked``, a partition, ``MultiSteps``, an
    optax chain. Each schedule-free state gives the leaves its ``z`` holds (one per partition
    group, say); the other leaves are returned as they are.

    Args:
      state: the optimizer state.
      params: the params :math:`y_t` of the loop (the same step as ``state``).

    Returns:
      :math:`x_t`, with the structure and dtypes of ``params``.

    Raises:
      ValueError: if ``state`` holds no schedule-free state; :class:`~gradtx.TransformError`
        if ``params`` does not match a state's ``z`` or two states hold the same leaf.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.schedule_free_sgd(0.5))
      >>> params = {"w": jnp.array([1.0])}
      >>> u, state = tx.update({"w": jnp.array([1.0])}, tx.init(params), params)
      >>> params = gradtx.apply_updates(params, u)  # y = 0.1·z + 0.9·x with z = x = 0.5
      >>> gradtx.schedule_free_eval_params(state, params)["w"].tolist()
      [0.5]
    """
    name = "schedule_free_eval_params"
    found: list[Any] = []
    _find(state, found)
    if not found:
        raise ValueError(
            f"gradtx.{name}: state holds no schedule-free state (entries {', '.join(_ENTRIES)})"
        )
    leaves, treedef = flatten(params)
    out = [y for _, y in leaves]
    owner: list[int | None] = [None] * len(out)
    for k, s in enumerate(found):
        b1, z = (s[e] if isinstance(s, Mapping) else getattr(s, e) for e in ("b1", "z"))
        z_leaves, z_def = flatten(z)
        if z_def != treedef:
            check_structure(name, "params", params, "state.z", z)  # raises, naming the key
        for i, ((path, y), (_, zi)) in enumerate(zip(leaves, z_leaves)):
            if zi is None or y is None:
                continue
            if owner[i] is not None or jnp.shape(zi) != jnp.shape(y):
                why = f"two schedule-free states (of {owner[i]} and {k}) hold it"
                if owner[i] is None:
                    why = f"state.z has shape {jnp.shape(zi)}, params {jnp.shape(y)}"
                raise TransformError(f"gradtx.{name}: at {path_str(path)}, {why}")
            owner[i] = k
            cdt = _leaf_dtype(y, zi)
            b = jnp.asarray(b1).astype(cdt)
            out[i] = ((y.astype(cdt) - (1 - b) * zi.astype(cdt)) / b).astype(y.dtype)
    return treedef.unflatten(out)
