"""Checkpoints of gradtx's pytrees: :class:`~gradtx.State` and :class:`~gradtx.Packed` with
``flax.serialization`` (msgpack) and orbax.

gradtx never imports flax. :class:`~gradtx.State` and :class:`~gradtx.Packed` are registered
with ``flax.serialization`` (the msgpack format of ``flax.serialization.to_bytes``/``from_bytes``
and of flax's ``TrainState``) as soon as flax is in use, without the user calling anything:

- at ``import gradtx``, if ``flax.serialization`` is already imported (``import flax`` and
  ``from flax import nnx`` both import it);
- otherwise the first time a :class:`~gradtx.State` or :class:`~gradtx.Packed` is built after
  flax has been imported (by ``tx.init``, ``tx.update``, ``pack`` or any pytree operation on
  one). The check is a lookup in ``sys.modules`` until flax shows up, and one boolean
  afterwards (:mod:`gradtx._core.flax_hook`).

The one case this cannot see is a state built *before* flax was imported and serialized with
no state built since; :func:`register_flax_serialization` registers explicitly (it is
idempotent) and is also the documented way to make the registration visible in one's own code.

A :class:`~gradtx.Packed` is saved as ``{"buffers": {"0": ..., ...}, "leaves": {"0": ...}}``
(an empty part left out); the :class:`~gradtx.Layout` is not saved: it is the target's.
Restoring checks that every saved buffer has the shape and dtype of the target's buffer, so a
checkpoint written with another layout is refused instead of being read with wrong offsets.

orbax-checkpoint needs no registration: both are pytrees with attribute keys, so a checkpoint
stores ``opt_state.adamw.knobs.mu`` (or ``.buffers[0]``) under those names, and restoring with
a target tree (``jax.eval_shape(tx.init, params)``) gives back gradtx's types.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._core import flax_hook
from .._core.packed import Packed
from .._core.state import State, builder, with_builder

__all__ = ["register_flax_serialization", "BUILDER_KEY"]


#: The key under which a msgpack state dict records what built the state (see State).
BUILDER_KEY = "__gradtx_builder__"


def _state_to_dict(state: State) -> dict[str, Any]:
    from flax import serialization  # noqa: PLC0415  (optional dependency)

    out: dict[str, Any] = {
        name: serialization.to_state_dict(value) for name, value in state.items()
    }
    tag = builder(state)
    if tag is not None:
        out[BUILDER_KEY] = tag
    return out


def _state_from_dict(target: State, state_dict: dict[str, Any]) -> State:
    from flax import serialization  # noqa: PLC0415  (optional dependency)

    state_dict = dict(state_dict)
    saved_by = state_dict.pop(BUILDER_KEY, None)
    target_by = builder(target)
    if isinstance(saved_by, bytes):
        saved_by = saved_by.decode()
    if saved_by is not None and target_by is not None and saved_by != target_by:
        raise ValueError(
            f"gradtx.State: the checkpoint at {serialization.current_path() or '<root>'} holds "
            f"the state of {saved_by}, but the target is the state of {target_by}"
        )
    names, saved = list(target), set(state_dict)
    if set(names) != saved:
        missing = sorted(set(names) - saved)
        extra = sorted(saved - set(names))
        raise ValueError(
            "gradtx.State: the saved state does not match the target state at "
            f"{serialization.current_path()}: missing entries {missing}, unexpected {extra} "
            "(was the checkpoint written by a different transformation?)"
        )
    restored = State(
        {n: serialization.from_state_dict(target[n], state_dict[n], name=n) for n in names}
    )
    return with_builder(restored, target_by)


def _parts(p: Packed) -> dict[str, tuple]:
    out = {}
    if p.layout.groups:
        out["buffers"] = p.buffers
    if p.layout.big:
        out["leaves"] = p.leaves
    return out


def _packed_to_dict(p: Packed) -> dict[str, Any]:
    from flax import serialization  # noqa: PLC0415  (optional dependency)

    return {name: serialization.to_state_dict(part) for name, part in _parts(p).items()}


def _check_buffer(path: str, i: int, target: Any, saved: Any) -> None:
    if target is None or saved is None or not hasattr(target, "shape"):
        return
    shape, dtype = tuple(np.shape(saved)), np.asarray(saved).dtype
    if shape != tuple(target.shape) or dtype != np.dtype(target.dtype):
        raise ValueError(
            f"gradtx.Packed: the saved buffer {i} at {path} is {dtype.name}{list(shape)} but "
            f"the target's is {np.dtype(target.dtype).name}{list(target.shape)}: the "
            "checkpoint was written with another layout (restore into a target packed "
            "by the same `gradtx.pack` call on a tree of the same structure)"
        )


def _packed_from_dict(target: Packed, state: dict[str, Any]) -> Packed:
    from flax import serialization  # noqa: PLC0415  (optional dependency)

    path = serialization.current_path() or "/"
    parts = _parts(target)
    if set(state) != set(parts):
        raise ValueError(
            f"gradtx.Packed: the saved value at {path} has parts {sorted(state)} but the "
            f"target {target.layout!r} has {sorted(parts)}: the checkpoint was written with "
            "another layout"
        )
    out = {}
    for name, part in parts.items():
        saved = state[name]
        if len(saved) != len(part):
            raise ValueError(
                f"gradtx.Packed: the saved value at {path} has {len(saved)} {name} but the "
                f"target {target.layout!r} has {len(part)}: the checkpoint was written with "
                "another layout"
            )
        if name == "buffers":
            for i, t in enumerate(part):
                _check_buffer(path, i, t, saved.get(str(i)))
        out[name] = serialization.from_state_dict(part, saved, name=name)
    return Packed(out.get("buffers", ()), out.get("leaves", ()), target.layout)


def register_flax_serialization() -> None:
    """Registers :class:`~gradtx.State` and :class:`~gradtx.Packed` with ``flax.serialization``
    (msgpack checkpoints).

    Idempotent. gradtx calls this by itself when flax is in use (see the module docs), so it is
    only needed for a state built before flax was first imported. A state is saved as a dict of
    its named entries (``{"adamw": {"knobs": {"count": ..., "mu": ...}}}``); restoring it into a
    target built by ``tx.init`` gives back :class:`~gradtx.State` values, nested for chains.

    Raises:
      ImportError: if flax is not installed.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> from flax import serialization
      >>> gradtx.register_flax_serialization()
      >>> tx = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(1e-3))
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> restored = serialization.from_bytes(state, serialization.to_bytes(state))
      >>> type(restored.adam.knobs).__name__, list(restored)
      ('State', ['clip_by_global_norm', 'adam'])
    """
    from flax import serialization  # noqa: PLC0415  (optional dependency)

    _register(serialization)
    flax_hook.registered = True


def _register(serialization: Any) -> None:
    serialization.register_serialization_state(
        State, _state_to_dict, _state_from_dict, override=True
    )
    serialization.register_serialization_state(
        Packed, _packed_to_dict, _packed_from_dict, override=True
    )


flax_hook.install(_register)  # now if flax is imported already, else when a State is built
