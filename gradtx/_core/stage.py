"""A :class:`Stage`: a rule for one array, lifted to pytrees once for every stage alike.

A stage is written for one array: ``init_leaf(param) -> {slot: array}`` and
``update_leaf(g, slots, param, ctx) -> (g, slots)``. The lifting here does the rest: ``None``
leaves and masked-out leaves pass through and hold no state, structure and dtype errors name the
stage and the leaf path, the per-leaf math runs in at least float32 and is cast back so updates
keep their dtype and state keeps its dtype, scheduled hyperparameters are evaluated at the step
count, the step counter (int32) saturates instead of overflowing, and packed buffers
(:mod:`gradtx._core.packed`) run whole or per stack of equal shapes (:mod:`gradtx._core.pieces`).

Inside a guard's :func:`~gradtx._core.context.keeping` block every slot and the count are kept
(``where(keep, new, old)``) where the rule computes them
(:func:`~gradtx._core.context.run_kept`), so a skipped step leaves the state exactly unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .context import Context, SegmentContext, current_keep, register_kept, run_kept
from .numerics import compute_dtype
from .packed import flat_segments, logical_tree, packed_mask
from .pieces import init_pieces, update_pieces
from .placement import follow, place_like, scalar_like
from .state import State
from .struct import FrozenTree, has_schedule, resolve
from .transformation import GradientTransformation
from .tree import (
    TransformError,
    check_float_leaves,
    check_structure,
    flatten,
    is_own_error,
    path_str,
)

__all__ = ["Stage", "increment", "INT32_MAX", "scalar_like", "place_like", "slot_shapes"]

INT32_MAX = 2**31 - 1


def increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the largest int32 instead of wrapping around."""
    return jnp.where(count < INT32_MAX, count + 1, count).astype(jnp.int32)


