"""``explain(tx, params)``: which group, optimizer, learning rate, decay and state each leaf gets.

Reads the transformation, never runs a step: the groups come from the first
:class:`~gradtx._wrappers.partition.Partition` (``groups``, ``partition``,
``multi_transform``) found in ``tx`` (itself, a chain's stages, a wrapper's inner); without
one every leaf is in one group, ``"all"``. The state bytes come from ``jax.eval_shape`` of each
group's ``init`` (nothing is allocated): the slots whose key path ends with a leaf's path are
that leaf's, the rest (step counters) the group's ``overhead``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from .._core.chain import Foreign
from .._core.struct import Struct, fields, is_schedule_like
from .._core.tree import is_none
from .._stages.weight_decay import AddDecayedWeights
from ..schedules._learning_rate import set_to_zero
from .common import full_mask, select
from .groups import Groups, leaf_path
from .partition import Partition

__all__ = ["Row", "Explanation", "explain"]


class Row(NamedTuple):
    """One leaf: its path, group, the group's optimizer, η at step 0, λ, frozen, state bytes."""

    path: str
    group: str
    optimizer: str
    learning_rate: Any
    weight_decay: float
    frozen: bool
    state_bytes: int


class Explanation(NamedTuple):
    """The rows of :func:`explain`, and the state bytes of each group not tied to one leaf."""

    rows: list[Row]
    overhead: dict[str, int]

    @property
    def state_bytes(self) -> int:
        """All the state's bytes: every leaf's and every group's overhead."""
        return sum(r.state_bytes for r in self.rows) + sum(self.overhead.values())

    def by_group(self) -> dict[str, dict[str, Any]]:
        """``{group: {"leaves", "params", "state_bytes"}}``."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            d = out.setdefault(r.group, {"leaves": 0, "state_bytes": 0})
            d["leaves"] += 1
            d["state_bytes"] += r.state_bytes
        for g, b in self.overhead.items():
            out.setdefault(g, {"leaves": 0, "state_bytes": 0})["state_bytes"] += b
        return out

    def __str__(self) -> str:
        head = ("path", "group", "optimizer", "lr", "decay", "frozen", "state bytes")
        body = [
            (r.path, r.group, r.optimizer, _fmt(r.learning_rate), _fmt(r.weight_decay),
             "yes" if r.frozen else "", str(r.state_bytes))
            for r in self.rows
        ]  # fmt: skip
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head]]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in body]
        extra = ", ".join(f"{g}: {b}" for g, b in self.overhead.items() if b)
        lines.append(
            f"total state bytes: {self.state_bytes}" + (f" (counters: {extra})" if extra else "")
        )
        return "\n".join(lines)


def _fmt(x: Any) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def find_all(tx: Any, kinds: tuple) -> list[Any]:
    """Every transformation of one of ``kinds`` in ``tx``'s nesting (itself, a chain's stages,
    a wrapper's inner, a partition's transforms), in pre-order, not looking inside a match."""
    if isinstance(tx, kinds):
        return [tx]
    if isinstance(tx, tuple):
        return [found for x in tx for found in find_all(x, kinds)]
    if not isinstance(tx, Struct) or isinstance(tx, Foreign):
        return []
    children = [getattr(tx, f.name) for f in fields(tx) if f.metadata.get("kind") is None]
    return [found for c in children for found in find_all(c, kinds)]


def find_first(tx: Any, kinds: tuple) -> Any:
    """The first of :func:`find_all`, or ``None``."""
    found = find_all(tx, kinds)
    return found[0] if found else None


def _find_partition(tx: Any) -> Partition | None:
    return find_first(tx, (Partition,))


def _first(tx: Any, name: str) -> Any:
    """The first hyperparameter field called ``name`` in ``tx``'s nesting, or ``None``."""
    if isinstance(tx, tuple):
        for x in tx:
            v = _first(x, name)
            if v is not None:
                return v
        return None
    if not isinstance(tx, Struct) or isinstance(tx, Foreign):
        return None
    for f in fields(tx):
        v = getattr(tx, f.name)
        if f.metadata.get("kind") == "hyper" and f.name == name and v is not None:
            return v
        if f.metadata.get("kind") is None and isinstance(v, (Struct, tuple)):
            found = _first(v, name)
            if found is not None:
                return found
    return None


