r"""Averages of the *parameters* (not of the updates): ``ema_params``, ``swa_params``, and
``eval_params`` to read them.

Both wrappers run ``inner`` unchanged (their updates are ``inner``'s) and keep in their state
an average :math:`\bar\theta` of the parameters *after* each update,
:math:`\theta_{t+1} = \theta_t + u_t` (``apply_updates(params, updates)``, rounded to the
param dtype as the training loop applies it). With ``c`` the 0-based index of the update
(``state.count`` before it) and ``n`` the samples averaged so far (``state.n_averaged``),
update ``c`` is an *averaging step* when ``c ≥ start`` and ``(c − start) mod every = 0``::

    averaging step, n = 0:  θ̄ = θ_{c+1}                              (the mean of one sample)
    averaging step, n ≥ 1:  θ̄ = θ̄ + w_n · (θ_{c+1} − θ̄)
    other step,     n = 0:  θ̄ = θ_{c+1}                        (before averaging: tracks θ)
    other step,     n ≥ 1:  θ̄ unchanged
    n = n + 1 on averaging steps;   count = count + 1

with the weight ``w_n``

- ``ema_params``: ``1 − β`` (θ̄ = β·θ̄ + (1 − β)·θ, in torch's lerp form); with ``debias``
  ``(1 − β)/(1 − β^(n+1))``, which keeps θ̄ equal to Adam's bias-corrected
  ``m_n/(1 − β^n)`` of ``m = β·m + (1 − β)·θ`` from ``m = 0`` (optax.ema with ``debias``).
  The state holds that corrected average, not ``m``: the same values in exact arithmetic,
  and :func:`eval_params` reads it without the hyperparameters.
- ``swa_params``: ``1/(n + 1)``, the equal-weight running mean (computed as
  ``θ̄ + (θ − θ̄)/(n + 1)``, torch's default ``avg_fn``).

With ``start = 0`` and ``every = 1`` (the defaults, static) every update is an averaging step
and, for float32 and float64 params, the average is computed without a branch (``lax.cond``
otherwise), the same values.

This is ``torch.optim.swa_utils.AveragedModel`` with ``update_parameters`` called after each
averaging step (its first call copies). The state is ``State(count, n_averaged, ema,
inner_state)`` (``swa`` for ``swa_params``); the average has the params' structure (``None``
leaves stay ``None``) and dtype, or ``dtype`` if given; the arithmetic is in at least float32.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.stage import increment, scalar_like
from .._core.state import State
from .._core.struct import hyper, is_schedule_like, static
from .._core.transformation import GradientTransformation, apply_updates
from .._core.tree import TransformError, check_structure, flatten, is_none, path_str
from .._optimizers.hyperparams import _pure
from .common import as_inner, check_args

__all__ = ["EmaParams", "SwaParams", "ema_params", "swa_params", "eval_params"]


def _map(fn: Any, *trees: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x, *rest: None if x is None else fn(x, *rest), *trees, is_leaf=is_none
    )


class _Average(GradientTransformation):
    """What ``ema_params`` and ``swa_params`` share; see the module docstring for the rule."""

    #: The state entry holding the average.
    entry: ClassVar[str] = ""
    #: ``update`` must be given ``params`` (the average is of the parameters).
    needs_params: ClassVar[bool] = True

    inner: Any = None
    start: int = static(0)
    every: int = static(1)
    dtype: Any = static(None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_inner(self.name, self.inner))
        for field, least in (("start", 0), ("every", 1)):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(
                    f"gradtx.{self.name}: {field} must be an int >= {least}, got {v!r}"
                )
        if self.dtype is not None:
            try:
                dtype = jnp.dtype(self.dtype)
            except TypeError:
                dtype = None
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(
                    f"gradtx.{self.name}: dtype must be a floating dtype or None, got "
                    f"{self.dtype!r}"
                )
            object.__setattr__(self, "dtype", dtype)
        super().__post_init__()

    @property
    def entries(self) -> tuple[str, ...]:
        return ("count", "n_averaged", self.entry, "inner_state")

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, state["inner_state"])]

    def init(self, params: Any) -> State:
        def start(p: Any) -> jax.Array:  # a copy: never the params' own buffer
            return jnp.array(p, dtype=self.dtype or jnp.result_type(p), copy=True)

        return State(
            {
                "count": scalar_like(params, 0, jnp.int32),
                "n_averaged": scalar_like(params, 0, jnp.int32),
                self.entry: _map(start, params),
                "inner_state": self.inner.init(params),
            }
        )

    def _mix(self, avg: jax.Array, new: jax.Array, n: jax.Array) -> jax.Array:
        """The average after one more sample ``new`` (n ≥ 1), in ``avg``'s compute dtype."""
        raise NotImplementedError

    def _every_update(self) -> bool:
        """Whether every update is an averaging step (``start = 0, every = 1``; count ≥ 0)."""
        return self.start == 0 and self.every == 1

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, self.entries, updates, params)
        if params is None:
            raise TransformError(
                f"gradtx.{self.name}: update needs params=... (it averages the parameters after "
                "the update), got None"
            )
        out, inner_state = self.inner.update(updates, state["inner_state"], params, **extra)
        new = apply_updates(params, out)
        count, n = state["count"], state["n_averaged"]
        averaging = jnp.logical_and(count >= self.start, (count - self.start) % self.every == 0)

        def leaf(avg: jax.Array, p: jax.Array) -> jax.Array:
            cd = compute_dtype(avg.dtype)
            p = p.astype(cd)
            mixed = self._mix(avg.astype(cd), p, n)
            return jnp.where(n == 0, p, mixed).astype(avg.dtype)

        # No branch when every update averages and no param is narrower than its compute
        # dtype (fused into the mix, a bfloat16 θ's rounding could be skipped as excess
        # precision; the branch's operand is rounded).
        exact = all(
            jnp.result_type(p) == compute_dtype(jnp.result_type(p))
            for p in jax.tree_util.tree_leaves(new)
        )
        if self._every_update() and exact:
            averaging = jnp.array(True)
            avg = _map(leaf, state[self.entry], new)
        else:
            avg = jax.lax.cond(
                jnp.logical_or(averaging, n == 0),
                lambda a: _map(leaf, a, new),
                lambda a: a,
                state[self.entry],
            )
        return out, State(
            {
                "count": increment(count),
                "n_averaged": jnp.where(averaging, increment(n), n),
                self.entry: avg,
                "inner_state": inner_state,
            }
        )