class Stage(GradientTransformation):
    """A transformation written as a rule for one array; see the module docstring.

    Subclasses set the class attributes below and implement :meth:`update_leaf` (and
    :meth:`init_leaf` when the default of zero-filled slots does not fit).
    """

    #: Names of the per-array state slots; each becomes a params-shaped tree in the state.
    slots: ClassVar[tuple[str, ...]] = ()
    #: Keep a step counter even when no hyperparameter is scheduled (e.g. bias correction).
    needs_step: ClassVar[bool] = False
    #: ``update`` must be given ``params``.
    needs_params: ClassVar[bool] = False
    #: Keyword arguments ``update`` must be given (e.g. ``("value",)`` for a loss value).
    requires: ClassVar[tuple[str, ...]] = ()
    #: The rule maps element ``i`` of ``g``, of each slot and of ``param`` to element ``i`` of
    #: its outputs alone (slots shaped like the array; global values read as scalars from
    #: ``prepare``). Such a rule runs once on a whole packed buffer; any other rule runs once
    #: per stack of equal-shape leaves, vmapped (see :mod:`gradtx._core.pieces`). ``False`` is
    #: always safe.
    elementwise: ClassVar[bool] = False
    #: The rule is elementwise except for reductions over the whole array, which it makes only
    #: through ``ctx.leaf_sum`` / ``ctx.leaf_mean`` (block RMS, trust ratios); it keeps no slots
    #: of another shape. On a packed buffer it runs once, with segment-wise reductions.
    leafwise: ClassVar[bool] = False

    # --- the rule for one array ---------------------------------------------------------------
    def init_leaf(self, param: jax.Array) -> dict[str, jax.Array]:
        """State slots for one array; by default zeros of the param's shape and dtype."""
        return {s: jnp.zeros_like(param, dtype=jnp.result_type(param)) for s in self.slots}

    def update_leaf(
        self, g: jax.Array, slots: dict[str, jax.Array], param: jax.Array | None, ctx: Context
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        raise NotImplementedError

    def prepare(self, updates: Any, state: State, params: Any, ctx: Context) -> dict[str, Any]:
        """Global values computed once over the whole tree before the per-array rule."""
        return {}

    # --- derived properties -------------------------------------------------------------------
    @property
    def counts(self) -> bool:
        """Whether the state holds a ``count`` (needed for bias correction or a schedule)."""
        return self.needs_step or has_schedule(self)

    def leaf_mask(self, tree: Any) -> Any | None:
        """A tree of bools (``False`` = leave this leaf alone) or ``None`` for all leaves."""
        mask = getattr(self, "mask", None)
        if mask is None:
            return None
        if isinstance(mask, FrozenTree):
            return mask.thaw()
        if callable(mask):
            return mask(tree)
        return mask

    # --- the lifting to pytrees ---------------------------------------------------------------
    def _mask_leaves(self, ref: Any, n: int) -> list[Any]:
        """Per flat leaf: ``True``/``False``, or for a packed buffer that mixes masked-in and
        masked-out leaves a tuple of one bool per leaf it holds."""
        if flat_segments(ref) is not None:  # packed: the mask is of the original tree
            if getattr(self, "mask", None) is None:
                return [True] * n
            logical = logical_tree(ref)
            return packed_mask(ref, self._mask_leaves(logical, len(flatten(logical)[0])))
        mask = self.leaf_mask(ref)
        if mask is None:
            return [True] * n
        try:
            full = jax.tree_util.tree_map(
                lambda _, m: bool(m), ref, mask, is_leaf=lambda x: x is None
            )
        except (ValueError, TypeError) as e:
            raise TransformError(
                f"gradtx.{self.name}: mask does not match the parameter tree: {e}"
            ) from None
        return [bool(m) for _, m in flatten(full)[0]]

    def init(self, params: Any) -> State:
        check_float_leaves(self.name, "params", params)
        leaves, treedef = flatten(params)
        active = self._mask_leaves(params, len(leaves))
        segs = flat_segments(params)
        per_leaf: list[dict[str, Any] | None] = []
        for i, ((path, p), on) in enumerate(zip(leaves, active)):
            if p is None or on is False:
                per_leaf.append(None)
                continue
            seg = segs[i] if segs is not None else None
            if seg is not None and not ((self.elementwise or self.leafwise) and on is True):
                slots = init_pieces(self, p, seg, on)
            else:
                slots = self.init_leaf(p)
            slots = {s: follow(p, v) for s, v in slots.items()}  # placed as the step returns
            if set(slots) != set(self.slots):
                raise TypeError(
                    f"gradtx.{self.name}: init_leaf returned slots {sorted(slots)} at "
                    f"{path_str(path)}, declared {sorted(self.slots)}"
                )
            per_leaf.append(slots)
        entries: dict[str, Any] = {}
        if self.counts:
            entries["count"] = scalar_like(params, 0, jnp.int32)
        for s in self.slots:
            entries[s] = treedef.unflatten([None if d is None else d[s] for d in per_leaf])
        return State(entries)

    def _check_update_args(self, updates: Any, state: Any, params: Any, extra: dict) -> None:
        if not isinstance(state, State) or any(s not in state for s in self.slots):
            raise TransformError(
                f"gradtx.{self.name}: state is not this transformation's state (expected "
                f"entries {list(('count',) if self.counts else ()) + list(self.slots)}, got "
                f"{type(state).__name__}{list(state) if isinstance(state, Mapping) else ''})"
            )
        check_float_leaves(self.name, "updates", updates)
        if params is not None:
            check_structure(self.name, "updates", updates, "params", params)
        if self.needs_params and params is None:
            raise TransformError(f"gradtx.{self.name}: update needs params=..., got None")
        missing = [r for r in self.requires if r not in extra]
        if missing:
            raise TransformError(
                f"gradtx.{self.name}: update needs keyword argument(s) {', '.join(missing)}"
            )

    def _check_slot_shapes(self, path: Any, g: jax.Array, slots: dict[str, jax.Array]) -> None:
        """Raises :class:`TransformError` if a slot's shape is not the one ``init`` makes for an
        array of ``g``'s shape (see :func:`slot_shapes`). Shapes are static: this runs while
        tracing (or eagerly, from a cache), never in the compiled step."""
        if not slots:
            return
        expected = slot_shapes(self, jnp.shape(g), jnp.result_type(g))
        for s, v in slots.items():
            if jnp.shape(v) != expected[s]:
                raise TransformError(
                    f"gradtx.{self.name}: state.{s} at {path_str(path)} has shape "
                    f"{jnp.shape(v)}, but updates there have shape {jnp.shape(g)}, for which "
                    f"init makes {expected[s]} (was the state built for other params, e.g. "
                    "restored from another model's checkpoint?)"
                )

    def update(
        self, updates: Any, state: State, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        if not self.slots and not self.counts and not isinstance(state, State):
            return self._update_stateless(updates, state, params, extra)
        self._check_update_args(updates, state, params, extra)
        leaves, treedef = flatten(updates)
        n = len(leaves)
        slot_leaves = {}
        for s in self.slots:
            tree = state[s]
            s_leaves, s_def = flatten(tree)
            if s_def != treedef:
                check_structure(self.name, "updates", updates, f"state.{s}", tree)
            slot_leaves[s] = [v for _, v in s_leaves]
        param_leaves = [v for _, v in flatten(params)[0]] if params is not None else [None] * n
        active = self._mask_leaves(params if params is not None else updates, n)
        segs = flat_segments(updates)

        step = state["count"] if self.counts else None
        keep = current_keep()
        nxt = None
        if step is not None:
            nxt = increment(step)
            if keep is not None:  # t reads the stored count (see _at_dtype): no copy of it
                nxt = jnp.where(keep, nxt, step)
        hp = resolve(self, step)
        ctx32 = Context(step, None, {}, extra)
        values = hp.prepare(updates, state, params, ctx32)
        cache: dict[Any, tuple[Stage, Context]] = {}

        out: list = []
        new_slots: dict[str, list] = {s: [] for s in self.slots}
        for i, (path, g) in enumerate(leaves):
            slots = {s: slot_leaves[s][i] for s in self.slots}
            if g is None or active[i] is False:
                out.append(g)
                for s in self.slots:
                    new_slots[s].append(slots[s])
                continue
            for s, v in slots.items():
                if v is None:
                    raise TransformError(
                        f"gradtx.{self.name}: state.{s} holds no state for {path_str(path)} "
                        "(was init given a different tree or mask?)"
                    )
            if segs is None or segs[i] is None:
                self._check_slot_shapes(path, g, slots)
            p = param_leaves[i]
            if self.needs_params and p is None:
                raise TransformError(
                    f"gradtx.{self.name}: params at {path_str(path)} is None but updates is not"
                )
            cdt = compute_dtype(g.dtype)
            if cdt not in cache:
                cache[cdt] = _at_dtype(hp, step, nxt, values, extra, cdt)
            hp_c, ctx = cache[cdt]
            args = (
                g.astype(cdt),
                {s: v.astype(cdt) for s, v in slots.items()},
                None if p is None else p.astype(cdt),
                ctx,
            )
            seg = segs[i] if segs is not None else None
            rule = _dispatch(self, hp_c, ctx, seg, active[i])
            try:
                if keep is None or not self.slots:
                    u, ns = rule(*args[:3])
                else:
                    u, ns = run_kept(rule, args[:3], keep)
            except Exception as e:
                # Foreign exceptions (JAX's, a user's schedule or rule) pass through as the
                # same object, with a note saying where; gradtx's own already name the stage.
                if not is_own_error(e) and hasattr(e, "add_note"):
                    e.add_note(f"(raised by gradtx.{self.name} at {path_str(path)})")
                raise
            out.append(u.astype(g.dtype))
            for s in self.slots:
                new_slots[s].append(ns[s].astype(slots[s].dtype))
        entries: dict[str, Any] = {}
        if self.counts:
            entries["count"] = nxt
        for s in self.slots:
            entries[s] = treedef.unflatten(new_slots[s])
        if keep is not None:
            register_kept(*jax.tree_util.tree_leaves(entries))
        return treedef.unflatten(out), State(entries)

    def _update_stateless(self, updates: Any, state: Any, params: Any, extra: dict) -> tuple:
        """A stage without state given a state that is not a :class:`State` (optax's
        ``EmptyState()``, ``()``, ``None``, ``{}``: whatever optax code passes to a stateless
        transformation, which optax ignores): runs as usual and returns that state unchanged.
        ``updates=None`` gives ``None`` back, as optax's stateless transformations do."""
        if updates is None:
            return None, state
        out, _ = self.update(updates, State(), params, **extra)
        return out, state


_SLOT_SHAPES: dict[Any, dict[str, tuple[int, ...]]] = {}


def slot_shapes(stage: Stage, shape: tuple[int, ...], dtype: Any) -> dict[str, tuple[int, ...]]:
    """The shape of each slot ``stage.init`` makes for a (non-packed) array of ``shape``.

    Found with ``jax.eval_shape(stage.init_leaf, ...)`` (so a stage whose slots are not
    params-shaped, such as Adafactor's factored moments, needs no declaration) and cached by
    the stage's static configuration (its tree structure), the shape and the dtype.
    """
    treedef: Any = jax.tree_util.tree_structure(stage)
    key: Any = (treedef, tuple(shape), jnp.dtype(dtype))
    try:
        hash(key)
    except TypeError:  # unhashable static data: no cache
        key = None
    if key is not None and key in _SLOT_SHAPES:
        return _SLOT_SHAPES[key]
    n = treedef.num_leaves
    probe = jax.tree_util.tree_unflatten(treedef, [jnp.zeros((), jnp.float32)] * n)
    out = jax.eval_shape(probe.init_leaf, jax.ShapeDtypeStruct(tuple(shape), dtype))
    shapes = {s: tuple(v.shape) for s, v in out.items()}
    if key is not None:
        if len(_SLOT_SHAPES) >= 4096:  # bounded: drop the oldest entry
            del _SLOT_SHAPES[next(iter(_SLOT_SHAPES))]
        _SLOT_SHAPES[key] = shapes
    return shapes


def _dispatch(stage: Stage, hp_c: Stage, ctx: Context, seg: Any, on: Any) -> Any:
    """The rule for one (possibly packed) array as a function of ``(g, slots, param)``."""
    if seg is not None and stage.leafwise and on is True:
        return lambda g, sl, p: hp_c.update_leaf(g, sl, p, SegmentContext(ctx, seg))
    if seg is not None and not (stage.elementwise and on is True):
        return lambda g, sl, p: update_pieces(hp_c, g, sl, p, ctx, seg, on)
    return lambda g, sl, p: hp_c.update_leaf(g, sl, p, ctx)


def _at_dtype(
    hp: Stage, step: Any, nxt: Any, values: dict, extra: dict, dtype: Any
) -> tuple[Stage, Context]:
    cast = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    hp_c = jax.tree_util.tree_map(cast, hp)
    # t from the value stored as the new count (the saturating next count; the old one on a
    # step a guard skips, whose results are discarded): XLA then keeps one scalar (no copy of
    # the donated count); equal to step + 1 below the int32 maximum.
    t = None if nxt is None else nxt.astype(dtype)
    return hp_c, Context(step, t, jax.tree_util.tree_map(cast, values), extra)
