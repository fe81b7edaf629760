r"""``shard_state``: ZeRO stage 1, the optimizer state sharded over a mesh axis, params replicated.

Each of the ``n`` devices of ``axis`` keeps ``1/n`` of every state slot; params and updates
keep their sharding (replicated over ``axis``). Placements are declared and XLA inserts the
collectives. For a state leaf ``s`` of shape ``(d_0, ..., d_{r-1})``::

    owner(s) = the param whose key path is the longest suffix of s's key path and whose shape
               is s's (mu['w'] -> params['w']); none for a count or a factored statistic
    base(s)  = owner(s)'s PartitionSpec over the other axes (P() without an owner)
    k(s)     = Explicit mesh: the first dim with base[k] = None and n | d_k
               Auto mesh:     the first dim with n | d_k (from the shape alone, see below)
    spec(s)  = base(s) with axis at k(s);  base(s) if r = 0, if axis is in base(s) already
               (the param is sharded over it), or if there is no k(s)

A packed buffer (``gradtx.pack``) with no ``k`` is padded with zeros to a multiple of ``n``
and sharded (``pad=True``); a step gathers and cuts it, runs ``inner``, pads the new state.
Updates get their param's spec. The mesh is the params', else the ambient one, else ``mesh``;
none is an error. Placement is JAX's: ``device_put`` eagerly; on an ``Explicit`` mesh ``inner``
runs in ``auto_axes`` with ``out_sharding`` (so its ``lax.cond`` branches type-check); on an
``Auto`` mesh, whose traced types carry no spec, ``with_sharding_constraint`` (``axis`` at
``k``, other dims ``UNCONSTRAINED``) and ``shard_alike`` (updates, and leaves with no ``k``,
like their param): there ``k`` ignores ``base``, and a param whose dim ``k`` is sharded over
another axis is refused (use an ``Explicit`` mesh).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.shard_alike import shard_alike
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .._core.packed import flat_segments
from .._core.struct import static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError, check_structure, flatten, is_none, path_str
from .._wrappers.common import as_inner

__all__ = ["LeafPlan", "ShardPlan", "ShardState", "shard_state"]

_U = PartitionSpec.UNCONSTRAINED


class LeafPlan(NamedTuple):
    """One state leaf: path, shapes (inner's, stored), spec, sharded dim, reason, bytes."""

    path: str
    shape: tuple[int, ...]
    stored: tuple[int, ...]
    spec: PartitionSpec | None
    dim: int | None
    reason: str
    nbytes: int  # the whole leaf (one replicated copy)
    device_nbytes: int  # one device's shard of the stored leaf


class ShardPlan(NamedTuple):
    """What :meth:`ShardState.plan` returns: one :class:`LeafPlan` per array leaf of the state;
    ``print`` it for a table."""

    axis: str
    axis_size: int
    entries: tuple[LeafPlan, ...]

    @property
    def sharded(self) -> tuple[str, ...]:
        """The paths of the leaves sharded over the axis (padded ones included)."""
        return tuple(e.path for e in self.entries if e.dim is not None)

    @property
    def replicated(self) -> dict[str, str]:
        """``{path: reason}`` for the leaves that stay replicated over the axis."""
        return {e.path: e.reason for e in self.entries if e.dim is None}

    @property
    def nbytes(self) -> int:
        """The bytes of the unsharded state (one full copy, unpadded)."""
        return sum(e.nbytes for e in self.entries)

    @property
    def device_nbytes(self) -> int:
        """The state bytes one device holds (padding included)."""
        return sum(e.device_nbytes for e in self.entries)

    def __str__(self) -> str:
        rows: list[tuple[str, ...]] = [("path", "shape", "spec", "reason")]
        rows += [(e.path, str(list(e.shape)), str(e.spec), e.reason) for e in self.entries]
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        rows.insert(1, tuple("-" * x for x in w))
        lines = ["| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |" for r in rows]
        head = (
            f"state sharded over {self.axis!r} ({self.axis_size} devices): {self.device_nbytes:,}"
        )
        return "\n".join([f"{head} of {self.nbytes:,} bytes per device", *lines])


def _sharding(x: Any) -> Any:
    if isinstance(x, jax.core.Tracer):
        return jax.typeof(x).sharding
    if isinstance(x, jax.Array | jax.ShapeDtypeStruct):
        return x.sharding
    return None


def _axes(entry: Any) -> tuple:
    if entry is None or entry is _U:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _is_array(x: Any) -> bool:
    return x is not None and hasattr(x, "shape") and hasattr(x, "dtype")


class ShardState(GradientTransformation):
    """``inner`` with its state sharded over a mesh ``axis`` (ZeRO-1); see :func:`shard_state`."""

    inner: Any = None
    axis: str = static("data")
    mesh: Any = static(None)
    pad: bool = static(True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_inner(self.name, self.inner))
        if not isinstance(self.axis, str) or not self.axis:
            raise TypeError(f"gradtx.{self.name}: axis must be a mesh axis name, got {self.axis!r}")
        if self.mesh is not None:
            if not isinstance(self.mesh, Mesh):
                raise TypeError(
                    f"gradtx.{self.name}: mesh must be a jax.sharding.Mesh or None, got "
                    f"{type(self.mesh).__name__}"
                )
            self._check_mesh(self.mesh)
        super().__post_init__()

    def _check_mesh(self, mesh: Any) -> None:
        if self.axis not in mesh.axis_names:
            raise ValueError(
                f"gradtx.{self.name}: axis {self.axis!r} is not an axis of the mesh "
                f"{dict(mesh.shape)}; shard the state over one of {tuple(mesh.axis_names)}"
            )
        kinds = set(mesh.axis_types)
        if len(kinds) > 1 or not kinds <= {AxisType.Explicit, AxisType.Auto}:
            raise TransformError(
                f"gradtx.{self.name}: the mesh's axis types {tuple(mesh.axis_types)} are not "
                "supported; use a mesh whose axes are all Explicit or all Auto"
            )

    def _mesh(self, ref: Any) -> Any:
        """The params' (or updates') mesh, else the ambient one, else ``mesh``."""
        found, where = None, None
        for path, x in flatten(ref)[0]:
            sh = _sharding(x)
            if not isinstance(sh, NamedSharding) or sh.mesh.empty:
                continue
            if found is None:
                found, where = sh.mesh, path
            elif dict(sh.mesh.shape) != dict(found.shape):
                raise TransformError(
                    f"gradtx.{self.name}: the params at {path_str(where)} and {path_str(path)} "
                    f"are on different meshes, {dict(found.shape)} and {dict(sh.mesh.shape)}"
                )
        ambient = jax.sharding.get_abstract_mesh()
        if found is None and not ambient.empty:
            try:
                found = jax.sharding.get_mesh()  # concrete outside jit
            except ValueError:  # inside jit the abstract mesh serves
                found = None
            found = ambient if found is None or found.empty else found
        found = self.mesh if found is None else found
        if found is None:
            raise TransformError(
                f"gradtx.{self.name}: no mesh to shard the state over axis {self.axis!r}: the "
                f"params are on none and none is set; call init and update inside "
                f"jax.set_mesh(mesh), or pass mesh=... to gradtx.{self.name}"
            )
        self._check_mesh(found)
        return found

    def _base(self, x: Any, auto: bool) -> list | None:
        """A param's spec, padded to its rank; ``None``: unreadable (traced, ``Auto`` mesh)."""
        sh, ndim = _sharding(x), len(np.shape(x))
        if not isinstance(sh, NamedSharding) or sh.mesh.empty:
            return [None] * ndim
        if auto and isinstance(x, jax.core.Tracer):
            return None
        return (list(sh.spec) + [None] * ndim)[:ndim]

    def _decide(self, path: Any, s: Any, owner: Any, group: Any, mesh: Any) -> tuple:
        """``(spec, stored shape, dim, reason)`` of a state leaf; spec ``None``: like ``owner``."""
        shape, n = tuple(int(d) for d in np.shape(s)), int(mesh.shape[self.axis])
        auto = AxisType.Auto in tuple(mesh.axis_types)
        base = [None] * len(shape) if owner is None else self._base(owner, auto)
        known = base is not None
        spec = list(base) if known else [_U] * len(shape)  # type: ignore[arg-type]
        if not shape:
            return PartitionSpec(), shape, None, "replicated: scalar"
        has = [k for k, e in enumerate(spec) if self.axis in _axes(e)]
        free = [k for k, d in enumerate(shape) if d >= n and d % n == 0]
        if not auto:
            free = [k for k in free if spec[k] is None]
        k = has[0] if has else free[0] if free else None
        if auto and known and k is not None and (k != free[0] or _axes(spec[k]) and not has):
            raise TransformError(
                f"gradtx.{self.name}: on an Auto mesh the state's {self.axis!r} dimension is "
                f"the first one {n} divides, dim {free[0]} of {list(shape)} (inside jit an "
                f"Auto mesh's types carry no spec), but the param at {path_str(path)} is "
                f"sharded {PartitionSpec(*spec)}. Use an Explicit mesh (jax.make_mesh's "
                "default, under jax.set_mesh), where the state shards a free dimension"
            )
        why = f"sharded on dim {k}" + (", as its param" if has else "")
        if k is not None:
            spec[k] = spec[k] if has else self.axis
            return PartitionSpec(*spec), shape, k, why
        if group is not None and self.pad and shape == (group.size,):
            stored = (-(-shape[0] // n) * n,)
            why = f"padded {shape[0]} -> {stored[0]} (packed buffer), sharded on dim 0"
            return PartitionSpec(self.axis), stored, 0, why
        why = f"replicated: no {'' if auto else 'unsharded '}dimension divisible by {n}"
        return (PartitionSpec(*spec) if known else None), shape, None, why

    def _decisions(self, state: Any, ref: Any, mesh: Any) -> list[tuple | None]:
        """Per flat leaf of ``state`` (``None`` kept), its decision and owner, or ``None``."""
        owners = {tuple(p): x for p, x in flatten(ref)[0] if _is_array(x)}
        segments = flat_segments(state)
        out: list[tuple | None] = []
        for i, (path, s) in enumerate(flatten(state)[0]):
            path, owner = tuple(path), None
            if not _is_array(s):
                out.append(None)
                continue
            for j in range(len(path) + 1):  # the longest suffix first
                o = owners.get(path[j:])
                if o is not None and np.shape(o) == np.shape(s):
                    path, owner = path[j:], o  # the param's path, for errors
                    break
            group = segments and segments[i]
            out.append((*self._decide(path, s, owner, group, mesh), owner))
        return out

    def _put(self, x: Any, spec: Any, like: Any, mesh: Any) -> Any:
        if spec is None:
            return shard_alike(x, like)[0]
        sharding = NamedSharding(mesh, spec)
        if not isinstance(x, jax.core.Tracer):
            return jax.device_put(x, sharding)
        if AxisType.Explicit in tuple(mesh.axis_types):
            return jax.sharding.reshard(x, sharding)
        return jax.lax.with_sharding_constraint(x, sharding)

    def _store(self, state: Any, ref: Any, mesh: Any) -> Any:
        """``state`` (the inner's) padded and placed as the rule says."""
        leaves, treedef = jax.tree_util.tree_flatten(state, is_leaf=is_none)
        for i, d in enumerate(self._decisions(state, ref, mesh)):
            if d is not None:
                x = leaves[i]
                if d[1] != tuple(np.shape(x)):  # a padded buffer
                    x = jnp.pad(x, (0, d[1][0] - x.shape[0]))
                leaves[i] = self._put(x, d[0], d[4], mesh)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def inner_state(self, state: Any) -> Any:
        """The inner's own state (padded buffers cut back), e.g. for the unsharded optimizer."""
        leaves, treedef = jax.tree_util.tree_flatten(state, is_leaf=is_none)
        for i, (x, g) in enumerate(zip(leaves, flat_segments(state) or ())):
            if g is not None and _is_array(x) and np.ndim(x) == 1 and x.shape[0] > g.size:
                sh = _sharding(x)
                if isinstance(sh, NamedSharding) and not sh.mesh.empty:  # gathered, then cut
                    x = self._put(x, PartitionSpec(None), None, sh.mesh)
                leaves[i] = jax.lax.slice(x, (0,), (g.size,))
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def _abstract(self, params: Any) -> tuple:
        mesh, state = self._mesh(params), jax.eval_shape(self.inner.init, params)
        return mesh, state, self._decisions(state, params, mesh)

    def plan(self, params: Any) -> ShardPlan:
        """Where ``init(params)`` puts each state leaf and why; nothing is allocated (the
        state is ``jax.eval_shape(inner.init, params)``)."""
        mesh, state, decisions = self._abstract(params)
        entries = []
        for (path, s), d in zip(flatten(state)[0], decisions):
            if d is not None:
                spec, stored, dim, reason, _ = d
                item, shape = int(jnp.dtype(s.dtype).itemsize), tuple(map(int, np.shape(s)))
                per = [math.prod(int(mesh.shape[a]) for a in _axes(e)) for e in spec or ()]
                local = math.prod(x // q for x, q in zip(stored, per + [1] * len(stored)))
                nbytes = (math.prod(shape) * item, local * item)
                entries.append(LeafPlan(path_str(path), shape, stored, spec, dim, reason, *nbytes))
        return ShardPlan(self.axis, int(mesh.shape[self.axis]), tuple(entries))

    def abstract_state(self, params: Any) -> Any:
        """The placed state as ``jax.ShapeDtypeStruct`` leaves with shardings, nothing
        allocated: an orbax restore target, or (each leaf's ``.sharding``) ``out_shardings``."""
        mesh, state, decisions = self._abstract(params)
        leaves, treedef = jax.tree_util.tree_flatten(state, is_leaf=is_none)
        for i, d in enumerate(decisions):
            if d is not None:  # (spec None, like a traced Auto param: taken as replicated)
                sharding = NamedSharding(mesh, d[0] or PartitionSpec())
                leaves[i] = jax.ShapeDtypeStruct(d[1], leaves[i].dtype, sharding=sharding)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def init(self, params: Any) -> Any:
        mesh = self._mesh(params)
        return self._store(self.inner.init(params), params, mesh)

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, Any]:
        if params is not None:
            check_structure(self.name, "updates", updates, "params", params)
        ref = updates if params is None else params
        mesh = self._mesh(ref)
        state = self.inner_state(state)

        def run(u: Any, s: Any, p: Any, e: dict) -> Any:
            return self.inner.update(u, s, p, **e)

        auto = AxisType.Auto in tuple(mesh.axis_types)
        if not auto:  # run inner on Auto axes, its outputs placed (see the module docstring)
            leaves, treedef = jax.tree_util.tree_flatten(state, is_leaf=is_none)
            specs = [
                d and (d[0] if d[1] == tuple(np.shape(x)) else PartitionSpec(None))
                for x, d in zip(leaves, self._decisions(state, ref, mesh))
            ]
            out = jax.tree.map(lambda x: PartitionSpec(*self._base(x, False) or ()), ref)
            run = jax.sharding.auto_axes(
                run, out_sharding=(out, jax.tree.unflatten(treedef, specs))
            )
        with jax.sharding.use_abstract_mesh(getattr(mesh, "abstract_mesh", mesh)):
            new_updates, new_state = run(updates, state, params, extra)
        leaves, treedef = jax.tree_util.tree_flatten(new_updates, is_leaf=is_none)
        for i, (u, (_, p)) in enumerate(zip(leaves, flatten(ref)[0])):
            if _is_array(u) and _is_array(p):  # like its param (shard_alike: spec unknown)
                base = None if auto and isinstance(u, jax.core.Tracer) else self._base(p, auto)
                leaves[i] = self._put(u, None if base is None else PartitionSpec(*base), p, mesh)
        return jax.tree_util.tree_unflatten(treedef, leaves), self._store(new_state, ref, mesh)

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, self.inner_state(state))]


def shard_state(
    inner: Any, axis: str = "data", mesh: Mesh | None = None, *, pad: bool = True
) -> ShardState:
    r"""Shards the optimizer state of ``inner`` over a mesh axis (ZeRO-1); params stay as they are.

    With ``n`` devices on ``axis``, each state leaf :math:`s` and each update :math:`u_t` of a
    param :math:`\theta` is placed as

    .. math::

        \mathrm{spec}(s) = \mathrm{base}(s) + \texttt{axis} \text{ at } k(s), \qquad
        \mathrm{spec}(u_t) = \mathrm{spec}(\theta)

    with ``base(s)`` its param's spec over the other axes and ``k(s)`` its first dimension that
    ``n`` divides and no other axis shards. A scalar (a count) or a leaf with no such dimension
    stays replicated over ``axis``; a packed buffer is padded to a multiple of ``n`` instead
    (``pad``). The numbers are ``inner``'s (bit for bit in the tests; a reduction over a
    sharded slot, a trust ratio, may sum in another order: float32 rounding). The state has
    ``inner``'s structure (``gradtx.hyperparams`` and named access see through);
    :meth:`ShardState.plan` says where each leaf goes and why, :meth:`ShardState.abstract_state`
    gives an orbax restore target. The exact rule is in :mod:`gradtx._precision.zero`.

    Args:
      inner: a gradtx or optax transformation.
      axis: the mesh axis to shard the state over (the data-parallel axis).
      mesh: the mesh used when the params are on none (one device, or abstract) and none is
        set with ``jax.set_mesh``.
      pad: whether a packed buffer that ``n`` does not divide is padded (else replicated).

    Returns:
      A :class:`ShardState`; its state is ``inner``'s, placed.

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> mesh = jax.make_mesh((8,), ("data",))
      >>> tx = gradtx.shard_state(gradtx.adam(1e-3), "data")
      >>> params = {"w": jnp.ones((16, 4)), "b": jnp.ones(3)}
      >>> with jax.set_mesh(mesh):
      ...     state = tx.init(params)
      ...     plan = tx.plan(params)
      >>> state.knobs.mu["w"].sharding.spec, state.knobs.mu["b"].sharding.spec
      (P('data', None), P(None,))
      >>> plan.sharded
      (".knobs.mu['w']", ".knobs.nu['w']")
      >>> plan.device_nbytes, plan.nbytes  # per device, and of one whole copy
      (92, 540)

    References:
      Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
      Models", SC 2020, https://arxiv.org/abs/1910.02054 (stage 1: optimizer state
      partitioning); Xu et al., "Automatic Cross-Replica Sharding of Weight Update in
      Data-Parallel Training", 2020, https://arxiv.org/abs/2004.13336 (the same on XLA).
    """
    return ShardState(inner, axis, mesh, pad)
