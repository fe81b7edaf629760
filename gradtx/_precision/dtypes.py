"""``with_state_dtypes``: the storage dtype of every state slot, by name, for any transformation.

gradtx's one spelling of a state-dtype policy is a mapping from slot name to dtype::

    tx = gradtx.with_state_dtypes(gradtx.adamw(1e-3), {"mu": jnp.bfloat16, "nu": jnp.bfloat16})

It works on every stateful transformation, gradtx's (chains, named optimizers, wrappers) and
optax's alike, because it acts on the state, not on the rule. A slot is an entry of a named state
(:class:`gradtx.State`, or the fields of optax's state tuples) that is not itself a state: its
name is the entry's name (``mu``, ``nu``, ``acc``, ``mini_step`` ...). Per step::

    s32     = every slot named in the mapping, cast to float32 (exact)
    u, s32' = inner.update(g, s32, params)            # arithmetic in float32 or wider
    s'      = s32' rounded to each slot's storage dtype (round to nearest, or stochastically)

so the arithmetic is float32 or wider whatever the storage (and the hyperparameters, computed
in the rule, stay float32 for bfloat16 models).
A value of the mapping may also be :func:`gradtx.int8_blocks` (``"mu": int8_blocks(),
"nu": int8_blocks(signed=False)``): that slot is stored as 8-bit codes with one float32 scale
per block (:mod:`gradtx._precision.quantized`), dequantised to float32 in the first line
above and quantised again in the last (the ``rounding`` applies to it too).
Defaults, without a policy: every slot is stored in its parameter's dtype (optax's default too;
``mu_dtype``, kept on the optimizers where optax has it, sets ``mu`` alone), step counters are
int32; ``Optimizer.describe()["state_dtypes"]`` and :func:`gradtx.memory_report` show them.

``rounding="stochastic"`` rounds each narrowed slot up or down at random with the probabilities
that keep it unbiased (:mod:`gradtx._core.rounding`); the key is ``fold_in(fold_in(key, count),
leaf)``, deterministic per step and leaf, from a ``key`` (raw ``uint32`` key data, a plain
array in checkpoints) and a ``count`` in the state. A bfloat16 second moment with round to
nearest ratchets
(each ``β₂·v + (1 − β₂)·g²`` step is a relative change of ~1e-3, below bfloat16's half ulp of
2e-3, so it rounds to whichever neighbour is nearer and the drift does not average out);
stochastic rounding keeps ``E[v]`` on the float32 value (tests/test_state_dtypes.py measures it).

References: Zamirai et al. 2020, "Revisiting BFloat16 Training"; optax issue #1552 (nu_dtype).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .._core.chain import as_inner
from .._core.numerics import compute_dtype
from .._core.rounding import leaf_key, stochastic_round
from .._core.stage import increment, place_like, scalar_like
from .._core.state import State, builder, with_builder
from .._core.struct import static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError
from .._wrappers.common import check_args
from .quantized import Int8Blocks

__all__ = ["WithStateDtypes", "with_state_dtypes", "map_slots"]

_ROUNDINGS = ("nearest", "stochastic")


def _is_state_tuple(x: Any) -> bool:
    """optax's state tuples (``ScaleByAdamState`` ...): namedtuples, and tuples of states."""
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _is_container(x: Any) -> bool:
    if isinstance(x, State) or _is_state_tuple(x):
        return True
    # a chain's tuple of states (optax.chain), not a params tree that happens to be a tuple
    return (
        isinstance(x, (tuple, list))
        and len(x) > 0
        and all(isinstance(e, State) or _is_state_tuple(e) or e == () for e in x)
    )


def map_slots(state: Any, fn: Callable[[str, Any], Any]) -> Any:
    """``state`` with every slot ``v`` named ``n`` replaced by ``fn(n, v)`` (see the module
    docstring for what a slot is); the containers and their builder records are kept."""
    if isinstance(state, State):
        new = State(
            {k: map_slots(v, fn) if _is_container(v) else fn(k, v) for k, v in state.items()}
        )
        return with_builder(new, builder(state))
    if _is_state_tuple(state):
        return type(state)(
            *(
                map_slots(v, fn) if _is_container(v) else fn(k, v)
                for k, v in zip(state._fields, state)
            )
        )
    if _is_container(state):
        return type(state)(map_slots(v, fn) for v in state)
    return state


def _float_leaves(fn: Callable[[jax.Array], Any], tree: Any) -> Any:
    def one(x: Any) -> Any:
        if x is None or not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            return x
        return fn(x)

    return jax.tree_util.tree_map(one, tree, is_leaf=lambda x: x is None)