class EmaParams(_Average):
    """An exponential moving average of the parameters; see :func:`ema_params`."""

    entry = "ema"
    decay: Any = hyper(0.999, check="unit")
    debias: bool = static(False)

    def __post_init__(self) -> None:
        if is_schedule_like(self.decay):
            raise TypeError(f"gradtx.{self.name}: decay must be a number, not a schedule")
        super().__post_init__()

    def _mix(self, avg: jax.Array, new: jax.Array, n: jax.Array) -> jax.Array:
        cd = avg.dtype
        b = self.decay
        if isinstance(b, float):  # 1 − β and log β in float64 before rounding to cd
            w = jnp.asarray(1.0 - b, cd)
            log_b = jnp.asarray(math.log(b) if b > 0 else -math.inf, cd)
        else:  # a traced decay (the transformation as a jit or vmap argument)
            b = jnp.asarray(b).astype(cd)
            w, log_b = 1 - b, jnp.log(b)
        if self.debias:  # 1 − β^(n+1) as −expm1((n+1)·log β), as numerics.one_minus_pow
            w = w / -jnp.expm1((n + 1).astype(cd) * log_b)
        return avg + w * (new - avg)


class SwaParams(_Average):
    """The equal-weight running mean of the parameters; see :func:`swa_params`."""

    entry = "swa"

    def _mix(self, avg: jax.Array, new: jax.Array, n: jax.Array) -> jax.Array:
        return avg + (new - avg) / (n + 1).astype(avg.dtype)


