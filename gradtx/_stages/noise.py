"""Annealed Gaussian gradient noise (``optax.add_noise``): ``u = g + N(0, η/t^γ)``."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core.numerics import compute_dtype
from .._core.placement import place_like
from .._core.stage import Stage, increment
from .._core.state import State
from .._core.struct import hyper, resolve, static
from .._core.tree import TransformError, flatten

__all__ = ["AddNoise", "add_noise"]


def _key_fields(key: Any) -> tuple[Any, str | None]:
    """A seed or a concrete typed PRNG key as static data: ``(int seed, None)`` or
    ``(tuple of the key's uint32 words, implementation name)``."""
    if isinstance(key, (int, jnp.integer)) and not isinstance(key, bool):
        return int(key), None
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if isinstance(key, jax.core.Tracer) or key.shape != ():
            raise TypeError("gradtx.add_noise: key must be one concrete PRNG key or an int seed")
        data = jax.random.key_data(key)
        return tuple(int(w) for w in jax.device_get(data).ravel()), str(jax.random.key_impl(key))
    raise TypeError(
        f"gradtx.add_noise: key must be an int seed or a jax.random.key, got {type(key).__name__}"
    )


class AddNoise(Stage):
    r"""Adds annealed Gaussian noise to every gradient entry.

    .. math::
        u_t = g_t + \sigma_t\,\xi_t, \qquad \sigma_t^2 = \frac{\eta}{t^{\gamma}},
        \qquad \xi_t \sim \mathcal N(0, I)

    with ``t`` the 1-based step. The noise follows optax's draws exactly: the state's key is
    split into the next key and a sample key, which is split into one key per (non-``None``)
    leaf, each leaf drawing ``jax.random.normal`` of its shape (leaves of one shape in one
    vmapped draw, which gives the same numbers: one random op per shape, not per leaf). It is
    drawn in the compute dtype (at least float32) and the sum is cast back to the gradient's
    dtype.

    State: ``count`` (int32) and ``key`` (the raw ``uint32`` words of the PRNG key,
    ``jax.random.key_data``; optax keeps a typed key named ``rng_key``). A :class:`~gradtx.Stage`
    whose ``update`` runs on the whole tree (the draws depend on the leaf's index).

    References:
      Neelakantan et al., *Adding Gradient Noise Improves Learning for Very Deep Networks*,
      2015. https://arxiv.org/abs/1511.06807
    """

    name = "add_noise"
    needs_step = True
    eta: float = hyper(0.01, "nonnegative")
    gamma: float = hyper(0.55, "any")
    seed: Any = static(0)
    impl: str | None = static(None)

    def _key(self) -> jax.Array:
        if self.impl is None:
            return jax.random.key(self.seed)
        data = jnp.asarray(self.seed, jnp.uint32)
        return jax.random.wrap_key_data(data, impl=self.impl)

    def init(self, params: Any) -> State:
        count = super().init(params)  # checks the params; the count
        return State({**count, "key": place_like(params, jax.random.key_data(self._key()))})

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        """The whole tree at once (not per leaf as a :class:`Stage`): a key per leaf."""
        self._check_update_args(updates, state, params, extra)
        if set(state) != {"count", "key"}:
            raise TransformError(
                f"gradtx.{self.name}: state is not this transformation's state (expected "
                f"entries ['count', 'key'], got {list(state)})"
            )
        count = increment(state["count"])
        raw = jax.random.wrap_key_data(state["key"], impl=jax.random.key_impl(self._key()))
        key, sample = jax.random.split(raw)
        leaves, treedef = flatten(updates)
        present = [i for i, (_, g) in enumerate(leaves) if g is not None]
        keys = jax.random.split(sample, max(len(present), 1))
        hp = resolve(self, state["count"])  # eta and gamma may be schedules of the step
        std = jnp.sqrt(hp.eta / count.astype(jnp.float32) ** hp.gamma)
        out = [g for _, g in leaves]
        # Leaves of one shape and compute dtype draw together: a vmap of the normal over their
        # keys gives each leaf the draw of its own key (one random op per shape, not per leaf).
        groups: dict[tuple, list[int]] = {}
        for j, i in enumerate(present):
            groups.setdefault((out[i].shape, compute_dtype(out[i].dtype)), []).append(j)
        for (shape, cdt), js in groups.items():
            draw = functools.partial(jax.random.normal, shape=shape, dtype=cdt)
            noise = jax.vmap(draw)(keys[np.asarray(js)])
            for row, j in enumerate(js):
                g = out[present[j]]
                out[present[j]] = (g.astype(cdt) + std.astype(cdt) * noise[row]).astype(g.dtype)
        new = State({"count": count, "key": jax.random.key_data(key)})
        return treedef.unflatten(out), new


def add_noise(eta: float, gamma: float, key: Any = None, *, seed: int | None = None) -> AddNoise:
    """Adds Gaussian noise of variance ``eta / t**gamma`` to the updates (``optax.add_noise``).

    Args:
      eta: η, the variance at the first step.
      gamma: γ, the decay exponent of the variance.
      key: an int seed or a ``jax.random.key`` (concrete: it is static configuration);
        ``None``: seed 0, as optax.
      seed: optax's deprecated spelling of an int ``key``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.add_noise(0.01, 0.55, key=0)
      >>> params = {"w": jnp.zeros(3)}
      >>> u, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
      >>> bool(jnp.all(jnp.abs(u["w"]) < 1.0)), int(state.count)
      (True, 1)
    """
    if seed is not None:
        if key is not None:
            raise ValueError("gradtx.add_noise: give key or seed, not both")
        msg = 'gradtx.add_noise: "seed" is deprecated, use "key"'
        warnings.warn(msg, DeprecationWarning, stacklevel=2)
        key = seed
    seed_or_words, impl = _key_fields(0 if key is None else key)
    return AddNoise(eta, gamma, seed_or_words, impl)
