"""``sam``: Sharpness-Aware Minimization as a wrapper of two optimizers, as optax.contrib's.

Two modes, optax's. **Transparent** (``opaque_mode=False``): each call of ``update`` is one
step of one of the two optimizers, so ``sync_period − 1`` adversarial steps (the params climb
to a nearby sharp point) alternate with one real step (taken from where the adversarial steps
started, with the gradient at where they ended). With ``n`` the calls since the last real step
and ``k`` the ``sync_period``, per call::

    if n < k − 1:                                   (adversarial step)
        a, adv_state = adv_optimizer.update(g, adv_state, params)
        u = −a                                      (params ← params − a: uphill)
        if n == 0: cache = params                   (where the climb starts)
    else:                                           (real step, from the cache)
        o, opt_state = optimizer.update(g, opt_state, cache)
        u = cache − params + o                      (params ← cache + o)
        adv_state = adv_optimizer.init(params)      (only with reset_state)
    n = (n + 1) mod k

(``k = 1``: every call is a real step.) **Opaque** (``opaque_mode=True``): each call runs the
``k − 1`` adversarial steps inside, with ``update(..., grad_fn=...)`` giving the gradients at
the adversarial points, and returns the real step only::

    p, a_g = params, g
    for i in range(k − 1):
        a, adv_state = adv_optimizer.update(a_g, adv_state, p);  p = p − a
        a_g = grad_fn(p, i)                          (lax.pmean over batch_axis_name, if set)
    u, opt_state = optimizer.update(a_g, opt_state, params)

The state ``State(steps_since_sync, opt_state, adv_state, cache)`` has the fields of optax's
``SAMState`` (``cache`` is ``None`` in opaque mode).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.placement import in_update
from .._core.stage import scalar_like
from .._core.state import State
from .._core.struct import static
from .._core.transformation import GradientTransformation, apply_updates
from .._core.tree import TransformError, check_structure, is_none
from .common import as_inner, check_args

__all__ = ["Sam", "sam"]

_ENTRIES = ("steps_since_sync", "opt_state", "adv_state", "cache")


def _required(tx: Any) -> list[str]:
    """The ``update`` keyword arguments ``tx`` declares (its ``requires``, its stages')."""
    out = list(getattr(tx, "requires", ()) or ())
    for stage in getattr(tx, "stages", ()) or ():
        out += _required(stage)
    return out


def _tmap(fn: Any, *trees: Any) -> Any:
    """``tree_map`` over trees of the first one's structure, ``None`` leaves kept."""
    return jax.tree_util.tree_map(
        lambda x, *rest: None if x is None else fn(x, *rest), *trees, is_leaf=is_none
    )


def _like(tree: Any, ref: Any) -> Any:
    """``tree`` with each leaf cast to the dtype of the same leaf of ``ref``."""
    return _tmap(lambda r, x: jnp.asarray(x).astype(jnp.result_type(r)), ref, tree)


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where ``pred``, else ``old``, leaf by leaf, in the old leaves' dtypes."""
    return jax.tree_util.tree_map(
        lambda n, o: jnp.where(pred, n, o).astype(jnp.result_type(o)), new, old
    )


class Sam(GradientTransformation):
    """SAM around an outer ``optimizer`` and an ``adv_optimizer``; see :func:`sam` and the
    module docstring for the rule.

    Attributes:
      optimizer: the outer (real) optimizer, a gradtx or optax transformation.
      adv_optimizer: the adversarial optimizer (its update is subtracted: it climbs).
      sync_period: calls per real step in transparent mode, adversarial steps + 1 in opaque
        mode (a static int >= 1).
      reset_state: re-initialize ``adv_optimizer``'s state after every real step.
      opaque_mode: run the adversarial steps inside each call (needs ``grad_fn``).
      batch_axis_name: opaque mode only: the axis the adversarial gradients are averaged over
        with ``lax.pmean`` (under ``pmap``/``shard_map``); ``None``: no averaging.
    """

    name = "sam"
    optimizer: Any
    adv_optimizer: Any
    sync_period: int = static(2)
    reset_state: bool = static(True)
    opaque_mode: bool = static(False)
    batch_axis_name: Any = static(None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", as_inner(self.name, self.optimizer, "optimizer"))
        adv = as_inner(self.name, self.adv_optimizer, "adv_optimizer")
        object.__setattr__(self, "adv_optimizer", adv)
        k = self.sync_period
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"gradtx.{self.name}: sync_period must be an int >= 1, got {k!r}")
        for what in ("reset_state", "opaque_mode"):
            if not isinstance(getattr(self, what), bool):
                raise TypeError(
                    f"gradtx.{self.name}: {what} must be a bool, got {getattr(self, what)!r}"
                )
        super().__post_init__()

    @property
    def requires(self) -> tuple[str, ...]:
        """``grad_fn`` in opaque mode, and what the two optimizers declare."""
        own = ["grad_fn"] if self.opaque_mode else []
        inner = _required(self.optimizer) + _required(self.adv_optimizer)
        return tuple(dict.fromkeys(own + inner))

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [
            ("optimizer", self.optimizer, state["opt_state"]),
            ("adv_optimizer", self.adv_optimizer, state["adv_state"]),
        ]

    def init(self, params: Any) -> State:
        # the cache is a copy: never the params' own buffer (a donated step would free it)
        copy = lambda p: jnp.array(p, dtype=jnp.result_type(p), copy=True)  # noqa: E731
        cache = None if self.opaque_mode else _tmap(copy, params)
        return State(
            steps_since_sync=scalar_like(params, 0, jnp.int32),
            opt_state=self.optimizer.init(params),
            adv_state=self.adv_optimizer.init(params),
            cache=cache,
        )

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, _ENTRIES, updates, params)
        if params is None:
            raise TransformError(
                f"gradtx.{self.name}: update needs params=... (the adversarial steps move from "
                "them), got None"
            )
        if self.opaque_mode:
            return self._opaque(updates, state, params, extra)
        return self._transparent(updates, state, params, extra)

    def _transparent(self, g: Any, state: State, params: Any, extra: dict) -> tuple[Any, State]:
        check_structure(self.name, "params", params, "state.cache", state["cache"])
        n = state["steps_since_sync"]
        cache = state["cache"]

        def real() -> tuple[Any, Any, Any]:
            o, opt_state = self.optimizer.update(g, state["opt_state"], cache, **extra)

            def back(c: Any, p: Any, u: Any) -> jax.Array:
                cdt = compute_dtype(jnp.result_type(u))
                return (c.astype(cdt) - p.astype(cdt) + u.astype(cdt)).astype(u.dtype)

            u = _tmap(back, cache, params, o)
            adv_state = state["adv_state"]
            if self.reset_state:
                with in_update():  # placed by this step's outputs
                    adv_state = self.adv_optimizer.init(params)
            return u, _like(adv_state, state["adv_state"]), _like(opt_state, state["opt_state"])

        def adversarial() -> tuple[Any, Any, Any]:
            a, adv_state = self.adv_optimizer.update(g, state["adv_state"], params, **extra)
            u = _tmap(jnp.negative, a)
            return u, _like(adv_state, state["adv_state"]), state["opt_state"]

        if self.sync_period == 1:
            u, adv_state, opt_state = real()
        else:
            u, adv_state, opt_state = jax.lax.cond(n == self.sync_period - 1, real, adversarial)
        new_cache = _select(n == 0, params, cache)
        return u, State(
            steps_since_sync=((n + 1) % self.sync_period).astype(jnp.int32),
            opt_state=opt_state,
            adv_state=adv_state,
            cache=new_cache,
        )

    def _opaque(self, g: Any, state: State, params: Any, extra: dict) -> tuple[Any, State]:
        grad_fn = extra.get("grad_fn")
        if grad_fn is None or not callable(grad_fn):
            raise TransformError(
                f"gradtx.{self.name}: opaque_mode=True needs update(..., grad_fn=f) with "
                "f(params, i) the gradients at the i-th adversarial point, got "
                f"{type(grad_fn).__name__}"
            )
        inner_extra = {k: v for k, v in extra.items() if k != "grad_fn"}
        adv_params, adv_g, adv_state = params, g, state["adv_state"]
        for i in range(self.sync_period - 1):
            a, adv_state = self.adv_optimizer.update(adv_g, adv_state, adv_params, **inner_extra)
            adv_params = apply_updates(adv_params, _tmap(jnp.negative, a))
            adv_g = grad_fn(adv_params, i)
            if self.batch_axis_name is not None:
                adv_g = jax.lax.pmean(adv_g, axis_name=self.batch_axis_name)
            check_structure(self.name, "updates", g, "grad_fn(params, i)", adv_g)
            adv_g = _like(adv_g, g)
        if self.reset_state:
            with in_update():
                adv_state = self.adv_optimizer.init(params)
        u, opt_state = self.optimizer.update(adv_g, state["opt_state"], params, **inner_extra)
        return u, State(
            steps_since_sync=jnp.zeros_like(state["steps_since_sync"]),
            opt_state=opt_state,
            adv_state=_like(adv_state, state["adv_state"]),
            cache=None,
        )


