"""Shared test registries: every named optimizer with test hyperparameters, and test problems.

Import from a test module in ``tests/`` as ``import helpers`` (``tests/`` has no
``__init__.py``, so pytest puts it on ``sys.path``).

``OPTIMIZERS``
  A list of ``(id, factory)``; ``factory()`` returns a fresh gradtx optimizer. Every named
  optimizer is covered, with non-default but sensible hyperparameters (chosen so that each one,
  ``eps`` included, changes the result by more than the 1e-5 the oracle tests resolve), plus
  the important variants (Nesterov, centred, averaged, masked, factored, ...). Use it with
  ``pytest.mark.parametrize("name, factory", OPTIMIZERS)``, or ``OPTIMIZER_IDS`` for the ids.

``SPECS``
  ``{id: (function name in gradtx, keyword arguments)}``: what each factory calls, so that a
  reference implementation can be built with the very same hyperparameters. ``mask``-like
  arguments are :func:`decay_mask` (a function of the params).

``PROBLEMS``
  A list of :class:`Problem` (``name``, ``init()`` -> params, ``loss(params)`` -> scalar,
  ``solution`` -> params at the minimum): an elongated quadratic (condition number 1000),
  Rosenbrock's function and a least-squares problem on a random mixed pytree.

``random_tree(key)``
  A random float32 pytree of mixed shapes (0-d, vectors, matrices, a 3-d array) nested in
  dicts and a list.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import gradtx

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_IDS",
    "SPECS",
    "PROBLEMS",
    "Problem",
    "random_tree",
    "tree_shapes",
    "decay_mask",
]

# --- pytrees ------------------------------------------------------------------------------------

#: The shapes of :func:`random_tree`, as a pytree of tuples. The 6x5 matrix and the 3x4x5 array
#: are factored by Adafactor with ``min_dim_size_to_factor=4``; the 2x3 matrix is not.
_SHAPES: dict[str, Any] = {
    "scalar": (),
    "vector": (7,),
    "dense": {"kernel": (6, 5), "bias": (5,)},
    "blocks": [(3, 4, 5), {"small": (2, 3), "gain": ()}],
}


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def tree_shapes() -> Any:
    """The pytree of shapes that :func:`random_tree` fills (tuples as leaves)."""
    return jax.tree_util.tree_map(lambda s: s, _SHAPES, is_leaf=_is_shape)


def random_tree(key: Any = 0, scale: float = 1.0) -> Any:
    """A random float32 pytree of mixed shapes: standard normal entries times ``scale``.

    Args:
      key: a JAX PRNG key or an int seed.
      scale: multiplies every entry.

    Returns:
      ``{"scalar": (), "vector": (7,), "dense": {"kernel": (6, 5), "bias": (5,)},
      "blocks": [(3, 4, 5), {"small": (2, 3), "gain": ()}]}`` filled with float32 arrays.
    """
    if isinstance(key, int):
        key = jax.random.key(key)
    leaves, treedef = jax.tree_util.tree_flatten(_SHAPES, is_leaf=_is_shape)
    keys = jax.random.split(key, len(leaves))
    arrays = [scale * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, arrays)


def decay_mask(params: Any) -> Any:
    """``True`` for arrays with at least two axes (kernels), ``False`` for scalars and biases.

    The usual weight-decay mask; used as ``mask=`` by the masked optimizers below.
    """
    return jax.tree_util.tree_map(lambda p: np.ndim(p) >= 2, params)


# --- optimizers ---------------------------------------------------------------------------------

#: id -> (gradtx function name, keyword arguments). Values are chosen so that each argument has a
#: visible effect at rtol 1e-5 with gradients of RMS 0.01 .. 10 (e.g. ``eps`` ~1e-3 rather than
#: 1e-8) while staying in the usual range (checked by perturbing each one by 10% in the oracle).
#: β2 is at most 0.99 (0.95 for RAdam) because of float32, not of the algorithms: gradtx's
#: ``1 - β2**t`` is off by up to 7e-6 relative for β2 = 0.999 (8e-7 for 0.99), and RAdam's
#: ``ρ_t = ρ∞ - 2tβ2^t/(1-β2^t)`` cancels ρ∞ ≈ 2000 down to ≈ t, so its rectification is off by
#: ~2e-3 at β2 = 0.999 (as in optax, which computes it in float32 too).
SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("sgd", dict(learning_rate=0.05)),
    "sgd_momentum": ("sgd", dict(learning_rate=0.05, momentum=0.8)),
    "sgd_nesterov": ("sgd", dict(learning_rate=0.05, momentum=0.8, nesterov=True)),
    "sign_sgd": ("sign_sgd", dict(learning_rate=0.01)),
    "adagrad": ("adagrad", dict(learning_rate=0.1, initial_accumulator_value=0.05, eps=1e-3)),
    "adagrad_average": (
        "adagrad",
        dict(learning_rate=0.1, initial_accumulator_value=0.05, eps=1e-3, average=True),
    ),
    "rmsprop": ("rmsprop", dict(learning_rate=0.01, decay=0.95, eps=1e-3, eps_in_sqrt=False)),
    "rmsprop_centered": (
        "rmsprop",
        dict(
            learning_rate=0.01,
            decay=0.95,
            eps=1e-3,
            initial_scale=0.1,
            centered=True,
            eps_in_sqrt=False,
        ),
    ),
    "rmsprop_momentum": (
        "rmsprop",
        dict(learning_rate=0.01, decay=0.95, eps=1e-3, momentum=0.8, eps_in_sqrt=False),
    ),
    "rmsprop_eps_in_sqrt": (
        "rmsprop",
        dict(learning_rate=0.01, decay=0.95, eps=1e-4, eps_in_sqrt=True),
    ),
    "adadelta": ("adadelta", dict(learning_rate=1.0, rho=0.95, eps=1e-4)),
    "adadelta_weight_decay": (
        "adadelta",
        dict(learning_rate=0.5, rho=0.95, eps=1e-4, weight_decay=0.05),
    ),
    "adam": ("adam", dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-5)),
    "adam_eps_root": ("adam", dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-4, eps_root=1e-3)),
    "adamw": (
        "adamw",
        dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-5, weight_decay=0.05, mask=decay_mask),
    ),
    "nadam": ("nadam", dict(learning_rate=0.01, b1=0.85, b2=0.99, eps=1e-5)),
    "nadamw": ("nadamw", dict(learning_rate=0.01, b1=0.85, b2=0.99, eps=1e-5, weight_decay=0.05)),
    "adamax": ("adamax", dict(learning_rate=0.01, b1=0.85, b2=0.99, eps=1e-4)),
    "amsgrad": ("amsgrad", dict(learning_rate=0.01, b1=0.8, b2=0.95, eps=1e-5)),
    "adabelief": ("adabelief", dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-5, eps_root=1e-8)),
    "yogi": (
        "yogi",
        dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-3, initial_accumulator_value=1e-3),
    ),
    "radam": ("radam", dict(learning_rate=0.01, b1=0.8, b2=0.95, eps=1e-5, threshold=5.5)),
    "lion": ("lion", dict(learning_rate=1e-3, b1=0.85, b2=0.98, weight_decay=0.1, mask=decay_mask)),
    "lamb": (
        "lamb",
        dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-5, weight_decay=0.01, mask=decay_mask),
    ),
    "lars": (
        "lars",
        dict(
            learning_rate=0.5,
            weight_decay=1e-3,
            weight_decay_mask=decay_mask,
            trust_coefficient=0.02,
            eps=1e-4,
            momentum=0.8,
        ),
    ),
    "lars_nesterov": (
        "lars",
        dict(
            learning_rate=0.5,
            weight_decay=1e-3,
            trust_coefficient=0.02,
            trust_ratio_mask=decay_mask,
            momentum=0.8,
            nesterov=True,
        ),
    ),
    "adafactor": (
        "adafactor",
        dict(
            learning_rate=0.05,
            min_dim_size_to_factor=4,
            decay_rate=0.7,
            clipping_threshold=0.9,
            momentum=0.8,
            weight_decay_rate=0.01,
        ),
    ),
    "adafactor_unfactored": (
        "adafactor",
        dict(
            learning_rate=0.01,
            factored=False,
            multiply_by_parameter_scale=False,
            clipping_threshold=None,
        ),
    ),
}


def _factory(name: str, kwargs: dict[str, Any]) -> Callable[[], gradtx.Optimizer]:
    return functools.partial(getattr(gradtx, name), **kwargs)


#: ``[(id, factory), ...]``; ``factory()`` builds the optimizer described by ``SPECS[id]``.
OPTIMIZERS: list[tuple[str, Callable[[], gradtx.Optimizer]]] = [
    (i, _factory(name, kwargs)) for i, (name, kwargs) in SPECS.items()
]
OPTIMIZER_IDS: list[str] = [i for i, _ in OPTIMIZERS]


# --- problems -----------------------------------------------------------------------------------


class Problem(NamedTuple):
    """A test problem: ``loss(init())`` is minimised at ``solution`` (``loss(solution) == 0``)."""

    name: str
    init: Callable[[], Any]
    loss: Callable[[Any], jax.Array]
    solution: Any


#: Curvatures of the elongated quadratic: log-spaced from 1 to 1000 (condition number 1000).
_CURVATURES = np.logspace(0, 3, 8).astype(np.float32)


def _quadratic_loss(params: Any) -> jax.Array:
    x = params["x"]
    return 0.5 * jnp.sum(jnp.asarray(_CURVATURES) * x * x)


def _rosenbrock_loss(params: Any) -> jax.Array:
    x, y = params["xy"][0], params["xy"][1]
    return (1.0 - x) ** 2 + 100.0 * (y - x * x) ** 2


#: The minimum of the random-tree problem (a different draw from its starting point).
_TARGET = random_tree(1)


def _tree_loss(params: Any) -> jax.Array:
    diffs = jax.tree_util.tree_map(lambda p, t: jnp.sum((p - t) ** 2), params, _TARGET)
    return 0.5 * sum(jax.tree_util.tree_leaves(diffs))


PROBLEMS: list[Problem] = [
    Problem(
        "quadratic",
        lambda: {"x": jnp.ones(8, jnp.float32)},
        _quadratic_loss,
        {"x": jnp.zeros(8, jnp.float32)},
    ),
    Problem(
        "rosenbrock",
        lambda: {"xy": jnp.array([-1.2, 1.0], jnp.float32)},
        _rosenbrock_loss,
        {"xy": jnp.ones(2, jnp.float32)},
    ),
    Problem("random_tree", lambda: random_tree(0), _tree_loss, _TARGET),
]


#: Modules of gradtx/_optimizers/ that are not a family of named optimizers.
_NOT_FAMILIES = {
    "builder",
    "common",
    "optax_names",
    "optax_names_extra",
    "hyperparams",
    "schedule_free",
}


def named_optimizer_names() -> set[str]:
    """The named optimizers: the ``__all__`` of every family module in gradtx/_optimizers/
    (one file per family), so a new family file is picked up without editing a list."""
    import importlib
    import pkgutil

    import gradtx._optimizers as pkg

    out: set[str] = set()
    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name not in _NOT_FAMILIES:
            names = importlib.import_module(f"{pkg.__name__}.{m.name}").__all__
            out |= {n for n in names if not n.startswith("scale_by_")}  # optax's update-only forms
    return out
