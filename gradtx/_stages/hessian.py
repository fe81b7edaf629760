r"""Estimators of the Hessian's diagonal, the curvature of :func:`gradtx.sophia`.

Each is a transformation ``update(grads, state, params, obj_fn=f) -> (ĥ, state)`` that reads
the objective ``f(params) -> scalar`` (optax's name ``obj_fn``, declared in ``requires``, so a
step without it is an error naming the transformation), not the gradients:

- :func:`hutchinson_estimator_diag_hessian` (Sophia-H): :math:`\hat h = u \odot (H u)` with
  :math:`u` Rademacher, one Hessian-vector product (``jax.jvp`` of ``jax.grad``); unbiased,
  :math:`\mathbb E[\hat h] = \operatorname{diag} H`.
- :func:`gnb_estimator_diag_hessian` (Sophia-G): Gauss–Newton–Bartlett,
  :math:`\hat h = B\, \hat g \odot \hat g` with :math:`\hat g` the gradient of ``obj_fn``,
  the mini-batch loss on labels *sampled from the model's own predictions*.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._core.numerics import compute_dtype
from .._core.placement import place_like
from .._core.state import State
from .._core.struct import hyper, static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError, check_float_leaves, check_structure, is_none

__all__ = [
    "HutchinsonEstimator",
    "GnbEstimator",
    "hutchinson_estimator_diag_hessian",
    "gnb_estimator_diag_hessian",
    "check_state",
]


def check_state(owner: str, state: Any, entries: tuple[str, ...]) -> None:
    """Raises :class:`TransformError` naming ``owner`` unless ``state`` has ``entries``."""
    if not isinstance(state, State) or any(e not in state for e in entries):
        raise TransformError(
            f"gradtx.{owner}: state is not this transformation's state (expected entries "
            f"{list(entries)}, got {type(state).__name__})"
        )


def _objective(owner: str, updates: Any, params: Any, extra: dict) -> Any:
    """``obj_fn`` from ``extra``, after the checks of an estimator's arguments."""
    if params is None:
        raise TransformError(f"gradtx.{owner}: update needs params=..., got None")
    check_float_leaves(owner, "updates", updates)
    check_structure(owner, "updates", updates, "params", params)
    fn = extra.get("obj_fn")
    if fn is None or not callable(fn):
        raise TransformError(
            f"gradtx.{owner}: update needs the keyword argument obj_fn, the objective "
            f"(obj_fn(params) -> scalar), got {type(fn).__name__}"
        )
    return fn


def _seed(value: Any) -> tuple[tuple[int, ...], str]:
    """A seed or a concrete PRNG key as static data: the key's uint32 words and its impl."""
    if value is None:
        value = 0
    if isinstance(value, (int, jnp.integer)) and not isinstance(value, bool):
        value = jax.random.PRNGKey(int(value))
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            "gradtx.hutchinson_estimator_diag_hessian: random_seed must be concrete (it is "
            "static configuration), got a tracer"
        )
    try:
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            return tuple(int(w) for w in jax.random.key_data(value).ravel()), str(
                jax.random.key_impl(value)
            )
        words = tuple(int(w) for w in jnp.asarray(value, jnp.uint32).ravel())
    except (AttributeError, TypeError, ValueError):
        words = ()
    if len(words) != 2:
        raise TypeError(
            "gradtx.hutchinson_estimator_diag_hessian: random_seed must be an int, a "
            f"jax.random.key or a raw jax.random.PRNGKey, got {value!r}"
        )
    return words, "threefry2x32"


class HutchinsonEstimator(GradientTransformation):
    r"""Hutchinson's estimate of the Hessian's diagonal: :math:`\hat h = u \odot (\nabla^2 f\, u)`
    with :math:`u` Rademacher (±1) of the params' shapes; see
    :func:`hutchinson_estimator_diag_hessian`.

    Attributes:
      seed: the uint32 words of the first PRNG key (static).
      impl: the key's PRNG implementation.
    """

    name = "hutchinson_estimator_diag_hessian"
    requires: ClassVar[tuple[str, ...]] = ("obj_fn",)
    seed: tuple = static((0, 0))
    impl: str = static("threefry2x32")

    def init(self, params: Any) -> State:
        check_float_leaves(self.name, "params", params)
        return State(key=place_like(params, jnp.asarray(self.seed, jnp.uint32)))

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_state(self.name, state, ("key",))
        f = _objective(self.name, updates, params, extra)
        raw = jax.random.wrap_key_data(state["key"], impl=self.impl)
        key, sample = jax.random.split(raw)
        treedef: Any
        leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=is_none)
        present = [i for i, p in enumerate(leaves) if p is not None]
        signs: list[Any] = [None] * len(leaves)
        if present:  # optax's draws: one key per (non-None) leaf, Rademacher in float32
            keys = jax.random.split(sample, len(present))
            for k, i in zip(keys, present):
                p = leaves[i]
                draw = jax.random.rademacher(k, jnp.shape(p), jnp.float32)
                signs[i] = draw.astype(jnp.result_type(p))
        u = treedef.unflatten(signs)
        hvp = jax.jvp(jax.grad(f), (params,), (u,))[1]
        h = jax.tree_util.tree_map(
            lambda a, s: None if a is None else (a * s).astype(a.dtype), hvp, u, is_leaf=is_none
        )
        return h, State(key=jax.random.key_data(key))


