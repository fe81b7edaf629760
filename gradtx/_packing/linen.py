"""The packed layout for a flax linen model: :class:`PackedTrainState`, a
``flax.training.train_state.TrainState`` whose params are packed.

A linen train state holds the params itself, so here they are held packed (one
:class:`~gradtx.Packed`), and ``apply_fn`` is wrapped to unpack them: the step written for
``TrainState`` runs unchanged, and ``jax.grad`` of its loss with respect to ``state.params``
gives packed gradients (one concatenation per buffer, see :func:`gradtx.unpack`).
``flax.serialization`` saves the ordinary tree (the same bytes a ``TrainState`` of the
unpacked params saves) and restores it into the packed form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

from .._core.packed import Packed, unpack
from .._core.transformation import apply_updates
from .flax_class import FlaxBacked
from .pack import DEFAULT_THRESHOLD, pack
from .wrap import pack_like, unpacked_or_kept

__all__ = ["PackedTrainState", "UnpackingApply"]


@dataclasses.dataclass(frozen=True)
class UnpackingApply:
    """``apply_fn`` reading packed variables: ``fn(gradtx.unpack(variables), ...)``.

    Equal (and hashing equal) when the wrapped functions are, so a rebuilt train state has
    the same tree structure and a jitted step does not retrace."""

    fn: Callable[..., Any]

    def __call__(self, variables: Any, *args: Any, **kwargs: Any) -> Any:
        return self.fn(unpack(variables), *args, **kwargs)


def _has_packed(tree: Any) -> bool:
    is_node = lambda x: x is None or isinstance(x, Packed)  # noqa: E731
    return any(isinstance(x, Packed) for x in jax.tree_util.tree_leaves(tree, is_leaf=is_node))


class PackedTrainState(metaclass=FlaxBacked):
    """A linen ``TrainState`` (an instance *is* one) whose ``params`` are packed.

    ```python
    state = gradtx.PackedTrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def train_step(state, x, y):
        def loss_fn(params):
            return cross_entropy(state.apply_fn({"params": params}, x), y)
        loss, grads = jax.value_and_grad(loss_fn)(state.params)   # packed gradients
        return state.apply_gradients(grads=grads), loss
    ```

    ``state.params`` is a :class:`~gradtx.Packed` (:func:`gradtx.pack` of the params,
    grouped by ``tx``'s masks; ``gradtx.unpack(state.params)`` is the ordinary tree) and
    ``state.apply_fn`` unpacks the variables it is given (an ordinary tree passes through), so
    a step written for ``TrainState`` runs unchanged. :meth:`apply_gradients` is

    $$
    (u, s) = \\mathrm{tx.update}(g, s, \\theta), \\qquad \\theta \\leftarrow \\theta + u,
    \\qquad \\mathrm{step} \\leftarrow \\mathrm{step} + 1
    $$

    on the packed buffers; ``grads`` may be packed (``jax.grad`` with respect to
    ``state.params``) or the ordinary tree (packed into the layout first). Results equal
    ``TrainState``'s to float32 rounding (``tests/test_packed_integrations.py``).

    ``flax.serialization.to_bytes(state)`` saves the ordinary tree: the same state dict as a
    ``TrainState`` of the unpacked params and the same ``tx`` (optimizer slots that are not
    laid out like the params, such as Adafactor's factored statistics, stay packed), and
    ``from_bytes(target, data)`` packs it into ``target``'s layout. With orbax, save
    ``gradtx.unpack(state.params)`` and ``gradtx.unpack(state.opt_state)`` and restore them
    with :func:`gradtx.pack_like` (or save the packed state itself: a pytree of buffers).

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> import flax.linen as nn
      >>> model = nn.Dense(2)
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
      >>> state = gradtx.PackedTrainState.create(
      ...     apply_fn=model.apply, params=params, tx=gradtx.adam(0.1))
      >>> state.params.layout
      Layout(float32[8]×2 leaves; 0 leaves as they are)
      >>> loss = lambda p: jnp.sum(state.apply_fn({"params": p}, jnp.ones((1, 3))))
      >>> state = state.apply_gradients(grads=jax.grad(loss)(state.params))
      >>> int(state.step), gradtx.unpack(state.params)["bias"].shape
      (1, (2,))
    """

    if TYPE_CHECKING:
        step: Any
        apply_fn: Any
        params: Any
        tx: Any
        opt_state: Any

        def replace(self, **updates: Any) -> Any: ...

    @staticmethod
    def _flax_bases() -> tuple[type, ...]:
        from flax.training import train_state  # noqa: PLC0415  (optional dependency)

        return (train_state.TrainState,)

    @staticmethod
    def _flax_built(impl: type) -> None:
        from flax import serialization  # noqa: PLC0415  (optional dependency)

        serialization.register_serialization_state(impl, _to_dict, _from_dict, override=True)

    @classmethod
    def create(
        cls,
        *,
        apply_fn: Callable[..., Any] | None,
        params: Any,
        tx: Any,
        threshold: int | None = DEFAULT_THRESHOLD,
        include: Callable[[str, Any], bool] | None = None,
        **kwargs: Any,
    ) -> Any:
        """A train state at step 0 with ``params`` packed and ``opt_state = tx.init(packed)``.

        Args:
          apply_fn: the model's apply function (``model.apply``); it is wrapped to unpack
            the variables it is given (:class:`UnpackingApply`).
          params: the ordinary params tree (or one already packed: kept as it is).
          tx: the transformation.
          threshold: as for :func:`gradtx.pack`: the largest leaf that is packed.
          include: as for :func:`gradtx.pack`: ``include(path, leaf) -> bool`` per leaf.
          **kwargs: other fields of a subclass.
        """
        packed = (
            params
            if _has_packed(params)
            else pack(params, threshold=threshold, include=include, tx=tx)
        )
        fn = apply_fn
        if fn is not None and not isinstance(fn, UnpackingApply):
            fn = UnpackingApply(fn)
        return cls(  # type: ignore[call-arg]
            step=0, apply_fn=fn, params=packed, tx=tx, opt_state=tx.init(packed), **kwargs
        )

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> Any:
        """One step of ``tx`` on the packed params; ``step`` + 1, other fields from ``kwargs``.

        Args:
          grads: packed like ``params`` (the gradient with respect to ``state.params``) or the
            ordinary tree (packed into the layout of ``params`` here, inside the trace).
          **kwargs: other fields to replace.
        """
        g = pack_like(self.params, grads)
        updates, opt_state = self.tx.update(g, self.opt_state, self.params)
        params = apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **kwargs)


def _data_fields(state: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(state) if f.metadata.get("pytree_node", True)]


def _to_dict(state: Any) -> dict[str, Any]:
    from flax import serialization  # noqa: PLC0415  (optional dependency)

    return {
        name: serialization.to_state_dict(unpacked_or_kept(getattr(state, name)))
        for name in _data_fields(state)
    }


def _from_dict(target: Any, state_dict: dict[str, Any]) -> Any:
    from flax import serialization  # noqa: PLC0415  (optional dependency)

    values = {}
    for name in _data_fields(target):
        if name not in state_dict:
            raise ValueError(
                f"gradtx.PackedTrainState: the saved state has no field {name!r} (fields: "
                f"{sorted(state_dict)})"
            )
        t = getattr(target, name)
        ordinary = serialization.from_state_dict(unpacked_or_kept(t), state_dict[name], name=name)
        values[name] = pack_like(t, ordinary)
    return target.replace(**values)
