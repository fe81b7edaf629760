"""Reading the wrappers' step counters: ``skip_counts``, and where each wrapper keeps them.

The states of the guards (``skip_nonfinite``, ``skip_spikes``), of ``dynamic_loss_scale``,
``MultiSteps`` and ``apply_if_finite`` are known by their entry names (:data:`ENTRIES`), in a
gradtx :class:`~gradtx.State` or in optax's NamedTuple states alike, wherever they are nested.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["ENTRIES", "find_guards", "skip_counts"]

#: Each wrapper's state entries, in order: how its state is recognised inside another state.
ENTRIES = {
    "skip_nonfinite": ("skipped", "consecutive", "steps", "gave_up", "inner_state"),
    "skip_spikes": ("window", "count", "skipped", "consecutive", "steps", "inner_state"),
    "dynamic_loss_scale": ("loss_scale", "good_steps", "skipped", "steps", "inner_state"),
    "multi_steps": ("mini_step", "gradient_step", "inner_opt_state", "acc_grads", "skip_state"),
    "apply_if_finite": ("notfinite_count", "last_finite", "total_notfinite", "inner_state"),
}
_KINDS = {entries: kind for kind, entries in ENTRIES.items()}


def find_guards(state: Any) -> list[tuple[int, str, Mapping]]:
    """``(depth, kind, entries)`` of every guard, loss-scale, MultiSteps or apply_if_finite
    state nested in ``state`` (State entries, dicts, tuples, lists, optax NamedTuples), in
    pre-order; ``depth`` is how many of these states enclose it."""
    found: list[tuple[int, str, Mapping]] = []

    def visit(node: Any, depth: int) -> None:
        if isinstance(node, Mapping):
            entries: Mapping = node
        elif isinstance(node, tuple) and hasattr(node, "_fields"):
            entries = dict(zip(node._fields, node))
        elif isinstance(node, (tuple, list)):
            for x in node:
                visit(x, depth)
            return
        else:
            return
        kind = _KINDS.get(tuple(entries.keys()))
        if kind is not None:
            found.append((depth, kind, entries))
        for value in entries.values():
            visit(value, depth + (kind is not None))

    visit(state, 0)
    return found


def skip_counts(state: Any) -> dict[str, jax.Array]:
    """The step counters of the guards in ``state``, read in one call (also under ``jit``).

    Looks through a nested gradtx state (or optax's) for the states of ``skip_nonfinite``,
    ``skip_spikes``, ``dynamic_loss_scale``, :class:`gradtx.MultiSteps` and
    :func:`gradtx.apply_if_finite`, and returns the keys of those found:

    - ``"skipped"``: steps skipped by gradtx's guards, summed (a guard never sees the steps
      an outer one skipped, so none is counted twice);
    - ``"consecutive"``: the longest current run of failed steps (``apply_if_finite``'s
      ``notfinite_count`` too);
    - ``"steps"``: steps applied by the innermost guard, or the optimizer steps of the
      innermost ``MultiSteps`` (``gradient_step``): the updates ``inner`` took;
    - ``"gave_up"``: whether a ``skip_nonfinite`` gave up;
    - ``"mini_step"``, ``"gradient_step"``: the outermost ``MultiSteps``' micro-step in the
      accumulation and its optimizer steps;
    - ``"notfinite"``: ``apply_if_finite``'s ``total_notfinite`` (it counts the non-finite
      steps it applied after giving up too, so it is not added to ``"skipped"``).

    Guards side by side (in the groups of a ``partition``) each see every step: their
    ``"skipped"`` are summed all the same, and ``"steps"`` is the first one's.

    Args:
      state: an optimizer state.

    Returns:
      A dict of scalar arrays.

    Raises:
      ValueError: if ``state`` holds none of these states.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> from gradtx._wrappers.counts import skip_counts
      >>> from gradtx._wrappers.guard import skip_nonfinite
      >>> tx = gradtx.MultiSteps(skip_nonfinite(gradtx.adam(0.1)), every_k_schedule=2)
      >>> s = tx.init({"w": jnp.zeros(2)})
      >>> for g in [1.0, jnp.nan, 1.0]:
      ...     _, s = tx.update({"w": jnp.full(2, g)}, s)
      >>> {k: int(v) for k, v in skip_counts(s).items()}
      {'skipped': 1, 'consecutive': 1, 'steps': 0, 'gave_up': 0,
       'mini_step': 1, 'gradient_step': 1}
    """
    found = find_guards(state)
    if not found:
        raise ValueError(
            "gradtx.skip_counts: state holds no skip_nonfinite, skip_spikes, dynamic_loss_scale,"
            " MultiSteps or apply_if_finite state"
        )

    def of(kinds: tuple[str, ...], entry: str) -> list[tuple[int, jax.Array]]:
        return [(d, e[entry]) for d, k, e in found if k in kinds]

    guards = ("skip_nonfinite", "skip_spikes", "dynamic_loss_scale")
    steps = of(guards, "steps") + of(("multi_steps",), "gradient_step")
    multi = of(("multi_steps",), "mini_step")[:1] + of(("multi_steps",), "gradient_step")[:1]
    combined = {
        "skipped": (jnp.add, of(guards, "skipped")),
        "consecutive": (
            jnp.maximum,
            of(("skip_nonfinite", "skip_spikes"), "consecutive")
            + of(("apply_if_finite",), "notfinite_count"),
        ),
        "steps": (None, [max(steps, key=lambda t: t[0])] if steps else []),
        "gave_up": (jnp.logical_or, of(("skip_nonfinite",), "gave_up")),
        "mini_step": (None, multi[:1]),
        "gradient_step": (None, multi[1:]),
        "notfinite": (jnp.add, of(("apply_if_finite",), "total_notfinite")),
    }
    return {
        key: functools.reduce(op or (lambda a, b: a), [v for _, v in values])
        for key, (op, values) in combined.items()
        if values
    }