def ema_params(
    inner: Any,
    decay: float = 0.999,
    *,
    debias: bool = False,
    every: int = 1,
    start: int = 0,
    dtype: Any = None,
) -> EmaParams:
    r"""Keeps an exponential moving average (EMA) of the parameters after each update.

    .. math::
        \bar\theta \leftarrow \beta\,\bar\theta + (1-\beta)\,\theta_{t+1},
        \qquad \theta_{t+1} = \theta_t + u_t

    on the averaging steps (the updates with 0-based index ``c ≥ start`` and
    ``(c − start) mod every = 0``); the first of them sets θ̄ = θ_{t+1}, and before it θ̄
    tracks the parameters. ``inner``'s updates are returned unchanged. With ``debias``,
    θ̄ is Adam's bias-corrected average ``m_n/(1 − βⁿ)`` of ``m ← β·m + (1 − β)·θ`` started
    at ``m = 0`` (n: the samples averaged). Read it with :func:`eval_params`; the exact rule
    is in :mod:`gradtx._wrappers.averages`.

    Args:
      inner: a gradtx or optax transformation.
      decay: β in [0, 1): a number (traced when the transformation is a jit or vmap
        argument; a schedule is refused).
      debias: Adam-style bias correction of the average (see above).
      every: average every ``every``-th update from ``start``.
      start: the 0-based index of the first update averaged.
      dtype: the average's dtype (default: each param's); ``jnp.float32`` for bfloat16
        params keeps the small EMA increments that bfloat16 would round away.

    Returns:
      An :class:`EmaParams`; its state is ``State(count, n_averaged, ema, inner_state)``.
      ``update`` needs ``params``.

    Note:
      ``torch.optim.swa_utils.AveragedModel(model,
      multi_avg_fn=get_ema_multi_avg_fn(decay))`` with ``update_parameters`` after each
      averaging step computes the same average (``debias=False``). ``optax.ema`` is an EMA of
      the *updates* it is given, started at 0; it is this average only with ``debias=True``
      and fed the parameters.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.ema_params(gradtx.sgd(1.0), decay=0.5)
      >>> params = {"w": jnp.array([0.0])}
      >>> state = tx.init(params)
      >>> for g in (-2.0, -2.0):
      ...     u, state = tx.update({"w": jnp.array([g])}, state, params)
      ...     params = gradtx.apply_updates(params, u)
      >>> params["w"].tolist(), gradtx.eval_params(state, params)["w"].tolist()  # 0.5·2 + 0.5·4
      ([4.0], [3.0])

    References:
      Polyak & Juditsky, *Acceleration of Stochastic Approximation by Averaging*, SIAM J.
      Control Optim. 1992; PyTorch's ``torch.optim.swa_utils``
      (https://pytorch.org/docs/stable/optim.html#weight-averaging-swa-and-ema).
    """
    return EmaParams(inner, start, every, dtype, decay, debias)


def swa_params(inner: Any, *, start: int = 0, every: int = 1, dtype: Any = None) -> SwaParams:
    r"""Stochastic weight averaging (SWA): the equal-weight mean of the parameters after each
    averaging step.

    .. math::
        \bar\theta \leftarrow \bar\theta + \frac{\theta_{t+1} - \bar\theta}{n + 1},
        \qquad n \leftarrow n + 1

    on the averaging steps (the updates with 0-based index ``c ≥ start`` and
    ``(c − start) mod every = 0``), so θ̄ is the mean of the parameters after those updates;
    before the first, θ̄ tracks the parameters. ``inner``'s updates are returned unchanged.
    Read it with :func:`eval_params`; the exact rule is in :mod:`gradtx._wrappers.averages`.

    Args:
      inner: a gradtx or optax transformation (SWA pairs it with a constant or cyclic
        learning rate).
      start: the 0-based index of the first update averaged.
      every: average every ``every``-th update from ``start`` (SWA: once per epoch or cycle).
      dtype: the average's dtype (default: each param's), e.g. ``jnp.float32`` for bfloat16
        params.

    Returns:
      A :class:`SwaParams`; its state is ``State(count, n_averaged, swa, inner_state)``.
      ``update`` needs ``params``.

    Note:
      The same average as ``torch.optim.swa_utils.AveragedModel(model)`` (its default
      ``avg_fn``) with ``update_parameters`` after each averaging step. BatchNorm statistics
      are not parameters: recompute them for the averaged weights, as torch's
      ``update_bn``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.swa_params(gradtx.sgd(1.0), start=1)
      >>> params = {"w": jnp.array([0.0])}
      >>> state = tx.init(params)
      >>> for g in (-1.0, -1.0, -1.0):
      ...     u, state = tx.update({"w": jnp.array([g])}, state, params)
      ...     params = gradtx.apply_updates(params, u)
      >>> gradtx.eval_params(state, params)["w"].tolist(), int(state.n_averaged)  # (2 + 3)/2
      ([2.5], 2)

    References:
      Izmailov, Podoprikhin, Garipov, Vetrov & Wilson, *Averaging Weights Leads to Wider
      Optima and Better Generalization*, UAI 2018 (https://arxiv.org/abs/1803.05407).
    """
    return SwaParams(inner, start, every, dtype)


