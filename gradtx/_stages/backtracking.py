"""The backtracking line search (Armijo's sufficient decrease), as
``optax.scale_by_backtracking_linesearch``; the protocol it shares with the zoom search is in
:mod:`gradtx._stages.linesearch`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.state import State
from .._core.struct import hyper, static
from .linesearch import (
    Linesearch,
    along,
    count_arg,
    report_failure,
    start_state,
    tmap,
    value_and_grad,
    zeros,
)

__all__ = ["ScaleByBacktrackingLinesearch", "scale_by_backtracking_linesearch"]


class ScaleByBacktrackingLinesearch(Linesearch):
    """What :func:`scale_by_backtracking_linesearch` returns; see it for the rule."""

    name = "scale_by_backtracking_linesearch"
    max_backtracking_steps: int = static()
    slope_rtol: float = hyper(1e-4, "nonnegative")
    decrease_factor: float = hyper(0.8, "positive")
    increase_factor: float = hyper(1.5, "positive_or_inf")
    max_learning_rate: float = hyper(1.0, "positive")
    atol: float = hyper(0.0, "nonnegative")
    rtol: float = hyper(0.0, "nonnegative")
    store_grad: bool = static(False)
    verbose: bool = static(False)

    def __post_init__(self) -> None:
        n = count_arg(self.name, "max_backtracking_steps", self.max_backtracking_steps, 0)
        object.__setattr__(self, "max_backtracking_steps", n)
        super().__post_init__()
        if isinstance(self.decrease_factor, float) and self.decrease_factor >= 1.0:
            raise ValueError(
                f"gradtx.{self.name}: decrease_factor must be in (0, 1), got "
                f"{self.decrease_factor!r}"
            )

    def init(self, params: Any) -> State:
        grad = tmap(zeros, params) if self.store_grad else None
        return start_state(self.name, params, grad, ("decrease_error",))

    def search(
        self, f: Any, updates: Any, state: State, params: Any, at: tuple
    ) -> tuple[Any, State]:
        """The search (the rule in :func:`scale_by_backtracking_linesearch`)."""
        value, grad, slope, dt = at
        c = lambda x: jnp.asarray(x, dt)  # noqa: E731
        atol, inf = c(self.atol), c(jnp.inf)

        def error(lr: jax.Array, new_value: jax.Array) -> jax.Array:
            e = new_value - (1.0 + c(self.rtol)) * value - lr * c(self.slope_rtol) * slope
            return jnp.maximum(jnp.where(jnp.isnan(e), inf, e), 0.0)

        def more(s: tuple) -> jax.Array:
            return (~(s[2] <= atol)) & (s[3] <= self.max_backtracking_steps)

        def body(s: tuple) -> tuple:
            lr, _, _, it = s
            lr = jnp.where(it > 0, c(self.decrease_factor) * lr, lr)
            new_value = jnp.asarray(f(along(params, lr, updates)[1])).astype(dt)
            return lr, new_value, error(lr, new_value), it + 1

        lr0 = jnp.minimum(
            c(self.increase_factor) * state["learning_rate"], c(self.max_learning_rate)
        )
        zero = jnp.zeros((), jnp.int32)
        lr, new_value, err, it = jax.lax.while_loop(more, body, (lr0, value, inf, zero))
        if self.verbose:
            report_failure(self.name, err > atol, value=value, slope=slope, stepsize=lr, err=err)
        lr = jnp.where(jnp.isinf(err), jnp.zeros_like(lr), lr)  # no finite step: none at all
        step, moved = along(params, lr, updates)
        new_grad = value_and_grad(f, moved, dt)[1] if self.store_grad else None
        info = State(num_linesearch_steps=it, decrease_error=err)
        return step, State(learning_rate=lr, value=new_value, grad=new_grad, info=info)


def scale_by_backtracking_linesearch(
    max_backtracking_steps: int,
    slope_rtol: float = 1e-4,
    decrease_factor: float = 0.8,
    increase_factor: float = 1.5,
    max_learning_rate: float = 1.0,
    atol: float = 0.0,
    rtol: float = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
) -> ScaleByBacktrackingLinesearch:
    r"""Backtracking line search: the first step size with sufficient decrease (Armijo), as
    ``optax.scale_by_backtracking_linesearch`` (same arguments, order and defaults).

    With :math:`f` the objective (``value_fn``), :math:`w` the params, :math:`u` the updates
    (a descent direction), :math:`s = \langle \nabla f(w), u\rangle` the slope and
    :math:`\eta_{t-1}` the previous step size (1 before the first):

    .. math::
        \eta^{(0)} = \min(\texttt{increase\_factor}\cdot\eta_{t-1},\ \texttt{max\_learning\_rate}),
        \qquad \eta^{(j+1)} = \texttt{decrease\_factor}\cdot\eta^{(j)}

    until :math:`e_j = \max(0,\ f(w + \eta^{(j)} u) - (1 + \texttt{rtol}) f(w) - \eta^{(j)}
    c\, s) \le \texttt{atol}` (:math:`c` = ``slope_rtol``; a NaN value counts as
    :math:`e = \infty`), for at most ``max_backtracking_steps + 1`` evaluations. The updates are
    :math:`\eta_t u` with :math:`\eta_t` the last step size tried, or 0 if its value was not
    finite. The extra arguments of ``update`` are described in
    :mod:`gradtx._stages.linesearch`: ``value_fn`` is required, ``value`` and ``grad`` are
    computed when left out.

    Args:
      max_backtracking_steps: the most reductions of the step size (int >= 0).
      slope_rtol: :math:`c`, the fraction of the linear decrease :math:`\eta s` required.
      decrease_factor: the factor reducing the step size, in (0, 1).
      increase_factor: the factor applied to the previous step size to start from (``inf``:
        start from ``max_learning_rate`` every time).
      max_learning_rate: the largest step size tried.
      atol: absolute tolerance of the criterion.
      rtol: relative tolerance of the criterion (on :math:`f(w)`).
      store_grad: also compute and keep the gradient at the new params, for
        :func:`gradtx.value_and_grad_from_state` (one gradient evaluation more per update).
      verbose: print the search's numbers when it fails (``jax.debug.print``).

    Returns:
      A :class:`ScaleByBacktrackingLinesearch`; its state is ``State(learning_rate, value,
      grad, info)`` (optax's fields; ``grad`` is ``None`` unless ``store_grad``, and
      ``info`` holds ``num_linesearch_steps`` and ``decrease_error``).

    Warning:
      Before the first update the state's ``value`` and ``decrease_error`` hold the largest
      finite value of their dtype, not optax's ``+inf`` (so the state is finite): read the
      stored value with :func:`gradtx.value_and_grad_from_state`, not optax's, which would
      take it for a value. Keyword arguments not named by ``value_fn`` are ignored (optax
      raises). With ``store_grad`` the gradient is computed after the search at the accepted
      point (optax linearizes at every trial); the results are the same.

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> f = lambda w: jnp.sum((w - 1.0) ** 2)
      >>> tx = gradtx.chain(gradtx.sgd(1.0), gradtx.scale_by_backtracking_linesearch(15))
      >>> w = jnp.zeros(3)
      >>> state = tx.init(w)
      >>> for _ in range(3):
      ...     value, grad = jax.value_and_grad(f)(w)
      ...     u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
      ...     w = gradtx.apply_updates(w, u)
      >>> print(f"{float(f(w)):.1e}")
      1.4e-01

    References:
      Armijo, `Minimization of functions having Lipschitz continuous first partial
      derivatives <https://doi.org/10.2140/pjm.1966.16.1>`_, 1966; Nocedal & Wright,
      *Numerical Optimization*, 2nd ed., section 3.1, 2006;
      ``optax.scale_by_backtracking_linesearch``.
    """
    return ScaleByBacktrackingLinesearch(
        max_backtracking_steps,
        slope_rtol,
        decrease_factor,
        increase_factor,
        max_learning_rate,
        atol,
        rtol,
        store_grad,
        verbose,
    )
