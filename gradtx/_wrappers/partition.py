"""``partition`` (and its older optax name ``multi_transform``): a different transformation
for each group of leaves, optax's semantics and argument order.

Each leaf has a label (``param_labels``: a tree of labels with the params' structure or a
prefix of it, or a function of the params returning one); the transformation
``transforms[label]`` runs on the leaves with that label, as ``masked(transforms[label],
label_i == label)``, and the updates of the groups are put back together. Every label must have
a transformation: otherwise the error lists each label without one and its leaf paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._core.state import State
from .._core.struct import static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError, flatten, path_str
from .common import as_inner, check_args, full_mask, restore, select, select_extra

__all__ = ["Partition", "partition", "multi_transform"]


def _key(label: Any) -> str:
    return label if isinstance(label, str) else repr(label)


class Partition(GradientTransformation):
    """One transformation per label; see :func:`partition`.

    The state is ``State(inner_states=State({label: State(inner_state=...)}))``, as optax's
    ``PartitionState(inner_states={label: MaskedState(inner_state)})`` (a label that is not a
    string is keyed by its ``repr``).
    """

    labels: tuple = static(())
    transforms: tuple = ()
    param_labels: Any = static(None)
    mask_compatible_extra_args: bool = static(False)

    def __post_init__(self) -> None:
        txs = tuple(as_inner(self.name, t) for t in self.transforms)
        if len(txs) != len(self.labels) or not txs:
            raise TypeError(f"gradtx.{self.name}: transforms must be a non-empty mapping")
        object.__setattr__(self, "transforms", txs)
        super().__post_init__()

    def _labels(self, tree: Any) -> Any:
        full = full_mask(self.name, self.param_labels, tree, "param_labels")
        known = set(self.labels)
        missing: dict[Any, list[str]] = {}
        for path, label in flatten(full)[0]:
            if label is not None and label not in known:
                missing.setdefault(label, []).append(path_str(path))
        if missing:
            listed = "; ".join(f"{lab!r} at {', '.join(ps[:5])}" for lab, ps in missing.items())
            raise TransformError(
                f"gradtx.{self.name}: some leaves have a label with no transformation: {listed} "
                f"(transforms has {list(self.labels)})"
            )
        return full

    def leaf_selection(self, tree: Any) -> Any:
        """The label of every leaf of ``tree`` (:func:`gradtx.pack` groups by it)."""
        return self._labels(tree)

    def init(self, params: Any) -> State:
        full = self._labels(params)
        inner = {}
        for label, tx in zip(self.labels, self.transforms):
            on = select(full, params, lambda m, lab=label: m == lab)
            inner[_key(label)] = State(inner_state=tx.init(on))
        return State(inner_states=State(inner))

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, State]:
        check_args(self.name, state, ("inner_states",), updates, params)
        full = self._labels(updates)
        out = updates
        new = {}
        for label, tx in zip(self.labels, self.transforms):
            key = _key(label)

            def keep(m: Any, lab: Any = label) -> bool:
                return m == lab

            ex = (
                select_extra(full, extra, updates, keep)
                if self.mask_compatible_extra_args
                else extra
            )
            u, s = tx.update(
                select(full, updates, keep),
                state["inner_states"][key]["inner_state"],
                select(full, params, keep),
                **ex,
            )
            out = restore(full, u, out, keep)
            new[key] = State(inner_state=s)
        return out, State(inner_states=State(new))

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [
            (label, tx, state["inner_states"][_key(label)]["inner_state"])
            for label, tx in zip(self.labels, self.transforms)
        ]


def partition(
    transforms: Mapping[Any, Any], param_labels: Any, *, mask_compatible_extra_args: bool = False
) -> Partition:
    """A different transformation for each group of leaves, as ``optax.partition``.

    Args:
      transforms: a mapping from labels to gradtx or optax transformations.
      param_labels: a tree of labels with the params' structure (or a prefix of it), or a
        function of the params (at ``init``) and of the updates (at ``update``) returning one.
        Every label must be a key of ``transforms``.
      mask_compatible_extra_args: also split the keyword arguments of ``update`` that have
        the structure of the updates.

    Returns:
      A :class:`Partition`; its state is ``State(inner_states=State({label:
      State(inner_state=...)}))``.

    Raises:
      TransformError: at ``init``/``update``, if a leaf's label has no transformation (the
        message lists the labels and their leaf paths).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
      >>> tx = gradtx.partition({"w": gradtx.sgd(0.5), "b": gradtx.set_to_zero()},
      ...                       {"w": "w", "b": "b"})
      >>> u, state = tx.update(params, tx.init(params))
      >>> u["w"].tolist(), u["b"].tolist(), list(state.inner_states)
      ([-0.5, -0.5], [0.0, 0.0], ['w', 'b'])
    """
    if not isinstance(transforms, Mapping):
        raise TypeError(
            f"gradtx.partition: transforms must be a mapping from labels to transformations, "
            f"got {type(transforms).__name__}"
        )
    return Partition(
        tuple(transforms), tuple(transforms.values()), param_labels, mask_compatible_extra_args
    )


def multi_transform(
    transforms: Mapping[Any, Any], param_labels: Any, *, mask_compatible_extra_args: bool = False
) -> Partition:
    """optax's older name of :func:`partition` (the same transformation)."""
    return partition(
        transforms, param_labels, mask_compatible_extra_args=mask_compatible_extra_args
    )
