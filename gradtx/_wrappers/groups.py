"""Parameter groups: torch's ``param_groups`` as a transformation, selected by path or label.

``groups(base, [group(name, match, ...), ...], rest="default")`` gives each leaf exactly one
group, and each group a transformation derived from ``base`` (or its own ``optimizer``)::

    tx_group = set_to_zero()                                    if frozen
             = opt with η → lr_mult·η, weight_decay → λ_group,  otherwise
               and any other named hyperparameter replaced      (opt = optimizer or base)
    u_i      = tx_group(i)(g)_i

A group selects its leaves with ``match``: a regular expression searched in the leaf's
slash-joined path (``"dense/kernel"``, ``"layers/0/bias"``), or a predicate ``(path, leaf) ->
bool``. Alternatively ``labels`` (a tree of group names with the params' structure or a prefix
of it, or a function of the params returning one) names each leaf's group directly. Leaves no
group matches go to the group ``rest`` (``base`` unchanged); with ``rest=None`` they are an
error. A leaf two groups match is always an error; both list the paths.

The learning-rate multiplier replaces η in the group's transformation (a constant by
``lr_mult·η``, a schedule by ``lr_mult·η(t)``), so :func:`gradtx.current_learning_rate` reads
each group's own rate, and the decay a decoupled optimizer multiplies by η scales with it, as
in torch's param groups. Frozen groups keep no state and get exact zero updates.

A ``Groups`` is a :class:`~gradtx._wrappers.partition.Partition` (its state is
``State(inner_states=State({group: State(inner_state=...)}))``); global-norm clipping belongs
*outside* it (``chain(clip_by_global_norm(1.0), groups(...))``), as in torch, where
``clip_grad_norm_`` sees every parameter.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from .._core.chain import Foreign, chain
from .._core.struct import FrozenTree, Struct, fields, is_schedule_like, static
from .._core.tree import TransformError, is_none
from ..schedules._learning_rate import scale, set_to_zero
from .common import as_inner, thaw
from .live import Adjusted
from .partition import Partition

__all__ = ["Group", "Groups", "group", "groups", "no_decay", "leaf_path", "replace_hyperparams"]

_EMBEDDING = re.compile(r"(^|/)(embed\w*|wte|wpe|pos_emb\w*|token_emb\w*)(/|$)", re.IGNORECASE)
_NORM = re.compile(r"norm|(^|/)(ln_?\w*|bn\w*)(/|$)", re.IGNORECASE)


def leaf_path(path: Any) -> str:
    """A key path as the slash-joined string groups match (``"layers/0/kernel"``); an nnx
    Variable's trailing ``value`` attribute is dropped."""
    parts = []
    keys = list(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    for k in keys:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:  # pragma: no cover  (every key type jax has today is above)
            parts.append(str(k))
    return "/".join(parts)


def no_decay(path: str, leaf: Any) -> bool:
    """The usual "no weight decay" rule: biases, norm scales and offsets (every leaf of fewer
    than 2 dimensions), normalisation layers (a path segment with ``norm``, ``ln``, ``bn``) and
    embeddings (``embed*``, ``wte``, ``wpe``, ``pos_emb*``, ``token_emb*``).

    Example:
      >>> import jax.numpy as jnp
      >>> from gradtx import no_decay
      >>> no_decay("dense/bias", jnp.ones(3)), no_decay("dense/kernel", jnp.ones((3, 3)))
      (True, False)
      >>> no_decay("embed/embedding", jnp.ones((10, 3)))
      True
    """
    return bool(np.ndim(leaf) < 2 or _EMBEDDING.search(path) or _NORM.search(path))


@dataclasses.dataclass(frozen=True)
class Group:
    """One parameter group: which leaves (``match``) and how they differ from the base."""

    group_name: str = ""
    match: Any = None
    optimizer: Any = None
    lr_mult: float = 1.0
    weight_decay: Any = None
    frozen: bool = False
    hyperparams: tuple = ()


def group(
    name: str,
    match: str | Callable[[str, Any], bool] | None = None,
    *,
    optimizer: Any = None,
    lr_mult: float = 1.0,
    weight_decay: float | None = None,
    frozen: bool = False,
    **hyperparams: Any,
) -> Group:
    """A parameter group for :func:`groups`.

    Args:
      name: the group's name (its key in the state and in :func:`gradtx.explain`).
      match: a regular expression searched in each leaf's slash-joined path, or a predicate
        ``(path, leaf) -> bool`` (e.g. :func:`gradtx.no_decay`); ``None`` when
        :func:`groups` is given ``labels``.
      optimizer: this group's transformation (default: the base of :func:`groups`).
      lr_mult: the factor on the learning rate η (a constant or a schedule) of the group's
        transformation.
      weight_decay: the group's weight decay λ in place of the transformation's (``0.0``
        turns it off); ``None`` keeps it.
      frozen: exact zero updates and no optimizer state for these leaves.
      **hyperparams: any other named hyperparameter of the group's transformation to replace
        (``b2=0.95``, ``eps=1e-6``), by field name.

    Returns:
      A :class:`Group`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"gradtx.group: name must be a non-empty string, got {name!r}")
    if match is not None and not isinstance(match, str) and not callable(match):
        raise TypeError(
            f"gradtx.group {name!r}: match must be a regular expression, a predicate "
            f"(path, leaf) -> bool or None, got {type(match).__name__}"
        )
    if isinstance(match, str):
        try:
            re.compile(match)
        except re.error as e:
            raise ValueError(
                f"gradtx.group {name!r}: match {match!r} is not a regex: {e}"
            ) from None
    if isinstance(lr_mult, bool) or not isinstance(lr_mult, (int, float)) or lr_mult < 0:
        raise ValueError(f"gradtx.group {name!r}: lr_mult must be a number >= 0, got {lr_mult!r}")
    if weight_decay is not None and (
        isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float))
    ):
        raise ValueError(
            f"gradtx.group {name!r}: weight_decay must be a number or None, got {weight_decay!r}"
        )
    if optimizer is not None:
        optimizer = as_inner(f"group {name!r}", optimizer)
    return Group(
        name, match, optimizer, float(lr_mult), weight_decay, bool(frozen),
        tuple(sorted(hyperparams.items())),
    )  # fmt: skip


def replace_hyperparams(tx: Any, **values: Callable[[Any], Any]) -> tuple[Any, set]:
    """``tx`` with each hyperparameter field named in ``values`` replaced by
    ``values[name](old)``, wherever it is in ``tx``'s nesting; also the names it replaced."""
    found: set[str] = set()

    def walk(obj: Any) -> Any:
        if isinstance(obj, tuple):
            return tuple(walk(x) for x in obj)
        if not isinstance(obj, Struct) or isinstance(obj, Foreign):
            return obj
        changes: dict[str, Any] = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            kind = f.metadata.get("kind")
            if kind == "hyper" and f.name in values and value is not None:
                changes[f.name] = values[f.name](value)
                found.add(f.name)
            elif kind is None and isinstance(value, (Struct, tuple)):
                new = walk(value)
                if new is not value:
                    changes[f.name] = new
        return obj.replace(**changes) if changes else obj

    return walk(tx), found


def _constant(value: Any) -> Callable[[Any], Any]:
    return lambda _old: value


def _derive(g: Group, base: Any) -> Any:
    if g.frozen:
        return set_to_zero()
    opt = g.optimizer if g.optimizer is not None else base
    owner = f"groups: group {g.group_name!r}"
    values: dict[str, Callable[[Any], Any]] = {k: _constant(v) for k, v in g.hyperparams}
    if g.weight_decay is not None:
        values["weight_decay"] = _constant(float(g.weight_decay))
    mult = g.lr_mult
    if mult != 1.0:
        values["learning_rate"] = lambda lr: (
            Adjusted(lr, mult, 0.0, 0.0) if is_schedule_like(lr) else lr * mult
        )
    if not values:
        return opt
    if isinstance(opt, Foreign):
        if set(values) - {"learning_rate"}:
            raise TypeError(
                f"gradtx.{owner}: an optax optimizer keeps its hyperparameters in closures; "
                f"{sorted(set(values) - {'learning_rate'})} cannot be replaced (give the group "
                "its own optimizer instead)"
            )
        return chain(opt, scale(mult))
    new, found = replace_hyperparams(opt, **values)
    missing = set(values) - found - ({"weight_decay"} if not g.weight_decay else set())
    if missing == {"learning_rate"}:
        return chain(new, scale(mult))  # a transformation without η (e.g. a bare scale_by_*)
    if missing:
        raise TypeError(
            f"gradtx.{owner}: the group's transformation has no hyperparameter "
            f"{sorted(missing)} to replace"
        )
    return new


@dataclasses.dataclass(frozen=True)
class _Assign:
    """The group label of every leaf (a static, hashable function of the tree)."""

    names: tuple = ()
    matches: tuple = ()
    labels: Any = None
    rest: Any = None

    def __call__(self, tree: Any) -> Any:
        if self.labels is not None:
            return _by_labels(self.labels, tree)
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
        out: list[Any] = []
        uncovered: list[str] = []
        doubled: list[str] = []
        for path, leaf in flat:
            if leaf is None:
                out.append(None)
                continue
            p = leaf_path(path)
            hits = [
                n
                for n, m in zip(self.names, self.matches)
                if m is not None and (re.search(m, p) if isinstance(m, str) else m(p, leaf))
            ]
            if len(hits) > 1:
                doubled.append(f"{p} ({', '.join(hits)})")
            elif not hits and self.rest is None:
                uncovered.append(p)
            out.append(hits[0] if hits else self.rest)
        if uncovered or doubled:
            bits = []
            if uncovered:
                bits.append(f"in no group: {', '.join(uncovered[:10])}")
            if doubled:
                bits.append(f"in more than one group: {', '.join(doubled[:10])}")
            raise TransformError(
                "gradtx.groups: every leaf must be in exactly one group; " + "; ".join(bits)
            )
        return jax.tree_util.tree_unflatten(treedef, out)


def _by_labels(labels: Any, tree: Any) -> Any:
    """The label of each leaf of ``tree`` from a label tree whose paths are a prefix of the
    tree's, matched by path (so a ``FrozenDict`` or ``nnx.State`` of labels fits a dict)."""
    labels = thaw(labels)
    if callable(labels):
        labels = labels(tree)
    given = {
        tuple(leaf_path(p).split("/")) if p else (): lab
        for p, lab in jax.tree_util.tree_leaves_with_path(labels, is_leaf=is_none)
    }
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
    out: list[Any] = []
    unlabelled: list[str] = []
    for path, leaf in flat:
        p = leaf_path(path)
        parts = tuple(p.split("/")) if p else ()
        hit = next(
            (given[parts[:k]] for k in range(len(parts), -1, -1) if parts[:k] in given), None
        )
        if leaf is not None and hit is None:
            unlabelled.append(p)
        out.append(None if leaf is None else hit)
    if unlabelled:
        raise TransformError(
            "gradtx.groups: every leaf must be in exactly one group; labels gives no group to: "
            + ", ".join(unlabelled[:10])
        )
    return jax.tree_util.tree_unflatten(treedef, out)


class Groups(Partition):
    """Parameter groups, a :class:`~gradtx._wrappers.partition.Partition` built by
    :func:`groups`; ``group_specs`` keeps what each group changes (for :func:`gradtx.explain`)."""

    name = "groups"
    group_specs: tuple = static(())


def groups(
    base: Any,
    group_list: Sequence[Group] = (),
    *,
    labels: Any = None,
    rest: str | None = "default",
) -> Groups:
    """Parameter groups: per-group learning rate, weight decay, optimizer or freezing.

    The rule is in :mod:`gradtx._wrappers.groups`.

    Args:
      base: the transformation of every group that does not give its own (gradtx or optax).
      group_list: the :func:`group` s, in order.
      labels: instead of the groups' ``match``: a tree of group names with the params'
        structure (or a prefix of it), or a function of the params returning one.
      rest: the name of the group of the leaves no group matches (``base`` unchanged), or
        ``None`` to make such leaves an error.

    Returns:
      A :class:`Groups` transformation.

    Raises:
      TransformError: at ``init``/``update``, naming the paths of leaves in no group or in
        more than one.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
      ...           "embed": {"embedding": jnp.ones((4, 2))}}
      >>> tx = gradtx.groups(
      ...     gradtx.adamw(1e-3, weight_decay=0.1),
      ...     [gradtx.group("no_decay", gradtx.no_decay, weight_decay=0.0),
      ...      gradtx.group("dense", r"^dense/kernel$", lr_mult=10.0)])
      >>> state = tx.init(params)
      >>> {k: round(float(v), 6) for k, v in gradtx.current_learning_rate(tx, state).items()}
      {'no_decay': 0.001, 'dense': 0.01, 'default': 0.001}
    """
    base = as_inner("groups", base)
    group_list = list(group_list)
    for g in group_list:
        if not isinstance(g, Group):
            raise TypeError(f"gradtx.groups: expected gradtx.group(...) entries, got {g!r}")
    names = [g.group_name for g in group_list]
    if rest is not None and rest not in names:
        group_list.append(Group(rest))
        names.append(rest)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"gradtx.groups: group names must be unique, got {dupes} twice")
    if labels is not None:
        if any(g.match is not None for g in group_list):
            raise TypeError("gradtx.groups: give labels or each group's match, not both")
        labels = thaw(labels)
        if not callable(labels):
            labels = FrozenTree(*_frozen(labels))
    elif not any(g.match is not None for g in group_list) and len(group_list) > 1:
        raise TypeError("gradtx.groups: the groups need a match (or give labels)")
    assign = _Assign(
        tuple(names), tuple(g.match for g in group_list), labels, rest if labels is None else None
    )
    txs = tuple(_derive(g, base) for g in group_list)
    return Groups(tuple(names), txs, assign, False, tuple(group_list))


def _frozen(tree: Any) -> tuple[Any, tuple]:
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_none)
    return treedef, tuple(leaves)