def _is_average(x: Any) -> bool:
    return isinstance(x, State) and tuple(x) in (
        ("count", "n_averaged", e, "inner_state") for e in (EmaParams.entry, SwaParams.entry)
    )


def eval_params(state: Any, params: Any) -> Any:
    """The averaged parameters held in ``state``, in the structure and dtypes of ``params``.

    ``state`` is any state holding the state of :func:`ema_params` or :func:`swa_params`: its
    own, a chain's, another wrapper's, an optax chain's, ``nnx.Optimizer.opt_state`` (its
    variables are read) or a linen ``TrainState.opt_state``. An average nested in another is
    hidden by it (the outer one is read); pass the inner state to read the inner one. Several
    side by side (one per group of :func:`gradtx.partition`) are merged: each leaf comes from
    the average that holds it, and a leaf none holds (``None`` in each: masked out, another
    group's) is the param itself. Each leaf is cast to its param's dtype; ``None`` params stay
    ``None``.

    Args:
      state: the optimizer state.
      params: the current parameters (their structure and dtypes; nnx variables are read).

    Returns:
      A tree of the params' structure holding the averages.

    Raises:
      ValueError: if ``state`` holds no parameter average.
      TransformError: if an average does not match ``params``' structure or shapes, or two
        averages hold the same leaf.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.chain(gradtx.clip(1.0), gradtx.ema_params(gradtx.sgd(0.1), 0.9))
      >>> params = {"w": jnp.ones(2, jnp.bfloat16)}
      >>> state = tx.init(params)
      >>> gradtx.eval_params(state, params)["w"].dtype
      dtype(bfloat16)
    """
    state, params = _pure(state), _pure(params)
    found = [
        (path, s)
        for path, s in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_average)[0]
        if _is_average(s)
    ]
    if not found:
        raise ValueError(
            "gradtx.eval_params: state holds no parameter average (the state of "
            "gradtx.ema_params or gradtx.swa_params); wrap the optimizer in one of them"
        )
    p_leaves, treedef = flatten(params)
    averages = []
    for path, s in found:
        where = f"the average at state{jax.tree_util.keystr(path)}.{tuple(s)[2]}"
        a_leaves, a_def = flatten(s[2])
        if a_def != treedef:
            check_structure("eval_params", "params", params, where, s[2])
        averages.append((where, [a for _, a in a_leaves]))
    out = []
    for i, (kp, p) in enumerate(p_leaves):
        held = [(where, a[i]) for where, a in averages if a[i] is not None]
        if p is None or not held:
            out.append(p)
            continue
        if len(held) > 1:
            raise TransformError(
                f"gradtx.eval_params: at {path_str(kp)}, {held[0][0]} and {held[1][0]} both "
                "hold an average; pass the state of the one to read"
            )
        where, a = held[0]
        if jnp.shape(a) != jnp.shape(p):
            raise TransformError(
                f"gradtx.eval_params: at {path_str(kp)}, {where} has shape {jnp.shape(a)} but "
                f"params has shape {jnp.shape(p)}"
            )
        out.append(a.astype(jnp.result_type(p)))
    return treedef.unflatten(out)
