r"""SOAP's step: Adam in the eigenbasis of Shampoo's preconditioners, run once per stack of
equal-shape leaves.

Each leaf is viewed as a matrix :math:`G \in \mathbb R^{m\times n}`: a 2-D leaf as it is, a leaf
of three or more dimensions as ``(∏ shape[:-1], shape[-1])`` (its last axis the output, as a
flax kernel and :func:`gradtx.muon`'s view), a 1-D leaf as ``(1, n)`` and a scalar as
``(1, 1)``. A side (rows: :math:`L`, columns: :math:`R`) is preconditioned when its size is
in ``(1, max_precond_dim]`` (columns of a 1-D leaf only with ``precondition_1d``); a side that
is not keeps the identity as its basis, so a leaf with neither is Adam. All leaves of one shape
and compute dtype run as one ``jax.vmap`` of the rule: one batched ``eigh``/QR per shape, not
one per leaf (on a packed tree, per stack of equal-shape leaves of each buffer,
:mod:`gradtx._core.pieces`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core.context import Context
from .._core.numerics import abs_sq, compute_dtype, one_minus_pow, safe_sqrt
from .._core.packed import flat_segments
from .._core.stage import Stage, increment
from .._core.state import State
from .._core.struct import hyper, resolve, static
from .._core.tree import TransformError, check_structure, flatten, path_str
from .orthogonalize import _gathered
from .sophia import check_real, guard_keep

__all__ = ["ScaleBySoap", "EIGENBASES"]

#: How the eigenbasis is refreshed: one power iteration and a QR decomposition (the paper's
#: default), or a full eigendecomposition.
EIGENBASES = ("qr", "eigh")

_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def _eigvecs(a: jax.Array) -> jax.Array:
    """The eigenvectors of the symmetric ``a``, by decreasing eigenvalue (as columns)."""
    return jnp.linalg.eigh(a)[1][:, ::-1]


def _dtype(owner: str, what: str, value: Any) -> Any:
    if value is None:
        return None
    try:
        dt = jnp.dtype(value)
    except TypeError:
        raise TypeError(f"gradtx.{owner}: {what} must be a dtype or None, got {value!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"gradtx.{owner}: {what} must be a real float dtype, got {dt}")
    return dt


class ScaleBySoap(Stage):
    r"""SOAP's update of one matrix :math:`G` (see the module docstring for the view).

    .. math::
        L_t = \beta_s L_{t-1} + (1-\beta_s)\, G_t G_t^{\mathsf T}, \qquad
        R_t = \beta_s R_{t-1} + (1-\beta_s)\, G_t^{\mathsf T} G_t

    At the first call (``count`` 0) only :math:`L, R` and their eigenbases
    :math:`Q_L, Q_R` (by decreasing eigenvalue) are computed and the update is 0. Then, at
    step :math:`t` (= ``count``):

    .. math::
        G'_t = Q_L^{\mathsf T} G_t Q_R, \quad
        M_t = \beta_1 M_{t-1} + (1-\beta_1) G'_t, \quad
        V_t = \beta_2 V_{t-1} + (1-\beta_2)\, G_t'^{\,2},

    .. math::
        u_t = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\;
        Q_L \frac{M_t}{\sqrt{V_t} + \epsilon} Q_R^{\mathsf T}

    (without the factor when ``correct_bias`` is off), and every ``precondition_frequency``
    steps, after the update, each preconditioned side refreshes its basis: with
    :math:`\pi` the order of decreasing :math:`\operatorname{diag}(Q^{\mathsf T} L_t Q)`,
    :math:`V_t` is permuted by :math:`\pi` along that side, :math:`Q \leftarrow
    \operatorname{QR}(L_t\, Q_{:,\pi})` (``"qr"``) or the eigenvectors of :math:`L_t`
    (``"eigh"``), and :math:`M_t` is rotated into the new basis,
    :math:`M_t \leftarrow Q_L'^{\mathsf T} (Q_L M_t Q_R^{\mathsf T}) Q_R'`.

    Slots: ``mu`` (:math:`M`) and ``nu`` (:math:`V`) in the rotated basis, shaped like the
    param; ``l``, ``r`` (:math:`L, R`) and ``q_l``, ``q_r`` (their bases), ``(m, m)`` and
    ``(n, n)``, or ``(0, 0)`` for a side not preconditioned.

    Attributes:
      b1: β1 of Adam's first moment.
      b2: β2 of Adam's second moment.
      shampoo_beta: :math:`\beta_s` of :math:`L, R`; ``None``: ``b2``.
      eps: ε, added to :math:`\sqrt{V_t}`.
      precondition_frequency: steps between refreshes of the bases (a static int >= 1).
      max_precond_dim: the largest side preconditioned.
      precondition_1d: precondition 1-D leaves (their one side, ``n × n``).
      correct_bias: apply the bias correction :math:`\sqrt{1-\beta_2^t}/(1-\beta_1^t)`.
      eigenbasis: ``"qr"`` (one power iteration and QR) or ``"eigh"``.
      mu_dtype: the dtype ``mu`` is stored in; ``None``: the param's dtype.
      precond_dtype: the dtype of ``l``, ``r``, ``q_l``, ``q_r``; ``None``: the param's
        compute dtype (float32 for bfloat16/float16 params).
    """

    name = "soap"
    needs_step = True
    slots = ("mu", "nu", "l", "r", "q_l", "q_r")
    b1: float = hyper(0.95, "unit")
    b2: float = hyper(0.95, "unit")
    shampoo_beta: float | None = hyper(None, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    precondition_frequency: int = static(10)
    max_precond_dim: int = static(10000)
    precondition_1d: bool = static(False)
    correct_bias: bool = static(True)
    eigenbasis: str = static("qr")
    mu_dtype: Any = static(None)
    precond_dtype: Any = static(None)

    def __post_init__(self) -> None:
        for what, low in (("precondition_frequency", 1), ("max_precond_dim", 1)):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"gradtx.{self.name}: {what} must be an int >= {low}, got {v!r}")
        for what in ("precondition_1d", "correct_bias"):
            if not isinstance(getattr(self, what), bool):
                raise TypeError(
                    f"gradtx.{self.name}: {what} must be a bool, got {getattr(self, what)!r}"
                )
        if self.eigenbasis not in EIGENBASES:
            raise ValueError(
                f"gradtx.{self.name}: eigenbasis must be one of {list(EIGENBASES)}, got "
                f"{self.eigenbasis!r}"
            )
        for what in ("mu_dtype", "precond_dtype"):
            object.__setattr__(self, what, _dtype(self.name, what, getattr(self, what)))
        super().__post_init__()

    def layout(self, shape: tuple[int, ...]) -> tuple[int, int, bool, bool]:
        """``(m, n, left side preconditioned, right side preconditioned)`` of a leaf."""
        if len(shape) >= 2:
            m, n, matrix = math.prod(shape[:-1]), shape[-1], True
        else:
            m, n, matrix = 1, math.prod(shape), False
        on = lambda d: 1 < d <= self.max_precond_dim  # noqa: E731
        right = (matrix or (self.precondition_1d and len(shape) == 1)) and on(n)
        return m, n, matrix and on(m), right

    def init_leaf(self, param: jax.Array) -> dict[str, jax.Array]:
        m, n, on_l, on_r = self.layout(jnp.shape(param))
        dt = jnp.result_type(param)
        pdt = self.precond_dtype or compute_dtype(dt)
        nu_dt = jnp.float32 if dt == jnp.float16 else dt  # g'² overflows float16 early
        sq = lambda d, on: jnp.zeros((d, d) if on else (0, 0), pdt)  # noqa: E731
        return {
            "mu": jnp.zeros_like(param, dtype=self.mu_dtype or dt),
            "nu": jnp.zeros_like(param, dtype=nu_dt),
            "l": sq(m, on_l),
            "r": sq(n, on_r),
            "q_l": sq(m, on_l),
            "q_r": sq(n, on_r),
        }

    # --- the rule for one matrix --------------------------------------------------------------
    def rule(self, g: jax.Array, s: dict, ctx: Context) -> tuple[jax.Array, dict]:
        """The update of one ``(m, n)`` matrix ``g``; ``mu``, ``nu`` in ``s`` are ``(m, n)``."""
        on_l, on_r = s["l"].shape[0] > 0, s["r"].shape[0] > 0
        bs = self.b2 if self.shampoo_beta is None else self.shampoo_beta
        big_l = bs * s["l"] + (1 - bs) * _dot(g, g.T) if on_l else s["l"]
        big_r = bs * s["r"] + (1 - bs) * _dot(g.T, g) if on_r else s["r"]

        def rot(x: jax.Array, ql: jax.Array, qr: jax.Array) -> jax.Array:  # Qₗᵀ x Qᵣ
            x = _dot(ql.T, x) if on_l else x
            return _dot(x, qr) if on_r else x

        def back(x: jax.Array, ql: jax.Array, qr: jax.Array) -> jax.Array:  # Qₗ x Qᵣᵀ
            x = _dot(ql, x) if on_l else x
            return _dot(x, qr.T) if on_r else x

        def side(a: jax.Array, q: jax.Array, nu: jax.Array, axis: int) -> tuple:
            est = jnp.sum(q * _dot(a, q), axis=0)  # diag(Qᵀ A Q)
            order = jnp.argsort(-est, stable=True)
            nu = jnp.take(nu, order, axis=axis)
            if self.eigenbasis == "eigh":
                return _eigvecs(a), nu
            return jnp.linalg.qr(_dot(a, q[:, order]))[0], nu

        def refresh(mu: jax.Array, nu: jax.Array, ql: jax.Array, qr: jax.Array) -> tuple:
            m_orig = back(mu, ql, qr)
            new_l, nu = side(big_l, ql, nu, 0) if on_l else (ql, nu)
            new_r, nu = side(big_r, qr, nu, 1) if on_r else (qr, nu)
            return rot(m_orig, new_l, new_r), nu, new_l, new_r

        def first() -> tuple:
            ql = _eigvecs(big_l) if on_l else s["q_l"]
            qr = _eigvecs(big_r) if on_r else s["q_r"]
            return jnp.zeros_like(g), s["mu"], s["nu"], ql, qr

        def later() -> tuple:
            ql, qr = s["q_l"], s["q_r"]
            gp = rot(g, ql, qr)
            mu = self.b1 * s["mu"] + (1 - self.b1) * gp
            nu = self.b2 * s["nu"] + abs_sq(jnp.sqrt(1 - self.b2) * gp)
            u = back(mu / (safe_sqrt(nu) + self.eps), ql, qr)
            if self.correct_bias:
                t = jnp.maximum(ctx.t - 1, 1)  # the step: count (the first call was 0)
                u = u * (jnp.sqrt(one_minus_pow(self.b2, t)) / one_minus_pow(self.b1, t))
            if on_l or on_r:
                due = ctx.step % self.precondition_frequency == 0
                keep = lambda: (mu, nu, ql, qr)  # noqa: E731
                mu, nu, ql, qr = jax.lax.cond(due, lambda: refresh(mu, nu, ql, qr), keep)
            return u, mu, nu, ql, qr

        u, mu, nu, ql, qr = jax.lax.cond(ctx.step == 0, first, later)
        return u, {"mu": mu, "nu": nu, "l": big_l, "r": big_r, "q_l": ql, "q_r": qr}

    def update_leaf(self, g, slots, param, ctx: Context):
        """One leaf (param-shaped ``g``, ``mu``, ``nu``): :meth:`rule` on its matrix view."""
        m, n, _, _ = self.layout(g.shape)
        view = {**slots, "mu": slots["mu"].reshape(m, n), "nu": slots["nu"].reshape(m, n)}
        u, new = self.rule(g.reshape(m, n), view, ctx)
        shape = g.shape
        return u.reshape(shape), {
            **new,
            "mu": new["mu"].reshape(shape),
            "nu": new["nu"].reshape(shape),
        }

    # --- the lifting: one vmapped rule per stack of equal shapes --------------------------------
    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        packed = flat_segments(updates) is not None
        if not isinstance(state, State) or packed or guard_keep() is not None:
            # packed: per stack too; inside a guard: the lifting keeps the state of skipped steps
            return super().update(updates, state, params, **extra)
        self._check_update_args(updates, state, params, extra)
        check_real(self.name, updates)
        if _concrete((self, updates, state, params)):  # an eager call: one compiled step
            return _compiled(self, updates, state, params)
        return self._stacked_update(updates, state, params, extra)

    def _stacked_update(self, updates: Any, state: State, params: Any, extra: dict) -> tuple:
        leaves, treedef = flatten(updates)
        slot_leaves: dict[str, list] = {}
        for s in self.slots:
            s_leaves, s_def = flatten(state[s])
            if s_def != treedef:
                check_structure(self.name, "updates", updates, f"state.{s}", state[s])
            slot_leaves[s] = [v for _, v in s_leaves]
        step = state["count"]
        hp = resolve(self, step)
        out = [g for _, g in leaves]
        new = {s: list(v) for s, v in slot_leaves.items()}
        stacks: dict[tuple, list[int]] = {}
        for i, (path, g) in enumerate(leaves):
            if g is None:
                continue
            slots = {s: slot_leaves[s][i] for s in self.slots}
            for s, v in slots.items():
                if v is None:
                    raise TransformError(
                        f"gradtx.{self.name}: state.{s} holds no state for {path_str(path)} "
                        "(was init given a different tree?)"
                    )
            self._check_slot_shapes(path, g, slots)
            stacks.setdefault((g.shape, compute_dtype(g.dtype)), []).append(i)
        params_shaped = ("mu", "nu")  # sharded like the param: replicated for the products
        for (_, cdt), members in stacks.items():
            hp_c = jax.tree_util.tree_map(lambda v, d=cdt: jnp.asarray(v, d), hp)
            ctx = Context(step, increment(step).astype(cdt), {}, extra)
            rule = lambda g, sl, h=hp_c, c=ctx: h.update_leaf(g, sl, None, c)  # noqa: E731
            g_in, specs, s_in = [], [], []
            for i in members:
                g, spec = _gathered(out[i].astype(cdt))
                g_in.append(g)
                specs.append(spec)
                s_in.append(
                    {
                        s: _gathered(slot_leaves[s][i].astype(cdt))[0]
                        if s in params_shaped
                        else slot_leaves[s][i].astype(cdt)
                        for s in self.slots
                    }
                )
            if len(members) == 1:
                u, ns = rule(g_in[0], s_in[0])
                us, nss = [u], [ns]
            else:
                stacked = {s: jnp.stack([x[s] for x in s_in]) for s in self.slots}
                u, ns = jax.vmap(rule)(jnp.stack(g_in), stacked)
                us = list(u)
                nss = [{s: ns[s][j] for s in self.slots} for j in range(len(members))]
            for i, spec, u_i, ns_i in zip(members, specs, us, nss):
                back = lambda x, sp=spec: x if sp is None else jax.sharding.reshard(x, sp)  # noqa: E731
                out[i] = back(u_i.astype(out[i].dtype))
                for s in self.slots:
                    v = ns_i[s].astype(slot_leaves[s][i].dtype)
                    new[s][i] = back(v) if s in params_shaped else v
        entries: dict[str, Any] = {"count": increment(step)}
        for s in self.slots:
            entries[s] = treedef.unflatten(new[s])
        return treedef.unflatten(out), State(entries)


def _concrete(tree: Any) -> bool:
    """Whether every leaf of ``tree`` is a concrete array or number (an eager call)."""
    leaves = jax.tree_util.tree_leaves(tree)
    ok = (jax.Array, np.ndarray, np.generic, float, int)
    return all(isinstance(x, ok) and not isinstance(x, jax.core.Tracer) for x in leaves)


@jax.jit
def _compiled(stage: ScaleBySoap, updates: Any, state: State, params: Any) -> tuple:
    """An eager update as one compiled program, cached by the stage's configuration and the
    shapes (op by op, the ``lax.cond`` of every stack would be traced and compiled anew)."""
    return stage._stacked_update(updates, state, params, {})