def sam(
    optimizer: Any,
    adv_optimizer: Any,
    sync_period: int = 2,
    reset_state: bool = True,
    opaque_mode: bool = False,
    batch_axis_name: str | None = None,
) -> Sam:
    r"""SAM (Sharpness-Aware Minimization): steps of ``adv_optimizer`` uphill, then a step of
    ``optimizer`` from where they started with the gradient where they ended, as
    ``optax.contrib.sam`` (same arguments, order, defaults and semantics).

    With ``adv_optimizer = chain(normalize_by_update_norm(), sgd(ρ))`` and ``sync_period=2``
    this is the paper's SAM:

    .. math::
        \hat\theta_t = \theta_t + \rho\,\frac{\nabla L(\theta_t)}{\|\nabla L(\theta_t)\|},
        \qquad \theta_{t+1} = \theta_t - \eta\,\nabla L(\hat\theta_t)

    (with SGD as ``optimizer``; any optimizer takes the gradient at :math:`\hat\theta_t`). In
    transparent mode (the default) every call is one of the two steps: the params the caller
    holds after an odd call are :math:`\hat\theta_t`; after ``sync_period`` calls they are
    :math:`\theta_{t+1}`. In opaque mode every call takes the ``sync_period − 1`` adversarial
    steps inside (``update(..., grad_fn=f)``, ``f(params, i)`` the gradients at the ``i``-th
    adversarial point) and returns the real step only. The exact rule is in
    :mod:`gradtx._wrappers.sam`.

    Knobs: the wrapped optimizers' (g, σ and η of ``optimizer`` make the real step; those of
    ``adv_optimizer`` the ascent of radius ρ).

    Note:
      As optax's: ``update`` needs ``params``; in transparent mode the state keeps a copy of
      the params (``cache``); ``reset_state`` re-initializes ``adv_optimizer``'s state after
      every real step. Unlike optax's: extra keyword arguments of ``update`` reach both
      optimizers (``grad_fn`` excepted); the two branches of a transparent step run under
      ``lax.cond``, so each call computes only the step it returns (optax computes both and
      mixes them as ``c·a + (1 − c)·b``, which also lets a NaN of the unused one through);
      ``grad_fn``'s gradients are cast to the dtypes of ``updates``.

    Args:
      optimizer: the outer optimizer, a gradtx or optax transformation.
      adv_optimizer: the adversarial optimizer; its updates are subtracted (it climbs), so a
        descent optimizer such as ``chain(normalize_by_update_norm(), sgd(ρ))`` makes the
        ascent step of radius ρ.
      sync_period: calls per real step (transparent), or adversarial steps + 1 per call
        (opaque); an int >= 1.
      reset_state: re-initialize ``adv_optimizer``'s state after every real step.
      opaque_mode: run the adversarial steps inside each call; ``update`` then needs
        ``grad_fn`` (declared in ``requires``).
      batch_axis_name: opaque mode: the mapped axis to ``lax.pmean`` the adversarial
        gradients over (for ``pmap``/``shard_map`` training loops); ``None``: none.

    Returns:
      A :class:`Sam`; its state is ``State(steps_since_sync, opt_state, adv_state, cache)``.

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> adv = gradtx.chain(gradtx.normalize_by_update_norm(eps=0.0), gradtx.sgd(0.1))
      >>> tx = gradtx.sam(gradtx.sgd(0.1), adv)
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> state = tx.init(params)
      >>> for _ in range(2):  # climb by 0.1 along the gradient, then step from (3, 4)
      ...     updates, state = tx.update(jax.grad(loss)(params), state, params)
      ...     params = gradtx.apply_updates(params, updates)
      >>> [round(x, 4) for x in params["w"].tolist()]  # (3, 4) − 0.1·2·(3.06, 4.08)
      [2.388, 3.184]

    References:
      Foret, Kleiner, Mobahi and Neyshabur, *Sharpness-Aware Minimization for Efficiently
      Improving Generalization*, ICLR 2021. https://arxiv.org/abs/2010.01412
    """
    return Sam(optimizer, adv_optimizer, sync_period, reset_state, opaque_mode, batch_axis_name)