class WithStateDtypes(GradientTransformation):
    """``inner`` with the slots named in ``dtypes`` stored in those dtypes; see the module."""

    inner: Any = None
    dtypes: Any = static(None)
    rounding: str = static("nearest")
    seed: int = static(0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_inner(self.name, self.inner))
        raw = self.dtypes
        if isinstance(raw, tuple) and all(isinstance(e, tuple) and len(e) == 2 for e in raw):
            raw = dict(raw)  # the stored form (rebuilt by tree_unflatten or replace)
        if not isinstance(raw, Mapping) or not raw:
            raise TypeError(
                f"gradtx.{self.name}: dtypes must be a non-empty mapping slot name -> dtype, "
                f"e.g. {{'nu': jnp.bfloat16}}, got {raw!r}"
            )
        checked: dict[str, Any] = {}
        for k, v in raw.items():
            if isinstance(v, Int8Blocks):
                checked[str(k)] = v
                continue
            try:
                dt = jnp.dtype(v)
            except TypeError:
                raise TypeError(
                    f"gradtx.{self.name}: dtypes[{k!r}] = {v!r} is not a dtype or "
                    "gradtx.int8_blocks(...)"
                ) from None
            if not jnp.issubdtype(dt, jnp.floating):
                raise TypeError(
                    f"gradtx.{self.name}: dtypes[{k!r}] must be a real float dtype, got {dt} "
                    "(step counters and other integer slots keep their dtype)"
                )
            checked[str(k)] = dt
        object.__setattr__(self, "dtypes", tuple(sorted(checked.items())))
        if self.rounding not in _ROUNDINGS:
            raise ValueError(
                f"gradtx.{self.name}: rounding must be one of {_ROUNDINGS}, got {self.rounding!r}"
            )
        super().__post_init__()

    @property
    def policy(self) -> dict[str, Any]:
        """``{slot name: storage dtype}``."""
        return dict(self.dtypes)

    def declared_state_dtypes(self) -> dict[str, Any]:
        """The policy, for the conformance kit: these slots are narrower on purpose (a
        quantised slot declares its codes' dtype, ``uint8``)."""
        return {k: v.code_dtype if isinstance(v, Int8Blocks) else v for k, v in self.policy.items()}

    def _store(self, name: str, v: Any) -> Any:
        """Slot ``v`` cast to its storage dtype (round to nearest) if the policy names it."""
        dt = self.policy.get(name)
        if isinstance(dt, Int8Blocks):
            return dt.store(v)
        return v if dt is None else _float_leaves(lambda x: x.astype(dt), v)

    def _inner_init(self, params: Any) -> Any:
        policy = self.policy
        found: set[str] = set()

        def cast(name: str, v: Any) -> Any:
            found.add(name)
            return self._store(name, v)

        state = map_slots(self.inner.init(params), cast)
        unknown = sorted(set(policy) - found)
        if unknown:
            raise TransformError(
                f"gradtx.{self.name}: no state slot named {', '.join(map(repr, unknown))} in "
                f"{getattr(self.inner, 'name', type(self.inner).__name__)}'s state; its slots "
                f"are {sorted(found)}"
            )
        return state

    def init(self, params: Any) -> State:
        entries: dict[str, Any] = {}
        if self.rounding == "stochastic":
            entries["count"] = scalar_like(params, 0, jnp.int32)
            entries["key"] = place_like(params, jax.random.key_data(jax.random.key(self.seed)))
        entries["inner_state"] = self._inner_init(params)
        return State(entries)

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        stochastic = self.rounding == "stochastic"
        needed = ("count", "key", "inner_state") if stochastic else ("inner_state",)
        check_args(self.name, state, needed, updates, params)
        policy = self.policy

        def widen(name: str, v: Any) -> Any:
            spec = policy.get(name)
            if spec is None:
                return v
            if isinstance(spec, Int8Blocks):
                return spec.load(v)

            def up(x: jax.Array) -> jax.Array:
                return x.astype(compute_dtype(x.dtype))

            return _float_leaves(up, v)

        wide = map_slots(state["inner_state"], widen)
        out, new_inner = self.inner.update(updates, wide, params, **extra)
        entries: dict[str, Any] = {}
        narrow = self._store
        if stochastic:
            step = state["count"]
            base = jax.random.wrap_key_data(state["key"])
            counter = itertools.count()  # a leaf index, in map_slots' fixed order

            def narrow(name: str, v: Any) -> Any:
                if name not in policy:
                    return v
                dt = policy[name]
                if isinstance(dt, Int8Blocks):
                    return dt.store(v, leaf_key(base, step, next(counter)))
                return _float_leaves(
                    lambda x: stochastic_round(x, dt, leaf_key(base, step, next(counter))), v
                )

            entries["count"] = increment(step)
            entries["key"] = state["key"]
        entries["inner_state"] = map_slots(new_inner, narrow)
        return out, State(entries)

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, state["inner_state"])]


def with_state_dtypes(
    inner: Any, dtypes: Mapping[str, Any], *, rounding: str = "nearest", seed: int = 0
) -> WithStateDtypes:
    """Stores the state slots named in ``dtypes`` in those dtypes; arithmetic stays float32.

    The exact rule, what a slot is and the defaults are in :mod:`gradtx._precision.dtypes`.

    Args:
      inner: any transformation, gradtx's or optax's.
      dtypes: ``{slot name: dtype}``, e.g. ``{"mu": jnp.bfloat16, "nu": jnp.bfloat16}``; every
        name must be a slot of ``inner``'s state (checked at ``init``, the error lists them).
        A value may be :func:`gradtx.int8_blocks` (8-bit block-quantised storage).
      rounding: ``"nearest"`` (a cast) or ``"stochastic"`` (unbiased; keeps ``count`` and
        ``key`` in the state).
      seed: the seed of the stochastic rounding's key.

    Returns:
      A :class:`WithStateDtypes`; its state is ``State([count, key,] inner_state)``.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.with_state_dtypes(gradtx.adam(1e-3), {"nu": jnp.bfloat16})
      >>> state = tx.init({"w": jnp.ones(3)})
      >>> state.inner_state.knobs.mu["w"].dtype, state.inner_state.knobs.nu["w"].dtype
      (dtype('float32'), dtype(bfloat16))
    """
    return WithStateDtypes(inner, dtypes, rounding, seed)