def _lr(tx: Any) -> Any:
    if isinstance(tx, Foreign):
        return "?"
    lr = _first(tx, "learning_rate")
    if lr is None:
        return None
    if is_schedule_like(lr):
        return f"schedule ({float(lr(0)):.6g} at step 0)"
    return float(lr)


def _opt_name(tx: Any) -> str:
    if isinstance(tx, Foreign):
        return "optax"
    return str(getattr(tx, "name", type(tx).__name__))


def _bytes(x: Any) -> int:
    return int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def explain(tx: Any, params: Any) -> Explanation:
    """A table, leaf by leaf: group, optimizer, learning rate, weight decay, frozen, state bytes.

    Args:
      tx: a gradtx transformation (``groups``/``partition`` anywhere in it gives the groups).
      params: the parameter tree (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
      An :class:`Explanation`: ``rows`` (one :class:`Row` per leaf), ``overhead`` (counter
      bytes per group), ``by_group()``, ``state_bytes``; ``print`` shows it as a table.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
      >>> tx = gradtx.groups(gradtx.adamw(1e-3, weight_decay=0.1),
      ...                    [gradtx.group("no_decay", gradtx.no_decay, weight_decay=0.0)])
      >>> print(gradtx.explain(tx, params))
      path  group     optimizer  lr     decay  frozen  state bytes
      ----  --------  ---------  -----  -----  ------  -----------
      b     no_decay  adamw      0.001  0             32
      w     default   adamw      0.001  0.1           128
      total state bytes: 168 (counters: no_decay: 4, default: 4)
    """
    part = _find_partition(tx)
    flat = jax.tree_util.tree_leaves_with_path(params, is_leaf=is_none)
    if part is None:
        labels = ["all"] * len(flat)
        members: list[tuple[str, Any]] = [("all", tx)]
        specs: dict[str, Any] = {}
        selected = {"all": params}
    else:
        full = part._labels(params)
        labels = [str(x) for x in jax.tree_util.tree_leaves(full, is_leaf=is_none)]
        members = [(str(lab), t) for lab, t in zip(part.labels, part.transforms)]
        specs = {g.group_name: g for g in part.group_specs} if isinstance(part, Groups) else {}
        selected = {
            str(lab): select(full, params, lambda m, lab=lab: m == lab) for lab in part.labels
        }
    rows: list[Row] = []
    overhead: dict[str, int] = {}
    per_leaf: dict[str, int] = {}
    for label, gtx in members:
        shapes = jax.eval_shape(gtx.init, selected[label])
        owned = 0
        leaf_paths = [
            tuple(p) for (p, x), lab in zip(flat, labels) if lab == label and x is not None
        ]
        for spath, s in jax.tree_util.tree_leaves_with_path(shapes):
            sp = tuple(spath)
            for lp in leaf_paths:
                if lp and sp[-len(lp) :] == lp:
                    per_leaf[f"{label}:{leaf_path(lp)}"] = per_leaf.get(
                        f"{label}:{leaf_path(lp)}", 0
                    ) + _bytes(s)
                    owned += _bytes(s)
                    break
        overhead[label] = sum(_bytes(s) for s in jax.tree_util.tree_leaves(shapes)) - owned
    txs = dict(members)
    for (path, leaf), label in zip(flat, labels):
        if leaf is None:
            continue
        gtx = txs[label]
        spec = specs.get(label)
        frozen = bool(spec.frozen) if spec is not None else gtx == set_to_zero()
        decay = 0.0
        for stage in find_all(gtx, (AddDecayedWeights,)):
            mask = stage.mask
            on = True
            if mask is not None:
                marks = full_mask("explain", mask, selected[label])
                on = bool(
                    dict(
                        (tuple(p), m)
                        for p, m in jax.tree_util.tree_leaves_with_path(marks, is_leaf=is_none)
                    ).get(tuple(path), False)
                )
            wd = stage.weight_decay
            decay += float(wd) if on and not is_schedule_like(wd) else 0.0
        p = leaf_path(path)
        rows.append(
            Row(
                p,
                label,
                "frozen" if frozen else _opt_name(gtx),
                None if frozen else _lr(gtx),
                decay,
                frozen,
                per_leaf.get(f"{label}:{p}", 0),
            )
        )
    return Explanation(rows, overhead)
