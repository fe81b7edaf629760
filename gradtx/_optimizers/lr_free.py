"""Learning-rate-free optimizers: the step size is estimated from the run itself. DoG and DoWG
(distance over gradients) here; Prodigy (:mod:`.prodigy`) and D-Adaptation (:mod:`.dadapt`)
share :class:`LrFree` and the helpers below.

In the lecture's terms these turn the η knob: η_t is no longer a given schedule but an
estimate (of the distance to a solution over the gradients seen), multiplied by the
``learning_rate`` schedule, whose recommended value is 1.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype, one_minus_pow
from .._core.placement import follow, scalar_like
from .._core.stage import increment
from .._core.state import State
from .._core.struct import is_schedule_like, resolve
from .._core.transformation import GradientTransformation
from .._core.tree import (
    TransformError,
    check_float_leaves,
    check_structure,
    flatten,
    is_own_error,
    path_str,
    renamed,
)
from .._scale.common import moment_dtype
from .._stages.dog import check_global_update, copy_tree, scale_by_dog, scale_by_dowg
from .._stages.linesearch import scalar_dtype, tmap
from .._stages.weight_decay import AddDecayedWeights
from ..schedules._learning_rate import ScaleByLearningRate
from .builder import Optimizer, naming
from .common import Schedule

__all__ = ["dog", "dowg"]


class LrFree(Optimizer):
    """An optimizer whose step size is estimated during the run (DoG, DoWG, Prodigy,
    D-Adaptation): a chain around one stage that estimates it. Its ``describe()`` says which
    knobs that stage turns; the state is the chain's (``state.scale_by_dog.max_dist``,
    ``state.prodigy.estim_lr``)."""

    def describe(self) -> dict[str, Any]:
        """Which knobs the optimizer turns; the keys of :meth:`Optimizer.describe`."""
        core = next(s for s in self.stages if callable(getattr(s, "knob_text", None)))
        text = core.knob_text()
        i = self.stages.index(core)
        sched = self.schedule
        eta = text["eta"]
        if sched is not None:
            lr = sched.learning_rate
            kind = "schedule" if is_schedule_like(lr) else "constant"
            eta = f"{kind} {lr!r} × {eta}"
        return {
            "name": self.name,
            "g": text["g"],
            "sigma": text["sigma"],
            "eta": eta,
            "order": text.get("order", "the estimated step times the gradient"),
            "before": [repr(s) for s in self.stages[:i]],
            "after": [repr(s) for s in self.stages[i + 1 :] if s is not sched],
            "state_dtypes": self.state_dtypes(),
        }


# --- what Prodigy and D-Adaptation share ------------------------------------------------------
def moment_zeros(params: Any) -> Any:
    """Zero moments for ``params``: in the param dtype, float32 for float16 params (the moments
    start at the scale of d₀ ≈ 1e-6, below float16's normal range)."""
    return tmap(lambda p: follow(p, jnp.zeros_like(p, moment_dtype(p.dtype))), params)


@contextlib.contextmanager
def betas_named() -> Iterator[None]:
    """Construction errors about ``b1``/``b2`` name them as the user gave them:
    ``betas[0]``/``betas[1]`` (optax's single ``betas`` argument)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        if not is_own_error(e):
            raise
        head, sep, rest = str(e).partition(": ")
        for field, arg in (("b1", "betas[0]"), ("b2", "betas[1]")):
            if rest.startswith(f"{field} "):
                raise renamed(e, f"{head}{sep}{arg}{rest[len(field) :]}") from None
        raise


class DAdaptCore(GradientTransformation):
    r"""What Prodigy and D-Adaptation share: Adam's moments ``exp_avg`` (m) and ``exp_avg_sq``
    (v), a weighted sum of gradients ``grad_sum`` (s), the estimate ``estim_lr`` (d) and the
    numerator of its next value ``numerator_weighted`` (r), a ``count`` (optax's state fields,
    in its order; Prodigy adds ``params0``).

    A subclass gives the rule: :meth:`scalars` (the step's scalars, from the hyperparameters
    resolved at ``count``), :meth:`moments` (per array: the new m, v, s, and the array's parts
    of ‖s‖₁ and of the inner product that feeds r), :meth:`estimate` (the new r and d) and
    :meth:`step` (per array: the update). Every hyperparameter may be a schedule of ``count``;
    a subclass has fields ``b1``, ``b2`` and ``estim_lr0``.
    """

    keeps_params0: ClassVar[bool] = False

    @property
    def entries(self) -> tuple[str, ...]:
        mid = ("params0",) if self.keeps_params0 else ()
        return (
            "exp_avg",
            "exp_avg_sq",
            "grad_sum",
            *mid,
            "estim_lr",
            "numerator_weighted",
            "count",
        )

    def scalars(self, hp: Any, sc: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """More scalars of the step, from ``hp`` (resolved) and ``sc``: ``d``, ``b1``, ``b2``
        and the bias correction ``bc`` = √(1−β2ᵗ)/(1−β1ᵗ), all in the scalars' dtype."""
        raise NotImplementedError

    def moments(self, g: Any, m: Any, v: Any, s: Any, *more: Any, cdt: Any, sc: dict) -> tuple:
        raise NotImplementedError

    def estimate(self, sc: dict, r: jax.Array, inner: jax.Array, l1: jax.Array) -> tuple:
        raise NotImplementedError

    def step(self, m: Any, v: Any, p: Any, sc: dict, d_next: jax.Array) -> Any:
        raise NotImplementedError

    def init(self, params: Any) -> State:
        check_float_leaves(self.name, "params", params)
        dt = scalar_dtype(params)
        hp = resolve(self, jnp.zeros((), jnp.int32))
        start = {"params0": copy_tree(params)} if self.keeps_params0 else {}
        return State(
            exp_avg=moment_zeros(params),
            exp_avg_sq=moment_zeros(params),
            grad_sum=moment_zeros(params),
            **start,
            estim_lr=scalar_like(params, jnp.asarray(hp.estim_lr0, dt), dt),
            numerator_weighted=scalar_like(params, 0.0, dt),
            count=scalar_like(params, 0, jnp.int32),
        )

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_global_update(self.name, self.entries, updates, state, params, "exp_avg")
        slots = ("exp_avg", "exp_avg_sq", "grad_sum", *(("params0",) * self.keeps_params0))
        for n in slots[1:]:
            check_structure(self.name, "updates", updates, f"state.{n}", state[n])
        d, hp = state["estim_lr"], resolve(self, state["count"])
        b1, b2 = (jnp.asarray(b, d.dtype) for b in (hp.b1, hp.b2))
        sc = {"d": d, "b1": b1, "b2": b2, "bc": _bias_correction(b1, b2, state["count"])}
        sc.update(self.scalars(hp, sc))
        trees = [state[n] for n in slots] + ([params] if self.keeps_params0 else [])
        new = _per_leaf(self.name, functools.partial(self.moments, sc=sc), updates, *trees)
        done = [r for r in new if r is not None]
        total = lambda j: sum((r[j] for r in done), jnp.zeros((), d.dtype))  # noqa: E731
        r, d_next = self.estimate(sc, state["numerator_weighted"], total(4), total(3))
        p_leaves = [x for _, x in flatten(params)[0]]
        out = [
            None if n is None else self.step(n[0], n[1], p.astype(n[0].dtype), sc, d_next)
            for n, p in zip(new, p_leaves)
        ]
        slot = lambda j, name: _unflatten_like(  # noqa: E731
            updates, [None if n is None else n[j] for n in new], state[name]
        )
        moments = {name: slot(j, name) for j, name in enumerate(slots[:3])}
        rest = {"params0": state["params0"]} if self.keeps_params0 else {}
        return _unflatten_like(updates, out, updates), State(
            **moments,
            **rest,
            estim_lr=d_next,
            numerator_weighted=r,
            count=increment(state["count"]),
        )


def _bias_correction(b1: jax.Array, b2: jax.Array, count: jax.Array) -> jax.Array:
    r""":math:`\sqrt{1-\beta_2^t}/(1-\beta_1^t)` at ``t = count + 1``, in ``b1``'s dtype."""
    t = increment(count).astype(b1.dtype)
    return jnp.sqrt(one_minus_pow(b2, t)) / one_minus_pow(b1, t)


def next_estimate(d: jax.Array, numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    r""":math:`\max(d, \text{numerator}/\text{denominator})`, keeping ``d`` where the
    denominator is 0 (all gradients so far 0; optax gives NaN there)."""
    ok = denominator > 0
    return jnp.maximum(d, jnp.where(ok, numerator / jnp.where(ok, denominator, 1), d))


def _per_leaf(owner: str, fn: Callable[..., tuple], updates: Any, *trees: Any) -> list[Any]:
    """``fn(g, *others, cdt=cdt)`` for each non-``None`` leaf of ``updates``, every argument
    cast to the leaf's compute dtype ``cdt`` (at least float32); ``None`` for ``None`` leaves."""
    leaves, _ = flatten(updates)
    others = [[x for _, x in flatten(t)[0]] for t in trees]
    out: list[Any] = []
    for i, (path, g) in enumerate(leaves):
        if g is None:
            out.append(None)
            continue
        args = [o[i] for o in others]
        if any(a is None for a in args):
            raise TransformError(
                f"gradtx.{owner}: at {path_str(path)}, params or the state hold None for an "
                "array of updates"
            )
        cdt = compute_dtype(g.dtype)
        out.append(fn(g.astype(cdt), *(a.astype(cdt) for a in args), cdt=cdt))
    return out


def _unflatten_like(updates: Any, values: list[Any], like: Any) -> Any:
    """A tree of ``updates``' structure from ``values`` (one per leaf, ``None`` kept), each
    cast to the dtype of the same leaf of ``like``."""
    treedef = flatten(updates)[1]
    refs = [x for _, x in flatten(like)[0]]
    return treedef.unflatten(
        [None if v is None else v.astype(r.dtype) for v, r in zip(values, refs)]
    )


# --- the named optimizers ---------------------------------------------------------------------
def _with_decay(weight_decay: Any, mask: Any, core: Any, learning_rate: Any, name: str) -> LrFree:
    stages: list[Any] = []
    if weight_decay is not None:
        stages.append(AddDecayedWeights(weight_decay, mask))
    stages += [core, ScaleByLearningRate(learning_rate)]
    return LrFree(tuple(stages), (), name)


def dog(
    learning_rate: Schedule = 1.0,
    init_step: tuple[str, float] = ("heuristic", 1e-6),
    eps: float = 1e-8,
    weight_decay: float | None = None,
    mask: Any = None,
) -> Optimizer:
    r"""Distance over Gradients (DoG): SGD whose step is the distance travelled over the root
    of the summed squared gradient norms.

    .. math::
        \bar r_t = \max\bigl(\bar r_{t-1}, \lVert x_t - x_0\rVert\bigr), \qquad
        G_t = \sum_{s \le t} \lVert g_s\rVert^2, \qquad
        x_{t+1} = x_t - \alpha_t \frac{\bar r_t}{\sqrt{G_t + \epsilon}}\, g_t

    (norms over the whole tree; :math:`\alpha_t` = ``learning_rate``, 1 as the paper; with
    ``weight_decay`` λ, :math:`g_t + λ x_t` in place of :math:`g_t`, on the leaves of
    ``mask``). Knobs: η = α_t × DoG's step (:func:`gradtx.scale_by_dog`); g and σ are not
    turned. Same arguments and chain as ``optax.contrib.dog`` (``add_decayed_weights →
    scale_by_dog → scale_by_learning_rate``), equal updates. ``update`` needs ``params``;
    ``init`` needs the real params (the heuristic :math:`\bar r_0` reads their norm). The
    authors recommend averaging the iterates (:func:`gradtx.ema_params`).

    Args:
      learning_rate: α_t, a float or a schedule (1: the paper's DoG).
      init_step: ``("heuristic", α)`` (:math:`\bar r_0 = α(1+\lVert x_0\rVert)`),
        ``("distance", r)`` or ``("learning_rate", η_0)``; see :func:`gradtx.scale_by_dog`.
      eps: ε under the root.
      weight_decay: λ, coupled (added to the gradient); ``None`` for none.
      mask: the leaves λ applies to (a tree of bools or a function of the params).

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
      >>> tx = gradtx.dog(init_step=("distance", 1e-3))
      >>> x = jnp.zeros(2)
      >>> state, step, grad = tx.init(x), jax.jit(tx.update), jax.jit(jax.grad(f))
      >>> for _ in range(100):
      ...     u, state = step(grad(x), state, x)
      ...     x = gradtx.apply_updates(x, u)
      >>> bool(f(x) < 1e-3)
      True

    References:
      Ivgi, Hinder & Carmon, *DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
      Schedule*, ICML 2023. https://arxiv.org/abs/2302.12022
    """
    with naming("dog"):
        return _with_decay(weight_decay, mask, scale_by_dog(init_step, eps), learning_rate, "dog")


def dowg(
    learning_rate: Schedule = 1.0,
    init_estim_sq_dist: float | None = None,
    eps: float = 1e-4,
    weight_decay: float | None = None,
    mask: Any = None,
) -> Optimizer:
    r"""Distance over Weighted Gradients (DoWG): DoG with the gradients weighted by the squared
    distance when they are summed.

    .. math::
        \bar r_t^2 = \max\bigl(\bar r_{t-1}^2, \lVert x_t - x_0\rVert^2\bigr), \qquad
        v_t = v_{t-1} + \bar r_t^2 \lVert g_t\rVert^2, \qquad
        x_{t+1} = x_t - \alpha_t \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon}\, g_t

    (:math:`\bar r_0^2` = ``init_estim_sq_dist``, or ``eps``). Knobs: η = α_t × DoWG's step
    (:func:`gradtx.scale_by_dowg`); g and σ are not turned. Same arguments and chain as
    ``optax.contrib.dowg``, equal updates. ``update`` needs ``params``.

    Args:
      learning_rate: α_t, a float or a schedule (1: the paper's DoWG).
      init_estim_sq_dist: :math:`\bar r_0^2`; ``None``: ``eps``.
      eps: ε added to :math:`\sqrt{v_t}` (and the default :math:`\bar r_0^2`).
      weight_decay: λ, coupled (added to the gradient); ``None`` for none.
      mask: the leaves λ applies to.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.dowg(init_estim_sq_dist=0.25, eps=0.0)
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
      >>> [round(x, 4) for x in u["w"].tolist()]  # −r̄²/(r̄·‖g‖)·g, r̄ = 0.5, ‖g‖ = 5
      [-0.3, -0.4]

    References:
      Khaled, Mishchenko & Jin, *DoWG Unleashed: An Efficient Universal Parameter-Free
      Gradient Descent Method*, NeurIPS 2023. https://arxiv.org/abs/2305.16284
    """
    with naming("dowg"):
        core = scale_by_dowg(init_estim_sq_dist, eps)
        return _with_decay(weight_decay, mask, core, learning_rate, "dowg")
