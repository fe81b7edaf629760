"""``diagnostics``: what one step did, computed beside the state, never stored in it.

For a step ``updates, new_state = tx.update(grads, state, params)``,
``gradtx.diagnostics(tx, grads, state, params, updates, new_state)`` returns scalars::

    grad_norm          ‖g‖ (global L2 norm of the gradients given to tx)
    clipped_grad_norm  min(‖g‖, c) for the first clip_by_global_norm(c) in tx, else ‖g‖
    clip_fraction      1 − clipped_grad_norm / ‖g‖  (clip_by_global_norm: the share of the
                       norm removed) or the share of elements |g| > δ (clip(δ)); 0 without one
    update_norm        ‖u‖
    param_norm         ‖θ‖ (when params are given)
    skipped            whether the step was skipped (a guard's or apply_if_finite's counters;
                       False for a transformation without one)
    step_size          {group: {"min", "median", "max"}} of the effective per-parameter step
                       size η_t/σ_t over every element of the group's leaves

The effective step size is the lecture's σ made visible: ``tx`` is run once more on the same
inputs with every knobs stage returning ``1/σ_t`` (its scale applied to ones instead of the
direction) and weight decay off, so each element of the result is ``η_t / σ_t`` (times a
trust ratio, if ``tx`` has one): ``η / (√v̂_t + ε)`` for Adam, ``η/σ_t`` for RMSProp and
Adagrad, ``η`` for SGD (a transformation without knobs is run on a gradient of ones, with its
clipping off). That costs one more optimizer update (and a sort for
the median), only when asked for (``step_size=False`` leaves it out). Groups are those of the
first ``groups``/``partition`` in ``tx``; without one, the single group ``"all"``.
:func:`plot_diagnostics` draws a run's diagnostics.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from .._core.chain import Foreign
from .._core.context import Context
from .._core.knobs import Knobs
from .._core.packed import flat_segments
from .._core.struct import Struct, fields
from .._core.tree import is_none
from .._optimizers.hyperparams import _pure
from .._stages.clipping import Clip, ClipByGlobalNorm, global_norm
from .counts import find_guards
from .explain import _find_partition, find_first
from .groups import replace_hyperparams

__all__ = ["diagnostics", "plot_diagnostics"]


class _SigmaProbe(Knobs):
    """A knobs stage whose update is ``1/σ_t`` (the scale applied to ones); the direction's
    slots are updated as usual (AdaBelief's σ reads them), its output is not used."""

    name = "knobs"

    def update_leaf(self, g: jax.Array, slots: dict, param: Any, ctx: Context) -> tuple:
        d = {k: slots[k] for k in self._dslots}
        s = {k: slots[k] for k in self._sslots}
        if self.direction is not None:
            _, d = self.direction.step(g, d, ctx)
        if self.scale is None:
            return jnp.ones_like(g), {**d, **s}
        kw = {"direction": d} if self.scale.reads_direction else {}
        u, s = self.scale.step(g, jnp.ones_like(g), s, param, ctx, **kw)
        return u, {**d, **s}


def _probe(tx: Any) -> Any:
    """``tx`` with every knobs stage replaced by :class:`_SigmaProbe`."""
    if isinstance(tx, tuple):
        return tuple(_probe(x) for x in tx)
    if isinstance(tx, Knobs) and not isinstance(tx, _SigmaProbe):
        return _SigmaProbe(tx.direction, tx.scale, tx.scale_first)
    if not isinstance(tx, Struct) or isinstance(tx, Foreign):
        return tx
    changes = {}
    for f in fields(tx):
        v = getattr(tx, f.name)
        if f.metadata.get("kind") is None and isinstance(v, (Struct, tuple)):
            new = _probe(v)
            if new is not v:
                changes[f.name] = new
    return tx.replace(**changes) if changes else tx


def _skip_total(state: Any) -> Any:
    """The skip counters of the guards in ``state`` (:func:`~gradtx._wrappers.counts.
    find_guards`), summed; ``None`` if it has none."""
    counts = [
        jnp.asarray(e["total_notfinite" if kind == "apply_if_finite" else "skipped"], jnp.int32)
        for _, kind, e in find_guards(state)
        if kind != "multi_steps"
    ]
    return functools.reduce(jnp.add, counts) if counts else None


def _summary(xs: list[jax.Array]) -> dict[str, jax.Array]:
    if not xs:
        nan = jnp.array(jnp.nan, jnp.float32)
        return {"min": nan, "median": nan, "max": nan}
    flat = jnp.concatenate([jnp.ravel(jnp.abs(x)).astype(jnp.float32) for x in xs])
    return {"min": jnp.min(flat), "median": jnp.median(flat), "max": jnp.max(flat)}


def diagnostics(
    tx: Any,
    grads: Any,
    state: Any,
    params: Any = None,
    updates: Any = None,
    new_state: Any = None,
    *,
    step_size: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """What the step ``updates, new_state = tx.update(grads, state, params)`` did.

    The rule is in :mod:`gradtx._wrappers.diagnostics`. Pure and jit-compatible: call it inside
    the jitted step and return its result beside the new state (it is not part of the state,
    so checkpoints do not change).

    Args:
      tx: the gradtx transformation of the step.
      grads: the gradients given to ``tx.update``.
      state: the state *before* the step (``nnx.Optimizer.opt_state`` works too).
      params: the params given to ``tx.update``.
      updates: the step's updates (default: computed by running ``tx.update`` again).
      new_state: the state after the step (for ``skipped``; default: ``state``'s counters
        unchanged, i.e. not skipped).
      step_size: whether to compute the effective step size η/σ per group.
      **extra: the keyword arguments of ``tx.update`` (``value=``, ``loss=``).

    Returns:
      A dict of scalars (``step_size``: a dict per group), see the module docstring.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(0.1))
      >>> params = {"w": jnp.ones(3)}
      >>> grads = {"w": jnp.array([3.0, 4.0, 0.0])}
      >>> state = tx.init(params)
      >>> updates, new_state = tx.update(grads, state, params)
      >>> d = gradtx.diagnostics(tx, grads, state, params, updates, new_state)
      >>> float(d["grad_norm"]), float(d["clipped_grad_norm"]), round(float(d["clip_fraction"]), 3)
      (5.0, 1.0, 0.8)
      >>> {k: round(float(v), 3) for k, v in d["step_size"]["all"].items()}
      {'min': 0.125, 'median': 0.167, 'max': 10000000.0}
    """
    state, grads, params, updates = _pure(state), _pure(grads), _pure(params), _pure(updates)
    new_state = _pure(new_state) if new_state is not None else None
    if updates is None:
        updates, new_state = tx.update(grads, state, params, **extra)
    norm = global_norm(grads)
    out: dict[str, Any] = {"grad_norm": norm}
    clip = find_first(tx, (ClipByGlobalNorm, Clip))
    if isinstance(clip, ClipByGlobalNorm):
        c = jnp.asarray(clip.max_norm, norm.dtype)
        clipped = jnp.minimum(norm, c)
        out["clipped_grad_norm"] = clipped
        out["clip_fraction"] = jnp.where(norm > 0, 1 - clipped / jnp.where(norm > 0, norm, 1), 0.0)
    elif isinstance(clip, Clip):
        leaves = [x for x in jax.tree_util.tree_leaves(grads) if x is not None]
        n = sum(x.size for x in leaves)
        over = sum(jnp.sum(jnp.abs(x) > clip.max_delta) for x in leaves)
        out["clipped_grad_norm"] = global_norm(
            jax.tree_util.tree_map(lambda g: jnp.clip(g, -clip.max_delta, clip.max_delta), grads)
        )
        out["clip_fraction"] = jnp.asarray(over, jnp.float32) / max(n, 1)
    else:
        out["clipped_grad_norm"] = norm
        out["clip_fraction"] = jnp.zeros((), norm.dtype)
    out["update_norm"] = global_norm(updates)
    if params is not None:
        out["param_norm"] = global_norm(params)
    before = _skip_total(state)
    after = _skip_total(new_state) if new_state is not None else None
    out["skipped"] = (
        jnp.asarray(after > before)
        if before is not None and after is not None
        else jnp.array(False)
    )
    if step_size:
        out["step_size"] = _step_sizes(tx, grads, state, params, extra)
    return out


def _step_sizes(tx: Any, grads: Any, state: Any, params: Any, extra: dict) -> dict:
    off = {"weight_decay": lambda _w: 0.0}
    if find_first(tx, (Knobs,)) is None:  # σ = 1: the step of a gradient of ones, unclipped
        inf = float("inf")
        off.update(max_norm=lambda _c: inf, max_delta=lambda _c: inf)
        grads = jax.tree_util.tree_map(lambda g: None if g is None else jnp.ones_like(g), grads)
    probe, _ = replace_hyperparams(_probe(tx), **off)
    sizes, _ = probe.update(grads, state, params, **extra)
    part = _find_partition(tx)
    flat = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(sizes, is_leaf=is_none)]
    if part is None or flat_segments(grads) is not None:
        return {"all": _summary([x for _, x in flat if x is not None])}
    labels = jax.tree_util.tree_leaves(part._labels(grads), is_leaf=is_none)
    return {
        str(lab): _summary([x for (_, x), m in zip(flat, labels) if m == lab and x is not None])
        for lab in part.labels
    }


def plot_diagnostics(history: Any, path: Any = None, *, title: str = "") -> Any:
    """Draws a run's diagnostics: norms, clip fraction and skipped steps, and η/σ per group
    (min, median, max over steps).

    Args:
      history: the :func:`diagnostics` of each step, as a list of dicts, or one dict of
        stacked arrays (the result of a ``lax.scan``).
      path: where to save the figure (``None``: only returned).
      title: the figure's title.

    Returns:
      The matplotlib ``Figure`` (matplotlib is imported only here).
    """
    import matplotlib  # noqa: PLC0415

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    if not isinstance(history, dict):
        history = jax.tree_util.tree_map(
            lambda *xs: np.stack([np.asarray(x) for x in xs]), *history
        )
    steps = np.arange(len(np.asarray(history["grad_norm"])))
    panels = 3 if "step_size" in history else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    ax = axes[0]
    for key in ("grad_norm", "clipped_grad_norm", "update_norm"):
        ax.semilogy(steps, np.asarray(history[key]), label=key)
    ax.set_xlabel("step")
    ax.set_title("norms")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(steps, np.asarray(history["clip_fraction"]), label="clip fraction")
    ax.plot(steps, np.asarray(history["skipped"]).astype(float), ".", label="skipped")
    ax.set_xlabel("step")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("clipping and skipping")
    ax.legend(fontsize=7)
    if panels == 3:
        ax = axes[2]
        for i, (group, s) in enumerate(history["step_size"].items()):
            color = f"C{i}"
            ax.semilogy(steps, np.asarray(s["median"]), color=color, label=f"{group} median")
            ax.fill_between(
                steps, np.asarray(s["min"]), np.asarray(s["max"]), color=color, alpha=0.2
            )
        ax.set_xlabel("step")
        ax.set_title("effective step size η/σ (min–max)")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
