"""The packed layout for a flax nnx model, without touching the model:
:class:`PackedOptimizer`, an ``nnx.Optimizer`` whose transformation runs on packed buffers.

The model keeps its ``Param`` variables as they are (the source of truth: ``nnx.update``,
sharding annotations, checkpoints of ``nnx.state(model)`` and evaluation see nothing new).
The optimizer holds its state in the packed layout of those params, decided once by
:func:`gradtx.pack` at construction (the :class:`~gradtx.Layout` is a static attribute).
Each :meth:`PackedOptimizer.update`, traced inside the user's ``nnx.jit`` step, concatenates
the gradients and the params into the layout's buffers (one concatenation each per buffer),
runs the transformation once per buffer, and writes the new params back into the model's
variables as views of the new buffers. Holding the params packed as well (the model reading
views of the optimizer's buffers) was measured too: it doubles the params' memory, makes the
optimizer a second source of truth for them, and was not faster (``docs/packing.md``).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core.packed import Layout, Packed, unpack
from .._core.transformation import apply_updates
from .flax_class import FlaxBacked
from .pack import DEFAULT_THRESHOLD, _default_place, pack, resolve_threshold
from .wrap import pack_into, pack_like, unpacked_or_kept

__all__ = ["PackedOptimizer"]


def _nnx() -> Any:
    from flax import nnx  # noqa: PLC0415  (optional dependency, imported on first use)

    return nnx


def _opt() -> Any:
    from flax.nnx.training import optimizer  # noqa: PLC0415  (optional dependency)

    return optimizer


class PackedOptimizer(metaclass=FlaxBacked):
    """``nnx.Optimizer(model, tx, wrt=...)`` with ``tx`` running on the packed layout.

    A drop-in for ``nnx.Optimizer`` (an instance *is* one): the training step is unchanged,

    ```python
    optimizer = gradtx.PackedOptimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss
    ```

    and each update is

    $$
    (u, s) = \\mathrm{tx.update}(\\mathrm{pack}(g), s, \\mathrm{pack}(\\theta)), \\qquad
    \\theta \\leftarrow \\mathrm{unpack}(\\mathrm{pack}(\\theta) + u),
    $$

    with ``pack`` the layout fixed at construction: the small floating-point params in a few
    contiguous buffers (:func:`gradtx.pack`, grouped by ``tx``'s masks), so every
    elementwise stage runs once per buffer instead of once per leaf. Results equal
    ``nnx.Optimizer``'s to float32 rounding (``tests/test_packed_integrations.py``). The
    model is not changed: its ``Param`` variables hold ordinary arrays with their sharding.

    Attributes (as ``nnx.Optimizer``'s): ``step`` (an ``nnx.OptState`` counter), ``tx``,
    ``opt_state`` (the state on the packed layout, its arrays in ``nnx.OptArray``
    variables), ``wrt``; and ``layout``, the :class:`~gradtx.Layout` (static).

    Sharding: flax's recipe works as with ``nnx.Optimizer`` (``nnx.get_partition_spec``,
    ``nnx.get_named_sharding`` of ``nnx.state(optimizer)``, ``with_sharding_constraint``,
    inside ``nnx.jit`` or not; ``tests/test_packed_sharding.py``). A param sharded across
    devices is kept as it is (also when built inside ``nnx.jit``, where its ``out_sharding``
    annotation or its ``Explicit`` type says so), and its slots are ``nnx.OptVariable`` with
    the param's metadata, as ``nnx.Optimizer``'s. A buffer is replicated: annotated
    ``out_sharding=(None,)`` if one of its params is annotated, and placed by it at each
    update (on an ``Auto`` mesh the compiler could split it otherwise); else without
    annotation (``P()``, as the slots of unannotated params). Counts have none.

    Checkpoints: ``nnx.state(optimizer)`` holds the buffers (restore into an optimizer of the
    same layout). :meth:`unpacked_state` is the state of the ordinary tree instead, the one
    ``nnx.Optimizer`` has, and :meth:`load_unpacked_state` restores it.

    Args:
      model: the nnx module.
      tx: the transformation (any gradtx one; optax ones see buffers as plain arrays, so
        only elementwise optax stages are exact).
      wrt: the filter of the variables to optimize, as for ``nnx.Optimizer`` (required).
      threshold: as for :func:`gradtx.pack`: the largest leaf that is packed.
      include: as for :func:`gradtx.pack`: ``include(path, leaf) -> bool`` per leaf.
      graph: as for ``nnx.Optimizer`` (graph mode or tree mode; ``None``: the context's).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> from flax import nnx
      >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> optimizer = gradtx.PackedOptimizer(model, gradtx.adam(0.1), wrt=nnx.Param)
      >>> optimizer.layout
      Layout(float32[8]×2 leaves; 0 leaves as they are)
      >>> grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 3)))))(model)
      >>> _ = optimizer.update(model, grads)
      >>> int(optimizer.step[...]), isinstance(optimizer, nnx.Optimizer)
      (1, True)
    """

    if TYPE_CHECKING:
        graph: Any
        step: Any
        tx: Any
        opt_state: Any
        wrt: Any
        layout: Layout

    @staticmethod
    def _flax_bases() -> tuple[type, ...]:
        return (_nnx().Optimizer,)

    def __init__(
        self,
        model: Any,
        tx: Any,
        *,
        wrt: Any,
        threshold: int | None = DEFAULT_THRESHOLD,
        include: Any = None,
        graph: bool | None = None,
    ) -> None:
        nnx, opt = _nnx(), _opt()
        self.graph = graph
        self.step = opt.OptState(jnp.array(0, dtype=jnp.uint32))
        self.tx = tx
        self.wrt = wrt
        params = self._pure(model)
        kw = {} if graph is None else {"graph": graph}
        variables = _variables(nnx.state(model, wrt, **kw), params)
        include = _keep_split(params, variables, threshold, include)
        packed = pack(params, threshold=threshold, include=include, tx=tx)
        self.layout = packed.layout
        self.opt_state = nnx.data(_to_opt_state(tx.init(packed), packed.layout, variables))

    def _pure(self, tree: Any) -> Any:
        """The ``wrt`` variables of a model (or a state of them) as a state of arrays."""
        nnx = _nnx()
        kw = {} if self.graph is None else {"graph": self.graph}
        return nnx.as_pure(nnx.state(tree, self.wrt, **kw))

    def pack(self, tree: Any) -> Any:
        """A model's ``wrt`` params, or a state of them (gradients), in the optimizer's layout:
        the :class:`~gradtx.Packed` that ``tx`` sees (e.g. for ``gradtx.diagnostics``)."""
        return pack_into(self.layout, self._pure(tree), owner="gradtx.PackedOptimizer")

    def update(self, model: Any, grads: Any = None, /, **kwargs: Any) -> Any:
        """Updates the optimizer state and the model's params, as ``nnx.Optimizer.update``.

        Args:
          model: the nnx module (its ``wrt`` variables are read and written).
          grads: the gradients, as ``nnx.grad`` gives them (a state of the ``wrt``
            variables), or already in the optimizer's layout (a :class:`~gradtx.Packed`).
          **kwargs: passed to ``tx.update`` (``value=``, ``loss=``...).

        Returns:
          The updates, as a state of the ``wrt`` variables (views of the update buffers).
        """
        if grads is None:
            raise TypeError("gradtx.PackedOptimizer.update: missing the argument `grads`")
        nnx = _nnx()
        params = self.pack(model)
        g = grads if isinstance(grads, Packed) else self.pack(grads)
        if g.layout != self.layout:
            raise ValueError(
                f"gradtx.PackedOptimizer.update: the gradients have {g.layout!r}, the "
                f"optimizer {self.layout!r}"
            )
        updates, new_state = self.tx.update(
            g, nnx.as_pure(self.opt_state), params, **nnx.as_pure(kwargs)
        )
        nnx.update(model, unpack(apply_updates(params, updates)))
        nnx.update(self.opt_state, nnx.state(_held(new_state, self.opt_state)))
        self.step[...] += 1
        return unpack(updates)

    def unpacked_state(self) -> Any:
        """The optimizer's state for the ordinary params tree: an nnx ``State`` of arrays,
        ``{"opt_state": ..., "step": ...}``, as ``nnx.as_pure(nnx.state(...))`` of an
        ``nnx.Optimizer`` of the same model and ``tx`` has it (slots of stages that are not
        elementwise, such as Adafactor's factored statistics, stay packed). Save it for a
        checkpoint that does not depend on the layout; :meth:`load_unpacked_state` restores.
        """
        nnx = _nnx()
        ordinary = unpacked_or_kept(nnx.as_pure(self.opt_state))
        return nnx.as_pure(nnx.state(_holder(self.step[...], ordinary)))

    def load_unpacked_state(self, state: Any) -> None:
        """Sets the optimizer's state from :meth:`unpacked_state`'s form (a restored one:
        an nnx ``State``, or a nested dict of the same paths, e.g. from
        ``nnx.to_pure_dict``), packed into the optimizer's layout."""
        nnx = _nnx()
        current = nnx.as_pure(self.opt_state)
        holder = _holder(self.step[...], unpacked_or_kept(current))
        if not isinstance(state, nnx.State):  # a nested dict (msgpack makes int keys str)
            target = nnx.state(holder)
            nnx.replace_by_pure_dict(target, state)
            state = target
        nnx.update(holder, state)
        packed = pack_like(current, nnx.as_pure(holder.opt_state))
        nnx.update(self.opt_state, nnx.state(packed))
        self.step[...] = jnp.asarray(nnx.as_pure(holder.step), jnp.uint32)


# --- sharding metadata ---------------------------------------------------------------------


def _variables(state: Any, params: Any) -> list | None:
    """The ``wrt`` variables of a model in the order of the leaves of ``params`` (its pure
    state); ``None`` if a variable does not hold exactly one leaf."""
    nnx = _nnx()
    out = jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    if len(out) != len(jax.tree_util.tree_leaves(params, is_leaf=lambda x: x is None)):
        return None
    return out if all(isinstance(v, nnx.Variable) for v in out) else None


def _splits(spec: Any, mesh: Any) -> bool:
    """Whether a ``PartitionSpec`` divides an array over a mesh axis of more than one device
    (an axis whose size is not known counts as dividing)."""
    sizes = dict(getattr(mesh, "shape", None) or {})
    for entry in spec or ():
        for name in entry if isinstance(entry, tuple) else (entry,):
            if isinstance(name, str) and sizes.get(name, 2) > 1:
                return True
    return False


def _is_split(variable: Any, value: Any) -> bool:
    """Whether a param is (or will be) sharded across devices although :func:`gradtx.pack`
    cannot see it: a traced value (the optimizer built inside ``nnx.jit``) whose sharding
    annotation (``out_sharding`` metadata, logical rules resolved) or typed sharding
    (``Explicit`` mesh axes) divides it. Concrete sharded values ``pack`` keeps by itself."""
    if not isinstance(value, jax.core.Tracer):
        return False
    nnx = _nnx()
    meta = variable.get_metadata()
    if meta.get("out_sharding"):
        mesh = meta.get("mesh")
        if mesh is None:
            mesh = jax.sharding.get_abstract_mesh()
        if _splits(nnx.get_partition_spec(variable).get_value(), mesh):
            return True
    sh = getattr(jax.typeof(value), "sharding", None)
    return sh is not None and _splits(getattr(sh, "spec", None), getattr(sh, "mesh", None))


def _keep_split(params: Any, variables: list | None, threshold: Any, include: Any) -> Any:
    """``include`` for :func:`gradtx.pack`, with the params that :func:`_is_split` finds
    sharded kept as they are (their slots then carry their sharding); ``include`` unchanged
    when there are none."""
    if variables is None:
        return include
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: x is None)[0]
    keep = {jax.tree_util.keystr(p) for (p, x), v in zip(flat, variables) if _is_split(v, x)}
    if not keep:
        return include
    if include is None:
        limit = resolve_threshold(threshold, [x for _, x in flat], _default_place())
        include = lambda path, x: limit is None or math.prod(np.shape(x)) <= limit  # noqa: E731
    return lambda path, x: path not in keep and include(path, x)


