"""Checkpointing optimizer state: :class:`~gradtx.State` with flax.serialization and orbax.

gradtx never imports flax. :class:`~gradtx.State` is registered with ``flax.serialization`` (the
msgpack format of ``flax.serialization.to_bytes``/``from_bytes`` and of flax's ``TrainState``)
as soon as flax is in use, without the user calling anything:

- at ``import gradtx``, if ``flax.serialization`` is already imported (``import flax`` and
  ``from flax import nnx`` both import it);
- otherwise the first time a :class:`~gradtx.State` is built after flax has been imported (by
  ``tx.init``, ``tx.update`` or any pytree operation on a state). The check is a lookup in
  ``sys.modules`` until flax shows up, and one boolean afterwards.

The one case this cannot see is a state built *before* flax was imported and serialized with
no state built since; :func:`register_flax_serialization` registers explicitly (it is
idempotent) and is also the documented way to make the registration visible in one's own code.

orbax-checkpoint needs no registration: :class:`~gradtx.State` is a pytree with attribute keys,
so a checkpoint stores ``opt_state.adamw.knobs.mu`` under those names, and restoring with a
target tree (``jax.eval_shape(tx.init, params)``) gives back :class:`~gradtx.State` values.
"""

from __future__ import annotations

import sys
from typing import Any

from . import _state
from ._state import State

__all__ = ["register_flax_serialization"]


#: The key under which a msgpack state dict records what built the state (see State).
BUILDER_KEY = "__gradtx_builder__"


def _to_state_dict(state: State) -> dict[str, Any]:
    from flax import serialization  # noqa: PLC0415  (optional dependency)

    out: dict[str, Any] = {
        name: serialization.to_state_dict(value) for name, value in state.items()
    }
    tag = _state.builder(state)
    if tag is not None:
        out[BUILDER_KEY] = tag
    return out


def _from_state_dict(target: State, state_dict: dict[str, Any]) -> State:
    from flax import serialization  # noqa: PLC0415  (optional dependency)

    state_dict = dict(state_dict)
    saved_by = state_dict.pop(BUILDER_KEY, None)
    target_by = _state.builder(target)
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
    return _state.with_builder(restored, target_by)


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

    from ._packing_serialization import register_packed_serialization  # noqa: PLC0415

    if not _state._flax_registered:
        _register(serialization)
    register_packed_serialization()


def register_if_flax_loaded() -> None:
    """Registers with flax when ``flax.serialization`` is imported; never imports flax itself.

    Called at ``import gradtx`` and, until it has succeeded, when a :class:`State` is built.
    """
    module = sys.modules.get("flax.serialization")
    if module is None or _state._flax_registered:
        return
    try:
        _register(module)
    except AttributeError:  # flax.serialization is still being imported: try again later
        return


def _register(serialization: Any) -> None:
    serialization.register_serialization_state(
        State, _to_state_dict, _from_state_dict, override=True
    )
    _state._flax_registered = True
