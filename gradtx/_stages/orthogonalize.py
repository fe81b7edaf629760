r"""Newton–Schulz orthogonalisation, Muon's step, as a stage run once per stack of matrices.

Each selected leaf is viewed as a stack of matrices: a 2-D leaf ``(m, n)`` is one matrix; a
leaf of three or more dimensions is, by default, one matrix ``(∏ shape[:-1], shape[-1])`` (its
last axis is the output, as in a flax kernel: a ``Conv`` kernel ``(h, w, in, out)`` becomes
``(h·w·in, out)``); optax's ``MuonDimensionNumbers`` (reduction and output axes, every other
axis a batch axis) override that per leaf. A tall matrix is transposed (``NS(Xᵀ) = NS(X)ᵀ``), so
``(d, 4d)`` and ``(4d, d)`` matrices are one shape. All matrices of one shape and compute dtype
are stacked and orthogonalised together, so the program has one batched iteration per distinct
matrix shape, not one per leaf; on a packed tree (:func:`gradtx.pack`) the stacks of equal-shape
leaves of each buffer run the same way (:mod:`gradtx._core.pieces`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, PartitionSpec

from .._core.context import Context
from .._core.numerics import compute_dtype
from .._core.packed import flat_segments
from .._core.stage import Stage, increment
from .._core.state import State
from .._core.struct import hyper, resolve, static
from .._core.tree import TransformError, flatten
from .matrices import MatrixView, leaf_specs, matrix_view

__all__ = [
    "Orthogonalize",
    "orthogonalize",
    "coefficient_rows",
    "newton_schulz",
    "DEFAULT_NS_COEFFS",
]

#: Jordan's quintic coefficients (a, b, c), optax's default: f(X) = aX + b(XXᵀ)X + c(XXᵀ)²X.
DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
_PRESETS: dict[str, tuple] = {
    "standard": DEFAULT_NS_COEFFS,
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
}
_PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
_SCALINGS = ("none", "width", "consistent_rms")


def coefficient_rows(owner: str, ns_coeffs: Any, ns_steps: int) -> tuple:
    """The coefficients of every iteration, as optax reads ``ns_coeffs`` and ``ns_steps``.

    One triple ``(a, b, c)`` runs ``ns_steps`` times; a table of ``k ≤ ns_steps`` triples runs
    each once, in order (``ns_steps`` then only bounds ``k``); a preset name (``"standard"``,
    ``"dion"``) is that triple or table.
    """
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in _PRESETS:
            raise ValueError(
                f"gradtx.{owner}: unknown ns_coeffs preset {ns_coeffs!r}; known: {list(_PRESETS)}"
            )
        ns_coeffs = _PRESETS[ns_coeffs]
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, (int, np.integer)) or ns_steps < 1:
        raise ValueError(f"gradtx.{owner}: ns_steps must be an int >= 1, got {ns_steps!r}")
    try:
        arr = np.asarray(ns_coeffs, np.float64)
    except (TypeError, ValueError):
        arr = np.zeros((0, 0))
    if arr.ndim not in (1, 2) or arr.shape[-1] != 3 or not np.all(np.isfinite(arr)):
        raise ValueError(
            f"gradtx.{owner}: ns_coeffs must be finite numbers of shape (3,) or (k, 3), got "
            f"{ns_coeffs!r}"
        )
    if arr.ndim == 1:
        return (tuple(float(v) for v in arr),) * int(ns_steps)
    if arr.shape[0] > ns_steps:
        raise ValueError(
            f"gradtx.{owner}: ns_coeffs has {arr.shape[0]} rows, more than ns_steps={ns_steps}"
        )
    return tuple(tuple(float(v) for v in row) for row in arr)


def _gathered(x: jax.Array) -> tuple[jax.Array, Any]:
    """``x`` replicated when its type shards it over an ``Explicit`` mesh axis (the products of
    Newton–Schulz contract over whole rows and columns), and the spec to put back; else
    ``(x, None)``."""
    sharding: Any = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return x, None
    if all(e is None for e in sharding.spec):
        return x, None
    return jax.sharding.reshard(x, PartitionSpec()), sharding.spec


def newton_schulz(x: jax.Array, rows: tuple, preconditioning: str, eps: Any) -> jax.Array:
    r"""The quintic Newton–Schulz iteration on a stack ``x`` of shape ``(..., r, c)``, ``r ≤ c``.

    .. math::
        X_0 = G / (\|G\|_F + \epsilon), \qquad A_k = X_k X_k^{\mathsf H}, \qquad
        X_{k+1} = a_k X_k + (b_k A_k + c_k A_k^2)\, X_k

    ``"spectral"`` divides by the spectral norm instead; ``"aol"`` and ``"schatten"`` start
    unnormalised and rescale inside the first iteration (by the rows' absolute sums of
    :math:`A_0`, or by :math:`\|A_0\|_F`, optax's forms). Every product is batched over the
    leading axes: three ``dot_general`` per iteration, whatever the stack's size.
    """
    h = lambda a: jnp.swapaxes(a, -1, -2).conj()  # noqa: E731
    norm = lambda a, **kw: jnp.linalg.norm(a, axis=(-2, -1), keepdims=True, **kw)  # noqa: E731
    if preconditioning == "frobenius":
        x = x / (norm(x) + eps)
    elif preconditioning == "spectral":
        x = x / (norm(x, ord=2) + eps)
    for i, (a, b, c) in enumerate(rows):
        gram = x @ h(x)
        if i == 0 and preconditioning == "aol":
            s = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.abs(gram), axis=-1), eps))[..., None]
            x, gram = x * s, gram * s * jnp.swapaxes(s, -1, -2)
        elif i == 0 and preconditioning == "schatten":
            s = jax.lax.rsqrt(jnp.maximum(norm(gram), eps))
            x, gram = x * s, gram * (s * s)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x


class Orthogonalize(Stage):
    r"""Replaces each selected leaf by the orthogonalisation of its matrices (Muon's step).

    .. math::
        u = s \cdot \mathrm{NS}(g), \qquad s = 1, \quad
        \sqrt{\max(1, n_{out}/n_{in})} \;(\texttt{"width"}), \quad
        \rho\,\sqrt{\max(n_{in}, n_{out})} \;(\texttt{"consistent\_rms"})

    :math:`\mathrm{NS}` is :func:`newton_schulz` on each matrix of the leaf's
    :class:`MatrixView` (``n_in × n_out``); with ``adaptive`` the result is also multiplied by
    :math:`\langle g, \mathrm{NS}(g)\rangle` over the leaf (Bernstein & Newhouse's dual norm).
    Leaves of one matrix shape run as one stack (see the module docstring).

    Attributes:
      ns_coeffs: one ``(a, b, c)`` per iteration (see :func:`coefficient_rows`).
      eps: ε of the normalisation.
      preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"``.
      adaptive: multiply by the dual norm :math:`\langle g, \mathrm{NS}(g)\rangle`.
      scaling: ``"none"``, ``"width"`` (Jordan's) or ``"consistent_rms"`` (Moonlight's).
      consistent_rms: ρ of ``"consistent_rms"`` (0.2 matches AdamW's update RMS).
      dims: per-leaf dimension numbers (a tree, a prefix of one, or a function of the params);
        ``None`` everywhere: the default view.
      mask: which leaves to orthogonalise (a tree of bools or a function of the params); the
        others pass through. ``None``: every leaf with >= 2 dimensions (a leaf the mask or
        ``dims`` selects must be a matrix).
    """

    name = "orthogonalize"
    ns_coeffs: tuple = static((DEFAULT_NS_COEFFS,) * 5)
    eps: float = hyper(1e-8, "nonnegative")
    preconditioning: str = static("frobenius")
    adaptive: bool = static(False)
    scaling: str = static("none")
    consistent_rms: float | None = hyper(None, "positive")
    dims: Any = static(None)
    mask: Any = static(None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preconditioning not in _PRECONDITIONINGS:
            raise ValueError(
                f"gradtx.{self.name}: preconditioning must be one of {list(_PRECONDITIONINGS)}, "
                f"got {self.preconditioning!r}"
            )
        if self.scaling not in _SCALINGS:
            raise ValueError(
                f"gradtx.{self.name}: scaling must be one of {list(_SCALINGS)}, got "
                f"{self.scaling!r}"
            )
        if self.scaling == "consistent_rms" and self.consistent_rms is None:
            raise ValueError(f"gradtx.{self.name}: scaling='consistent_rms' needs consistent_rms")
        rows = np.asarray(self.ns_coeffs, np.float64)
        if rows.ndim != 2 or rows.shape[1] != 3 or not rows.size or not np.isfinite(rows).all():
            raise ValueError(
                f"gradtx.{self.name}: ns_coeffs must be a table of finite (a, b, c) rows, one per "
                f"iteration, got {self.ns_coeffs!r} (gradtx.orthogonalize reads optax's forms)"
            )
        object.__setattr__(self, "ns_coeffs", tuple(tuple(float(v) for v in r) for r in rows))

    def _finish(self, u: jax.Array, g: jax.Array, view: MatrixView) -> jax.Array:
        if self.adaptive:
            u = jnp.sum(g.conj() * u) * u
        if self.scaling == "width":
            u = math.sqrt(max(1.0, view.fan_out / view.fan_in)) * u
        elif self.scaling == "consistent_rms":
            rho: Any = self.consistent_rms  # not None: checked at construction
            u = (math.sqrt(max(view.fan_in, view.fan_out)) * rho) * u
        return u

    def _ns(self, stack: jax.Array) -> jax.Array:
        return newton_schulz(stack, self.ns_coeffs, self.preconditioning, self.eps)

    def update_leaf(self, g: jax.Array, slots: dict, param: Any, ctx: Context) -> tuple:
        """One leaf with the default view (the rule of a packed buffer's stacks)."""
        if self.mask is None and g.ndim < 2:
            return g, slots  # not a matrix: the default mask leaves it out
        view = matrix_view(self.name, (), g.shape)
        return self._finish(view.from_matrices(self._ns(view.to_matrices(g))), g, view), slots

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, Any]:
        packed = flat_segments(updates) is not None
        if packed and self.dims is not None:
            raise TransformError(
                f"gradtx.{self.name}: dimension numbers are per leaf of the original tree; on a "
                "packed tree (gradtx.pack) only the default view of each leaf is available"
            )
        if packed or not isinstance(state, State):
            return super().update(updates, state, params, **extra)
        self._check_update_args(updates, state, params, extra)
        leaves, treedef = flatten(updates)
        ref = params if params is not None else updates
        active = self._mask_leaves(ref, len(leaves))
        dims = leaf_specs(self.name, self.dims, ref, "dims")
        step = state["count"] if self.counts else None
        hp = resolve(self, step)
        out = [g for _, g in leaves]
        stacks: dict[tuple, list[tuple[int, MatrixView]]] = {}
        for i, ((path, g), on) in enumerate(zip(leaves, active)):
            if g is None or not on or (self.mask is None and dims[i] is None and g.ndim < 2):
                continue
            view = matrix_view(self.name, path, g.shape, dims[i])
            stacks.setdefault((*view.key, compute_dtype(g.dtype)), []).append((i, view))
        for (_, _, cdt), members in stacks.items():
            hp_c = jax.tree_util.tree_map(lambda v, d=cdt: jnp.asarray(v, d), hp)
            wide = [_gathered(out[i].astype(cdt)) for i, _ in members]
            mats = [v.to_matrices(w) for (_, v), (w, _) in zip(members, wide)]
            orth = hp_c._ns(mats[0] if len(mats) == 1 else jnp.concatenate(mats))
            cuts = np.cumsum([v.batch for _, v in members])[:-1].tolist()
            parts = jnp.split(orth, cuts) if cuts else [orth]
            for (i, v), (w, spec), o in zip(members, wide, parts):
                u = hp_c._finish(v.from_matrices(o), w, v).astype(out[i].dtype)
                out[i] = u if spec is None else jax.sharding.reshard(u, spec)
        entries = {"count": increment(step)} if step is not None else {}
        return treedef.unflatten(out), State(entries)


def orthogonalize(
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    eps: float = 1e-8,
    *,
    preconditioning: str = "frobenius",
    adaptive: bool = False,
    scaling: str = "none",
    consistent_rms: float | None = None,
    dimension_numbers: Any = None,
    mask: Any = None,
) -> Orthogonalize:
    r"""Newton–Schulz orthogonalisation of every matrix leaf, one batched iteration per shape.

    The stage Muon applies to its momentum (:func:`gradtx.muon`, :func:`gradtx.scale_by_muon`),
    usable after any direction: :math:`u = s\cdot \mathrm{NS}(g)` (see :class:`Orthogonalize`).

    Args:
      ns_coeffs: ``(a, b, c)``, a table of them (one per iteration) or a preset name
        (``"standard"``, ``"dion"``), as ``optax.contrib.muon``.
      ns_steps: iterations of a single triple.
      eps: ε of the normalisation.
      preconditioning: ``"frobenius"`` (default), ``"spectral"``, ``"aol"`` or ``"schatten"``.
      adaptive: multiply by :math:`\langle g, \mathrm{NS}(g)\rangle` over the leaf.
      scaling: ``"none"``, ``"width"`` (:math:`\sqrt{\max(1, n_{out}/n_{in})}`) or
        ``"consistent_rms"`` (:math:`\rho\sqrt{\max(n_{in}, n_{out})}`).
      consistent_rms: ρ, for ``scaling="consistent_rms"``.
      dimension_numbers: per-leaf ``MuonDimensionNumbers`` (a tree, a prefix of one, or a
        function of the params; ``None`` entries use the default view).
      mask: which leaves to orthogonalise; the others pass through. ``None``: every leaf with
        >= 2 dimensions.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.orthogonalize()
      >>> g = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]])}
      >>> u, _ = tx.update(g, tx.init(g))
      >>> [round(x, 1) for x in jnp.diag(u["w"]).tolist()]  # singular values 3 and 1 to ~1
      [0.8, 1.1]

    References:
      Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024.
      https://kellerjordan.github.io/posts/muon/
    """
    rows = coefficient_rows("orthogonalize", ns_coeffs, ns_steps)
    return Orthogonalize(
        rows, eps, preconditioning, adaptive, scaling, consistent_rms, dimension_numbers, mask
    )
