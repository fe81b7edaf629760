"""``migrate``: carry an optimizer state over to a changed model or transformation, by path.

When layers are added, removed, renamed or frozen, or the optimizer is wrapped (groups,
accumulation, averages), the old state does not fit the new ``tx.init(new_params)``. The rule,
for every leaf of the new state::

    slot of a parameter  (its key path ends with a param's path: ``.knobs.mu['dense']['w']``),
    each old slot given to at most one new one:
        kept     from the old slot with the same path,          if shapes agree
                 else from the only old slot with the same slot name and param path
                 (``mu`` of ``['dense']['w']``, wherever the wrapper put it)
        created  (the fresh value of ``init``) otherwise
    any other leaf (step counters, scales), an old one may be given to several (the count of
    every group of a new ``groups``):
        kept     from the old leaf with the same path, or the only old leaf with the same
                 last key (``count``), if shapes agree; created otherwise

Kept values are cast to the new leaf's dtype and placed with its sharding. Old leaves no new
leaf took are *dropped*. The report lists the three.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._core.packed import flat_segments
from .._core.tree import TransformError, is_none

__all__ = ["Migration", "migrate"]


class Migration(NamedTuple):
    """The new state and what :func:`migrate` did: ``kept`` (new path -> old path),
    ``created`` and ``dropped`` (paths of the new and old state)."""

    state: Any
    kept: dict[str, str]
    created: list[str]
    dropped: list[str]

    def __str__(self) -> str:
        lines = [f"kept {len(self.kept)}, created {len(self.created)}, dropped {len(self.dropped)}"]
        lines += [
            f"  kept     {new}" + (f" <- {old}" if old != new else "")
            for new, old in self.kept.items()
        ]
        lines += [f"  created  {p}" for p in self.created]
        lines += [f"  dropped  {p}" for p in self.dropped]
        return "\n".join(lines)


def _param_paths(params: Any) -> set[tuple]:
    return {
        tuple(p)
        for p, x in jax.tree_util.tree_leaves_with_path(params, is_leaf=is_none)
        if x is not None
    }


def _split(path: tuple, params: set[tuple], longest: int) -> tuple[tuple, tuple]:
    """(prefix, param path) where a suffix of ``path`` is a param's path; else (path, ())."""
    for k in range(min(longest, len(path)), 0, -1):
        if path[-k:] in params:
            return path[:-k], path[-k:]
    return path, ()


def _key_name(k: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)  # pragma: no cover


def migrate(old_state: Any, old_params: Any, new_tx: Any, new_params: Any) -> Migration:
    """Carries ``old_state`` over to ``new_tx.init(new_params)`` by path; the rule is in
    :mod:`gradtx._wrappers.migrate`.

    Args:
      old_state: the state of the old transformation (any gradtx or optax state).
      old_params: the params it was built for (arrays or ``jax.ShapeDtypeStruct``).
      new_tx: the new transformation.
      new_params: the new params.

    Returns:
      A :class:`Migration`: ``state`` (the new state) and ``kept``, ``created``, ``dropped``;
      ``print`` shows them.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> old = {"a": jnp.ones(2), "b": jnp.ones(3)}
      >>> tx = gradtx.adam(1e-3)
      >>> state = tx.update(old, tx.init(old))[1]
      >>> new = {"a": jnp.ones(2), "c": jnp.ones(4)}  # b removed, c added
      >>> m = gradtx.migrate(state, old, tx, new)
      >>> print(m)
      kept 3, created 2, dropped 2
        kept     .knobs.count
        kept     .knobs.mu['a']
        kept     .knobs.nu['a']
        created  .knobs.mu['c']
        created  .knobs.nu['c']
        dropped  .knobs.mu['b']
        dropped  .knobs.nu['b']
    """
    for name, tree in (("old_params", old_params), ("new_params", new_params)):
        if flat_segments(tree) is not None:
            raise TransformError(
                f"gradtx.migrate: {name} is packed (gradtx.pack); migrate the unpacked trees "
                "and pack again"
            )
    fresh = new_tx.init(new_params)
    old_pp, new_pp = _param_paths(old_params), _param_paths(new_params)
    longest = max((len(p) for p in old_pp | new_pp), default=0)
    old_flat = [(tuple(p), x) for p, x in jax.tree_util.tree_leaves_with_path(old_state)]
    exact = {p: x for p, x in old_flat}
    by_slot: dict[tuple, list[tuple]] = {}
    by_name: dict[str, list[tuple]] = {}
    for p, _ in old_flat:
        prefix, pp = _split(p, old_pp, longest)
        if pp:
            by_slot.setdefault((_key_name(prefix[-1]) if prefix else "", pp), []).append(p)
        elif p:
            by_name.setdefault(_key_name(p[-1]), []).append(p)
    flat, treedef = jax.tree_util.tree_flatten_with_path(fresh)
    out, kept, created, used = [], {}, [], set()
    for kp, new in flat:
        p = tuple(kp)
        prefix, pp = _split(p, new_pp, longest)
        cands = [p] if p in exact else []
        if pp:
            cands += by_slot.get((_key_name(prefix[-1]) if prefix else "", pp), [])
        elif p:
            cands += by_name.get(_key_name(p[-1]), [])
        src = None
        for c in dict.fromkeys(cands):
            if (c not in used or not pp) and jnp.shape(exact[c]) == jnp.shape(new):
                if c == p or len([d for d in cands if d != p]) == 1:
                    src = c
                    break
        if src is None:
            out.append(new)
            created.append(jax.tree_util.keystr(p))
            continue
        used.add(src)
        value = jnp.asarray(exact[src]).astype(jnp.result_type(new))
        sharding = getattr(new, "sharding", None)
        out.append(jax.device_put(value, sharding) if sharding is not None else value)
        kept[jax.tree_util.keystr(p)] = jax.tree_util.keystr(src)
    dropped = [jax.tree_util.keystr(p) for p, _ in old_flat if p not in used]
    return Migration(jax.tree_util.tree_unflatten(treedef, out), kept, created, dropped)