def _replicated(x: Any) -> bool:
    """Whether an array is whole on each of its devices (as far as is known: a traced one
    on an ``Auto`` mesh counts as replicated)."""
    if isinstance(x, jax.core.Tracer):
        sh = getattr(jax.typeof(x), "sharding", None)
        return sh is None or not _splits(getattr(sh, "spec", None), getattr(sh, "mesh", None))
    sh = getattr(x, "sharding", None)
    return sh is None or sh.is_fully_replicated


def _to_opt_state(state: Any, layout: Layout, variables: list | None) -> Any:
    """``tx.init``'s state in ``nnx.OptArray`` variables, with the sharding metadata that
    ``nnx.get_partition_spec`` reads, as ``nnx.Optimizer`` gives its state: a slot of a leaf
    kept as it is (of the param's shape) is an ``nnx.OptVariable`` with the param's metadata
    (its ``out_sharding``, or its ``optimizer_sharding`` if it has one, flax's rule); a buffer
    of params of which one is annotated gets the replicated annotation ``(None,)``, and the
    annotated params' ``mesh``; counts and other leaves are plain ``nnx.OptArray``."""
    opt = _opt()
    if variables is None:
        return opt.to_opt_state(state)

    def buffer(b: Any, group: Any) -> Any:
        if b is None:
            return None
        metas = [variables[i].get_metadata() for i in group.indices]
        annotated = [m for m in metas if m.get("out_sharding")]
        if not annotated or not _replicated(b):
            return opt.OptArray(b)
        mesh = next((m["mesh"] for m in annotated if m.get("mesh") is not None), None)
        extra = {} if mesh is None else {"mesh": mesh}
        return opt.OptArray(b, out_sharding=(None,) * np.ndim(b), **extra)

    def kept(x: Any, variable: Any) -> Any:
        if x is None:
            return None
        if np.shape(x) != np.shape(variable.get_value()):
            return opt.OptArray(x)
        return opt.to_opt_state(variable.replace(x))

    def node(x: Any) -> Any:
        if not (isinstance(x, Packed) and x.layout == layout):
            return opt.to_opt_state(x)
        bufs = tuple(buffer(b, g) for g, b in zip(layout.groups, x.buffers))
        leaves = tuple(kept(v, variables[i]) for i, v in zip(layout.big, x.leaves))
        return Packed(bufs, leaves, layout)

    return jax.tree_util.tree_map(node, state, is_leaf=lambda x: isinstance(x, Packed))


