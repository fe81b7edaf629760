r"""``round_params``: bfloat16 and float16 parameters updated without losing small updates.

A bfloat16 parameter ``θ`` updated by a small ``u`` loses it: ``θ ⊕ u`` (the sum rounded to
nearest, what ``apply_updates`` computes) is ``θ`` again whenever ``|u| < ulp(θ)/2`` -- for
``θ ≈ 1`` every ``|u| < 2⁻⁸ ≈ 0.004``, the size of every Adam step at a small learning rate --
so training stalls. This wrapper rounds the *new parameter* itself and returns the update that
lands on it. For each leaf whose param is bfloat16 or float16, in float32 (``f32``)::

    u, inner_state = inner.update(g, inner_state, θ)
    t  = f32(θ) + f32(u)                  (+ f32(c) with "kahan")
    θ' = SR(t)  with "stochastic":  hi with probability (t − lo)/(hi − lo), lo otherwise,
                                    lo ≤ t ≤ hi the two neighbours of t in θ's dtype: E[θ'] = t
    θ' = RN(t)  with "kahan":       to nearest, and   c' = RN(t − f32(θ ⊕ u'))
    u' = RN(f32(θ') − f32(θ))       in θ's dtype: the update returned

``RN`` rounds to nearest even in θ's dtype, and every rounding is written so that XLA cannot
drop it (``lax.reduce_precision``, not a pair of casts, which XLA may fuse away where it allows
excess precision). Float32 and wider leaves get ``u`` unchanged, draw no random bits and keep
no buffer; ``None`` leaves pass through.

Exactness of the apply. ``θ ⊕ u' = θ'`` exactly (with ``gradtx.apply_updates``,
``optax.apply_updates`` and ``flax.nnx.Optimizer`` alike) whenever ``θ' − θ`` is a number of
θ's dtype, which holds for ``θ/2 ≤ θ' ≤ 2θ`` (Sterbenz's lemma): every step that changes a
parameter by less than half of itself. A larger step (a parameter that changes sign, halves or
doubles at once) may have no update in θ's dtype that reaches ``θ'``; it then gets ``θ ⊕ u'``,
within ``2·ε·|θ' − θ|`` of ``θ'`` (``ε`` the dtype's epsilon): an error of the step, not of the
parameter, so such a step cannot stall. ``"kahan"`` sets ``c'`` from ``θ ⊕ u'``, the value
applied, so it loses nothing there either (tests/test_bf16_params.py checks both bit for bit).

State: ``State(count, key, inner_state)`` for ``"stochastic"`` (``key`` is the raw ``uint32``
data of ``jax.random.key(seed)``; leaf ``i`` of the params draws its bits at step ``count``
with ``leaf_key(key, count, i)``, so a step is deterministic, leaves draw differently, and the
bits are generated where each shard of the leaf lives); ``State(compensation, inner_state)``
for ``"kahan"`` (``compensation`` has the params' structure, in each param's dtype at bfloat16
and float16 leaves, ``None`` elsewhere).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.rounding import leaf_key, nearest, stochastic_round
from .._core.stage import increment, place_like, scalar_like
from .._core.state import State
from .._core.struct import static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError, check_structure, flatten, path_str
from .._wrappers.common import as_inner, check_args

__all__ = ["RoundParams", "round_params", "nearest"]

#: The rounding methods, and the state entries each keeps besides ``inner_state``.
_ENTRIES: dict[str, tuple[str, ...]] = {"stochastic": ("count", "key"), "kahan": ("compensation",)}
_NARROW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class RoundParams(GradientTransformation):
    """``inner``, with each bfloat16/float16 param's new value rounded from the float32 sum;
    see :func:`round_params`."""

    inner: Any = None
    rounding: str = static("stochastic")
    seed: int = static(0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_inner(self.name, self.inner))
        if not isinstance(self.rounding, str) or self.rounding not in _ENTRIES:
            raise ValueError(
                f"gradtx.{self.name}: rounding must be one of {list(_ENTRIES)}, got "
                f"{self.rounding!r}"
            )
        s = self.seed
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32:
            raise ValueError(f"gradtx.{self.name}: seed must be an int in [0, 2**32), got {s!r}")
        super().__post_init__()

    @property
    def entries(self) -> tuple[str, ...]:
        return (*_ENTRIES[self.rounding], "inner_state")

    def _narrow(self, path: Any, p: Any) -> bool:
        """Whether the param ``p`` at ``path`` is rounded here (bfloat16, float16)."""
        if p is None:
            return False
        dtype = jnp.dtype(p.dtype)
        if dtype in _NARROW:
            return True
        if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
            raise TransformError(
                f"gradtx.{self.name}: at {path_str(path)}, the param is {dtype.name}; only "
                "bfloat16 and float16 params are rounded (float32 and wider pass through)"
            )
        return False

    def _compensation_like(self, params: Any) -> Any:
        """Zeros at the narrow leaves of ``params``, ``None`` elsewhere."""
        leaves, treedef = flatten(params)
        return treedef.unflatten(
            [jnp.zeros_like(p) if self._narrow(path, p) else None for path, p in leaves]
        )

    def init(self, params: Any) -> State:
        entries: dict[str, Any] = {}
        if self.rounding == "stochastic":
            entries["count"] = scalar_like(params, 0, jnp.int32)
            entries["key"] = place_like(params, jax.random.key_data(jax.random.key(self.seed)))
        else:
            entries["compensation"] = self._compensation_like(params)
        entries["inner_state"] = self.inner.init(params)
        return State(entries)

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        if params is None:
            raise TransformError(
                f"gradtx.{self.name}: update needs params=... (the new params are rounded "
                "from params + updates), got None"
            )
        check_args(self.name, state, self.entries, updates, params)
        out, inner_state = self.inner.update(updates, state["inner_state"], params, **extra)
        check_structure(self.name, "params", params, "the inner transformation's updates", out)
        leaves, treedef = flatten(params)
        ups = treedef.flatten_up_to(out)
        kahan = self.rounding == "kahan"
        comps: list[Any] = [None] * len(leaves)
        base = None
        if kahan:  # one buffer per bfloat16/float16 leaf, None elsewhere
            narrow = [p if self._narrow(path, p) else None for path, p in leaves]
            where = "params' bfloat16/float16 leaves"
            comp = state["compensation"]
            check_structure(self.name, where, treedef.unflatten(narrow), "state.compensation", comp)
            comps = treedef.flatten_up_to(comp)
        else:
            base = jax.random.wrap_key_data(state["key"])
        new_ups: list[Any] = []
        new_comps: list[Any] = []
        for i, ((path, p), u, c) in enumerate(zip(leaves, ups, comps)):
            if not self._narrow(path, p):  # float32 and wider, None: untouched
                new_ups.append(u)
                new_comps.append(None)
                continue
            key = None if base is None else leaf_key(base, state["count"], i)
            u, c = _round_leaf(p, u, c, key)
            new_ups.append(u)
            new_comps.append(c)
        if kahan:
            entries = {"compensation": treedef.unflatten(new_comps)}
        else:
            entries = {"count": increment(state["count"]), "key": state["key"]}
        return treedef.unflatten(new_ups), State({**entries, "inner_state": inner_state})

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, state["inner_state"])]


def _round_leaf(
    p: jax.Array, u: jax.Array, c: jax.Array | None, key: jax.Array | None
) -> tuple[jax.Array, jax.Array | None]:
    """The update (in ``p``'s dtype) and the new compensation of one narrow leaf: the rule of
    the module docstring, stochastic with ``key``, Kahan with ``c``."""
    dtype = p.dtype
    p32 = p.astype(jnp.float32)
    t = p32 + jnp.asarray(u).astype(jnp.float32)
    if c is not None:
        t = t + c.astype(jnp.float32)
    if key is not None:  # a value of dtype: the cast back to float32 is exact
        new32 = stochastic_round(t, dtype, key).astype(jnp.float32)
    else:
        new32 = nearest(t, dtype)
    step32 = nearest(new32 - p32, dtype)
    step = step32.astype(dtype)  # exact: step32 is a value of dtype
    if c is None:
        return step, None
    applied = nearest(p32 + step32, dtype)  # θ ⊕ u', as apply_updates computes it
    comp = t - applied  # exact in float32 (Sterbenz) where t and applied are close
    comp = jnp.where(jnp.isfinite(comp), nearest(comp, dtype), jnp.zeros_like(comp))
    return step, comp.astype(dtype)


def round_params(inner: Any, *, rounding: str = "stochastic", seed: int = 0) -> RoundParams:
    r"""Updates bfloat16/float16 params without dropping the updates round to nearest loses.

    It rounds the new *params* from the float32 sum, :math:`\theta_{t+1} =
    \operatorname{round}(\theta_t + u_t)`, instead of letting ``apply_updates`` add
    :math:`u_t` in bfloat16 and drop every :math:`|u_t| < \operatorname{ulp}(\theta_t)/2`, and
    returns the update :math:`u'_t = \theta_{t+1} - \theta_t` (in the param dtype; it must
    therefore be the outermost transformation, the one whose updates are applied). For a param
    narrower than float32 and the update :math:`u_t` of ``inner``:

    .. math::

        \tau_t = \theta_t + u_t \; (+\, c_t), \qquad
        \theta_{t+1} = \operatorname{round}(\tau_t), \qquad
        c_{t+1} = \tau_t - \theta_{t+1} \;(\text{kahan})

    with ``round`` stochastic (up with probability ``(τ − lo)/(hi − lo)`` between the two
    neighbours, so :math:`\mathbb{E}[\theta_{t+1}] = \tau_t`) or, for ``"kahan"``, to nearest
    with the rounding error carried to the next step. Float32 and wider params get
    :math:`u_t` unchanged. The exact rule, and the steps for which ``apply_updates`` cannot
    land exactly on :math:`\theta_{t+1}` (a param that changes sign or halves in one step),
    are in :mod:`gradtx._precision.param_rounding`.

    Args:
      inner: a gradtx or optax transformation (e.g. ``gradtx.adamw(1e-4)``).
      rounding: ``"stochastic"`` (no memory per param, unbiased, random) or ``"kahan"`` (a
        compensation buffer in the param dtype: one more param-sized array; deterministic).
      seed: the seed of the stochastic rounding's key (``jax.random.key(seed)``).

    Returns:
      A :class:`RoundParams`; its ``update`` needs ``params``. Its state is
      ``State(count, key, inner_state)`` or ``State(compensation, inner_state)``.

    Example:
      >>> params = {"w": jnp.ones(1000, jnp.bfloat16)}
      >>> grads = {"w": jnp.full(1000, -1e-3, jnp.bfloat16)}  # sgd(0.1): u = 1e-4 < ulp(1)/2
      >>> for tx in (gradtx.sgd(0.1), gradtx.round_params(gradtx.sgd(0.1)),
      ...            gradtx.round_params(gradtx.sgd(0.1), rounding="kahan")):
      ...     p, state = params, tx.init(params)
      ...     for _ in range(100):  # exact: 1 + 100·1e-4 = 1.01
      ...         u, state = tx.update(grads, state, p)
      ...         p = gradtx.apply_updates(p, u)
      ...     print(f"{float(jnp.mean(p['w'].astype(jnp.float32))):.3f}")
      1.000
      1.010
      1.008

    Warning:
      The key is in the state and advances with ``count``: a step replayed from the same state
      rounds the same way, and ``seed`` only matters at ``init``. torchao's low-bit AdamW
      rounds stochastically inside its own step (``bf16_stochastic_round=True``); this wraps
      any transformation and returns an update that ``optax.apply_updates`` applies as is.
      optax has no equivalent. Each bfloat16 leaf draws its bits with ``jax.random.bits``
      (threefry): on CPU that adds ~0.5 s of compile time per leaf.

    References:
      Kahan, "Further remarks on reducing truncation errors", CACM 8(1), 1965.
      Gupta et al., `Deep learning with limited numerical precision
      <https://arxiv.org/abs/1502.02551>`_, ICML 2015.
      Zamirai et al., `Revisiting BFloat16 training <https://arxiv.org/abs/2010.06192>`_, 2020.
    """
    return RoundParams(inner, rounding, seed)
