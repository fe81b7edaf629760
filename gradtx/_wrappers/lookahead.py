"""``lookahead``: k fast steps forward, one step back to slow weights, as optax's.

The params are a pair ``(fast, slow)`` (:class:`LookaheadParams`); the gradients are taken at
the fast params. Rule per call, with ``n`` the fast steps since the last synchronization, ``k``
the ``sync_period`` and ``α`` the ``slow_step_size``::

    u, fast_state = fast_optimizer.update(g, fast_state, fast)
    if n == k − 1:                      (synchronize after this step)
        d      = fast + u − slow        (the fast params after the step, minus the slow ones)
        slow_u = α·d                    (slow ← slow + α·(fast + u − slow))
        fast_u = u − (1 − α)·d          (fast ← the new slow params)
        fast_state = fast_optimizer.init(fast)   (only with reset_state)
    else:
        slow_u = 0;  fast_u = u
    n = (n + 1) mod k

and the updates are the pair ``(fast_u, slow_u)``, for ``apply_updates`` on the pair. The state
``State(fast_state, steps_since_sync)`` has optax's field names (``optax.LookaheadState``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.placement import in_update
from .._core.stage import increment, scalar_like
from .._core.state import State
from .._core.struct import hyper, is_schedule_like, static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError, check_structure, is_none
from .common import as_inner, check_args

__all__ = ["Lookahead", "LookaheadParams", "lookahead"]

_ENTRIES = ("fast_state", "steps_since_sync")


class LookaheadParams(NamedTuple):
    """The fast and slow params of :func:`lookahead`, as ``optax.LookaheadParams``.

    Take the gradients at ``fast``; evaluate (and deploy) ``slow``. :func:`lookahead` also
    accepts optax's ``LookaheadParams`` (any object with ``fast`` and ``slow``) and returns
    its updates in the type it was given.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> pair = gradtx.LookaheadParams.init_synced({"w": jnp.ones(2)})
      >>> pair.fast is pair.slow
      True
    """

    fast: Any
    slow: Any

    @classmethod
    def init_synced(cls, params: Any) -> LookaheadParams:
        """The pair with ``fast`` and ``slow`` both ``params`` (synchronized)."""
        return cls(fast=params, slow=params)


def _is_pair(params: Any) -> bool:
    return hasattr(params, "fast") and hasattr(params, "slow")


def _like(params: Any, fast: Any, slow: Any) -> Any:
    """A pair of the type of ``params`` holding ``fast`` and ``slow``."""
    if hasattr(params, "_replace"):  # a NamedTuple: gradtx's or optax's LookaheadParams
        return params._replace(fast=fast, slow=slow)
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return dataclasses.replace(params, fast=fast, slow=slow)
    return type(params)(fast=fast, slow=slow)


class Lookahead(GradientTransformation):
    """``fast_optimizer`` with slow weights pulled toward the fast ones every ``sync_period``
    steps; see :func:`lookahead` and the module docstring for the rule.

    Attributes:
      fast_optimizer: the wrapped gradtx or optax transformation (a gradtx one is a pytree
        child, so its hyperparameters stay traceable).
      sync_period: fast steps per synchronization (static int >= 1).
      slow_step_size: ``α``, in [0, 1] (a numeric hyperparameter: a pytree leaf).
      reset_state: re-initialize ``fast_optimizer``'s state at every synchronization.
    """

    name = "lookahead"
    fast_optimizer: Any
    sync_period: int = static()
    slow_step_size: float = hyper(check="unit_closed")
    reset_state: bool = static(False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fast_optimizer", as_inner(self.name, self.fast_optimizer))
        k = self.sync_period
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"gradtx.{self.name}: sync_period must be an int >= 1, got {k!r}")
        if not isinstance(self.reset_state, bool):
            raise TypeError(
                f"gradtx.{self.name}: reset_state must be a bool, got {self.reset_state!r}"
            )
        if is_schedule_like(self.slow_step_size):
            raise TypeError(f"gradtx.{self.name}: slow_step_size must be a number, not a schedule")
        super().__post_init__()

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.fast_optimizer, state["fast_state"])]

    def init(self, params: Any) -> State:
        """The state for ``params``: a :class:`LookaheadParams` pair or, as optax allows, the
        fast params alone (the state depends on the fast params only)."""
        fast = params.fast if _is_pair(params) else params
        return State(
            fast_state=self.fast_optimizer.init(fast),
            steps_since_sync=scalar_like(fast, 0, jnp.int32),
        )

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        if not _is_pair(params):
            raise TransformError(
                f"gradtx.{self.name}: update needs params=LookaheadParams(fast, slow) (the fast "
                f"params the gradients were taken at, and the slow ones), got "
                f"{type(params).__name__}"
            )
        pair: Any = params
        fast, slow = pair.fast, pair.slow
        check_args(self.name, state, _ENTRIES, updates, fast)
        check_structure(self.name, "params.fast", fast, "params.slow", slow)
        n = state["steps_since_sync"]
        u, fast_state = self.fast_optimizer.update(updates, state["fast_state"], fast, **extra)
        sync = n >= self.sync_period - 1
        alpha = self.slow_step_size

        def step(f: Any, g: Any, s: Any) -> tuple[Any, Any]:
            if g is None or f is None or s is None:
                return g, None
            cdt = compute_dtype(jnp.result_type(g))
            a = jnp.asarray(alpha, cdt)
            g_c = g.astype(cdt)
            d = f.astype(cdt) + g_c - s.astype(cdt)
            fast_u = jnp.where(sync, g_c - (1 - a) * d, g_c)
            slow_u = jnp.where(sync, a * d, jnp.zeros_like(d))
            return fast_u.astype(g.dtype), slow_u.astype(jnp.result_type(s))

        treedef: Any
        f_leaves, treedef = jax.tree_util.tree_flatten(fast, is_leaf=is_none)
        out = [
            step(f, g, s)
            for f, g, s in zip(f_leaves, treedef.flatten_up_to(u), treedef.flatten_up_to(slow))
        ]
        fast_u = treedef.unflatten([x for x, _ in out])
        slow_u = treedef.unflatten([y for _, y in out])
        if self.reset_state:
            with in_update():  # placed by this step's outputs, not tied again
                fresh = self.fast_optimizer.init(fast)
            fast_state = jax.tree_util.tree_map(
                lambda cur, new: jnp.where(sync, new, cur).astype(jnp.result_type(cur)),
                fast_state,
                fresh,
            )
        return _like(params, fast_u, slow_u), State(
            fast_state=fast_state, steps_since_sync=increment(n) % self.sync_period
        )


def lookahead(
    fast_optimizer: Any, sync_period: int, slow_step_size: float, reset_state: bool = False
) -> Lookahead:
    r"""Lookahead: ``sync_period`` steps of ``fast_optimizer``, then the slow params move a
    fraction ``slow_step_size`` toward the fast ones and the fast params restart from them, as
    ``optax.lookahead`` (same arguments, order and semantics).

    With fast params :math:`\phi`, slow params :math:`\theta`, :math:`k` = ``sync_period``
    and :math:`\alpha` = ``slow_step_size``: each step is
    :math:`\phi_{t+1} = \phi_t + u_t` with :math:`u_t` the fast optimizer's update at
    :math:`\phi_t`, and every :math:`k`-th step is followed by

    .. math::
       \theta \leftarrow \theta + \alpha\,(\phi - \theta), \qquad \phi \leftarrow \theta,

    merged into that step's update of the pair (the exact rule is in
    :mod:`gradtx._wrappers.lookahead`). Apply the updates unchanged
    (``apply_updates(params, updates)`` on the pair), or the two halves fall out of sync.

    Note:
      As optax's: ``update`` needs ``params`` as a pair (:class:`LookaheadParams`, or
      optax's; the updates come back in the type given) and ``init`` accepts the pair or the
      fast params alone. Unlike optax's: ``update``'s extra keyword arguments reach
      ``fast_optimizer`` (optax's lookahead takes none); ``reset_state`` selects the fresh
      state with ``where``, not ``(1 − s)·state + s·fresh``, so a non-finite value in the old
      state does not leak into the fresh one; the updates are computed in at least float32
      and cast to the params' dtype (optax: in the params' dtype); ``slow_step_size`` must
      be in [0, 1] and ``sync_period`` a static int.

    Args:
      fast_optimizer: the inner optimizer, a gradtx or optax transformation.
      sync_period: fast steps per synchronization, an int >= 1.
      slow_step_size: the slow params' step :math:`\alpha` toward the fast ones, in [0, 1].
      reset_state: re-initialize the fast optimizer's state at each synchronization.

    Returns:
      A :class:`Lookahead`; its state is ``State(fast_state, steps_since_sync)`` and its
      updates are a pair of the type of ``params``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.lookahead(gradtx.sgd(0.5), sync_period=2, slow_step_size=0.5)
      >>> params = gradtx.LookaheadParams.init_synced({"w": jnp.zeros(1)})
      >>> state = tx.init(params)
      >>> for _ in range(2):  # gradient -1: each fast step adds 0.5
      ...     u, state = tx.update({"w": -jnp.ones(1)}, state, params)
      ...     params = gradtx.apply_updates(params, u)
      >>> params.fast["w"].tolist(), params.slow["w"].tolist()  # slow: 0 + 0.5·(1 − 0)
      ([0.5], [0.5])

    References:
      Zhang, Lucas, Hinton and Ba, *Lookahead Optimizer: k steps forward, 1 step back*,
      NeurIPS 2019 (https://arxiv.org/abs/1907.08610).
    """
    return Lookahead(fast_optimizer, sync_period, slow_step_size, reset_state)