def _held(new: Any, current: Any) -> Any:
    """``new`` (a state of arrays) with each buffer that carries an ``out_sharding``
    annotation (:func:`_to_opt_state`) placed by it, as flax places an annotated variable
    when it is created: on an ``Auto`` mesh the compiler would otherwise be free to split a
    new buffer over an axis (``Explicit`` mesh types keep it replicated by themselves)."""
    from flax.core import spmd  # noqa: PLC0415  (optional dependency)

    def one(b: Any, v: Any) -> Any:
        meta = v.get_metadata() if b is not None and v is not None else {}
        if not meta.get("out_sharding"):
            return b
        mesh = meta.get("mesh")
        if mesh is None and jax.sharding.get_abstract_mesh().empty:
            return b
        return spmd.shard_value(b, meta["out_sharding"], meta.get("sharding_rules"), mesh)

    def node(n: Any, c: Any) -> Any:
        if not (isinstance(n, Packed) and isinstance(c, Packed)):
            return n
        return Packed(tuple(map(one, n.buffers, c.buffers)), n.leaves, n.layout)

    return jax.tree_util.tree_map(node, new, current, is_leaf=lambda x: isinstance(x, Packed))


def _holder(step: Any, opt_state: Any) -> Any:
    """An nnx object with ``step`` and ``opt_state`` as ``nnx.Optimizer`` holds them (its
    ``nnx.state`` has the paths of an optimizer's)."""
    nnx, opt = _nnx(), _opt()
    return _holder_class()(opt.OptState(jnp.asarray(step)), nnx.data(opt.to_opt_state(opt_state)))


@functools.cache
def _holder_class() -> Any:
    base: Any = _nnx().Pytree

    class OptimizerState(base):
        def __init__(self, step: Any, opt_state: Any) -> None:
            self.step = step
            self.opt_state = opt_state

    return OptimizerState