class GnbEstimator(GradientTransformation):
    r"""The Gauss–Newton–Bartlett estimate :math:`\hat h = B\,\hat g \odot \hat g`, with
    :math:`\hat g = \nabla` ``obj_fn`` (the loss on labels sampled from the model); see
    :func:`gnb_estimator_diag_hessian`.

    Attributes:
      batch_size: :math:`B`, the number of examples ``obj_fn`` averages over.
    """

    name = "gnb_estimator_diag_hessian"
    requires: ClassVar[tuple[str, ...]] = ("obj_fn",)
    batch_size: float = hyper(check="positive")

    def init(self, params: Any) -> State:
        check_float_leaves(self.name, "params", params)
        return State()

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        grads = jax.grad(_objective(self.name, updates, params, extra))(params)

        def one(g: Any) -> Any:
            cdt = compute_dtype(g.dtype)
            g32 = g.astype(cdt)
            return (jnp.asarray(self.batch_size, cdt) * g32 * g32).astype(g.dtype)

        return jax.tree_util.tree_map(
            lambda g: None if g is None else one(g), grads, is_leaf=is_none
        ), state


def hutchinson_estimator_diag_hessian(random_seed: Any = None) -> HutchinsonEstimator:
    r"""Hutchinson's estimator of the Hessian's diagonal, as
    ``optax.contrib.hutchinson_estimator_diag_hessian`` (same argument, same draws).

    .. math::
        \hat h = u \odot (\nabla^2 f(\theta)\, u), \qquad u_i \in \{-1, +1\}
        \text{ uniformly}, \qquad \mathbb E[\hat h] = \operatorname{diag} \nabla^2 f(\theta)

    One Hessian-vector product per call (``jax.jvp`` of ``jax.grad(obj_fn)``), with ``obj_fn``
    given to ``update`` (declared in ``requires``). The state's ``key`` (raw ``uint32`` key
    data) is split as optax's: the next key and a sample key, split into one key per
    (non-``None``) leaf; each leaf's signs are drawn in float32 and cast to its dtype. The
    first argument of ``update`` (the gradients) is not read.

    Args:
      random_seed: the first key: a raw ``jax.random.PRNGKey`` (optax's form), a
        ``jax.random.key`` or an int seed; ``None``: ``PRNGKey(0)``, as optax.

    Returns:
      A :class:`HutchinsonEstimator`; its state is ``State(key)``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> f = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 2.0, 3.0]) * p["w"] ** 2)
      >>> tx = gradtx.hutchinson_estimator_diag_hessian()
      >>> params = {"w": jnp.ones(3)}
      >>> h, state = tx.update(params, tx.init(params), params, obj_fn=f)
      >>> h["w"].tolist()  # exact for a diagonal Hessian: u ⊙ (a ⊙ u) = a
      [1.0, 2.0, 3.0]

    References:
      Hutchinson, *A stochastic estimator of the trace of the influence matrix for Laplacian
      smoothing splines*, 1989. Liu et al., *Sophia*, 2023 (Sophia-H).
    """
    words, impl = _seed(random_seed)
    return HutchinsonEstimator(words, impl)


def gnb_estimator_diag_hessian(batch_size: float) -> GnbEstimator:
    r"""The Gauss–Newton–Bartlett estimator of the Hessian's diagonal (Sophia-G).

    .. math::
        \hat h = B\; \hat g \odot \hat g, \qquad
        \hat g = \nabla_\theta \frac{1}{B} \sum_{b=1}^{B} \ell\big(f(\theta, x_b),\ \hat y_b\big),
        \quad \hat y_b \sim \operatorname{softmax} f(\theta, x_b)

    ``update(..., obj_fn=f)`` needs ``f(params)``: the mean loss of the mini-batch of ``B``
    examples on labels :math:`\hat y_b` *sampled from the model's predictions* (not the data's
    labels; draw them with a key of your own inside ``f``). Its expectation is the diagonal of
    the Gauss–Newton matrix for losses of exponential-family models (cross-entropy). One
    gradient per call; the first argument of ``update`` is not read.

    Args:
      batch_size: :math:`B`, the number of examples ``obj_fn`` averages over.

    Returns:
      A :class:`GnbEstimator` (stateless).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.gnb_estimator_diag_hessian(batch_size=4)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> h, _ = tx.update(params, tx.init(params), params, obj_fn=lambda p: jnp.sum(p["w"]))
      >>> h["w"].tolist()  # 4 · 1²
      [4.0, 4.0]

    References:
      Liu, Li, Hall, Liang and Ma, *Sophia: A Scalable Stochastic Second-order Optimizer for
      Language Model Pre-training*, ICLR 2024, Algorithm 2. https://arxiv.org/abs/2305.14342
    """
    return GnbEstimator(batch_size)
