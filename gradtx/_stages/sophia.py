r"""Sophia's knobs: an EMA direction divided by a clipped, per-parameter curvature.

:class:`SophiaScale` is Sophia's σ, read from ``nu``, an EMA of estimates of the Hessian's
diagonal; :class:`SophiaKnobs` runs the two knobs as :class:`~gradtx.Knobs` do and refreshes
``nu`` every ``update_interval`` steps from an estimator (:mod:`gradtx._stages.hessian`), a
transformation ``update(grads, state, params, **extra) -> (ĥ, state)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core import context as _context
from .._core.chain import as_inner
from .._core.context import Context
from .._core.knobs import Knobs, Scale
from .._core.numerics import compute_dtype
from .._core.state import State
from .._core.struct import hyper, resolve, static
from .._core.tree import TransformError, flatten, is_none, path_str
from .hessian import check_state

__all__ = ["SophiaScale", "SophiaKnobs", "check_real", "guard_keep"]


def check_real(owner: str, tree: Any) -> None:
    """Raises :class:`TransformError` naming the first complex leaf of ``tree``."""
    for path, leaf in flatten(tree)[0]:
        if leaf is not None and jnp.iscomplexobj(leaf):
            raise TransformError(
                f"gradtx.{owner}: at {path_str(path)}, complex parameters are not supported "
                f"(dtype {leaf.dtype})"
            )


def guard_keep() -> Any:
    """The flag of the innermost guard's ``keeping`` block being traced (``False`` on a step
    the guard skips; :mod:`gradtx._core.context`), or ``None`` outside one."""
    current = getattr(_context, "current_keep", None)
    return None if current is None else current()


class SophiaScale(Scale):
    r"""Sophia's σ: the curvature :math:`h` (kept in ``nu``) floored at ε, the ratio clipped.

    .. math::
        u = \operatorname{clip}\!\left(\frac{m}{\max(\gamma\, h,\ \epsilon)},\ -\rho,\ \rho\right)

    with ρ the ``clip_threshold`` (``None``: no clipping). ``nu`` is not changed here:
    :class:`SophiaKnobs` refreshes it, :math:`h \leftarrow \beta_2 h + (1-\beta_2)\hat h`, every
    ``update_interval`` steps, after the update of that step.

    References:
      Liu, Li, Hall, Liang and Ma, *Sophia: A Scalable Stochastic Second-order Optimizer for
      Language Model Pre-training*, ICLR 2024. https://arxiv.org/abs/2305.14342
    """

    elementwise = True

    slots = ("nu",)
    summary = (
        "σ = max(γ·h, ε), h = EMA of diagonal-Hessian estimates (every k steps); "
        "m/σ clipped to ±ρ (Sophia)"
    )
    b2: float = hyper(0.99, "unit")
    eps: float = hyper(1e-8, "nonnegative")
    gamma: float = hyper(0.01, "nonnegative")
    clip_threshold: float | None = hyper(1.0, "positive")

    def step(self, g, m, slots, param, ctx: Context):
        u = m / jnp.maximum(self.gamma * slots["nu"], self.eps)
        if self.clip_threshold is not None:
            u = jnp.clip(u, -self.clip_threshold, self.clip_threshold)
        return u, slots


class SophiaKnobs(Knobs):
    """:class:`~gradtx.Knobs` (an EMA direction, :class:`SophiaScale`) that also refresh the
    scale's ``nu`` from ``hessian_diagonal_fn`` when ``count % update_interval == 0``.

    State: ``count``, ``mu``, ``nu`` and ``hessian_fn_state`` (the estimator's), as optax's
    ``SophiaState``. The estimator's required ``update`` arguments (``obj_fn``) are this
    stage's ``requires``.

    Attributes:
      update_interval: k, steps between refreshes of ``nu`` (a static int >= 1).
      hessian_diagonal_fn: the estimator, a gradtx or optax transformation.
      verbose: print the win rate (the fraction of entries not clipped) every
        ``print_win_rate_every_n_steps`` steps.
    """

    name = "knobs"
    update_interval: int = static(10)
    hessian_diagonal_fn: Any = None
    verbose: bool = static(False)
    print_win_rate_every_n_steps: int = static(0)

    def __post_init__(self) -> None:
        if not isinstance(self.scale, SophiaScale):
            raise TypeError(f"gradtx.{self.name}: scale must be a SophiaScale knob")
        est = as_inner(self.name, self.hessian_diagonal_fn, "hessian_diagonal_fn")
        object.__setattr__(self, "hessian_diagonal_fn", est)
        k = self.update_interval
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"gradtx.{self.name}: update_interval must be an int >= 1, got {k!r}")
        n = self.print_win_rate_every_n_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 0 or (self.verbose and n < 1):
            raise ValueError(
                f"gradtx.{self.name}: print_win_rate_every_n_steps must be an int >= 0 (>= 1 "
                f"with verbose=True), got {n!r}"
            )
        super().__post_init__()

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(getattr(self.hessian_diagonal_fn, "requires", ()) or ())

    @property
    def needs_params(self) -> bool:  # type: ignore[override]
        return True  # the estimator evaluates the objective at them

    def init(self, params: Any) -> State:
        state = super().init(params)
        return State({**state, "hessian_fn_state": self.hessian_diagonal_fn.init(params)})

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_state(self.name, state, ("count", "mu", "nu", "hessian_fn_state"))
        check_real(self.name, updates)
        core = State({k: v for k, v in state.items() if k != "hessian_fn_state"})
        u, new = super().update(updates, core, params, **extra)
        step = state["count"]
        b2 = resolve(self.scale, step).b2
        est = self.hessian_diagonal_fn

        def ema(nu: Any, h: Any) -> Any:
            cdt = compute_dtype(jnp.result_type(nu))
            b = jnp.asarray(b2, cdt)
            return (b * nu.astype(cdt) + (1 - b) * h.astype(cdt)).astype(nu.dtype)

        def refresh(hs: Any, nu: Any) -> tuple[Any, Any]:
            h, hs = est.update(updates, hs, params, **extra)
            nu = jax.tree_util.tree_map(
                lambda n, x: n if n is None or x is None else ema(n, x), nu, h, is_leaf=is_none
            )
            return hs, nu

        hs, nu = state["hessian_fn_state"], new["nu"]
        if self.update_interval == 1:
            hs, nu = refresh(hs, nu)
        else:
            due = step % self.update_interval == 0
            hs, nu = jax.lax.cond(due, refresh, lambda a, b: (a, b), hs, nu)
        keep = guard_keep()
        if keep is not None:  # a skipped step: the refresh is undone too
            old = (state["hessian_fn_state"], state["nu"])
            hs, nu = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), (hs, nu), old)
        if self.verbose:
            self._report(u, step)
        return u, State({**new, "nu": nu, "hessian_fn_state": hs})

    def _report(self, u: Any, step: jax.Array) -> None:
        rho = getattr(self.scale, "clip_threshold", None)
        leaves = [x for x in jax.tree_util.tree_leaves(u) if x is not None]
        if rho is None or not leaves:
            return
        kept = sum(jnp.sum(jnp.abs(x) < rho) for x in leaves)
        rate = kept / sum(x.size for x in leaves)
        every = self.print_win_rate_every_n_steps
        say = lambda: jax.debug.print("gradtx.sophia: win rate {}", rate)  # noqa: E731
        jax.lax.cond((step + 1) % every == 0, say, lambda: None)

    def __repr__(self) -> str:
        return (
            f"SophiaKnobs(direction={self.direction!r}, scale={self.scale!r}, "
            f"update_interval={self.update_interval}, "
            f"hessian_diagonal_fn={self.hessian_diagonal_fn!r})"
        )
