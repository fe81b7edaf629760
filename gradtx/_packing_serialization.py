"""Checkpointing packed trees: :class:`~gradtx.Packed` with ``flax.serialization``.

gradtx never imports flax. :class:`~gradtx.Packed` is registered with ``flax.serialization``
(the msgpack format of ``flax.serialization.to_bytes``/``from_bytes``) as soon as flax is in
use, like :class:`~gradtx.State` (:mod:`gradtx._checkpoint`): when this module is imported
with ``flax.serialization`` already imported, and otherwise the first time a
:class:`~gradtx.Packed` is built after flax has been imported (by ``pack``, by any pytree
operation on a packed tree, by ``tx.init`` on one). :func:`register_packed_serialization`
registers explicitly (idempotent).

A :class:`~gradtx.Packed` is saved as ``{"buffers": {"0": ..., ...}, "leaves": {"0": ...}}``
(an empty part left out); the :class:`~gradtx.Layout` is not saved: it is the target's.
Restoring checks that every saved buffer has the shape and dtype of the target's buffer, so a
checkpoint written with another layout is refused instead of being read with wrong offsets.

orbax-checkpoint needs no registration: the pytree children of :class:`~gradtx.Packed` have
attribute keys (``.buffers[0]``, ``.leaves[2]``), and restoring with a target (e.g.
``jax.eval_shape(lambda: packed)``) gives back :class:`~gradtx.Packed` values.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _packing
from ._packing import Packed

__all__ = ["register_packed_serialization", "register_if_flax_loaded"]


def _parts(p: Packed) -> dict[str, tuple]:
    out = {}
    if p.layout.groups:
        out["buffers"] = p.buffers
    if p.layout.big:
        out["leaves"] = p.leaves
    return out


def _to_state_dict(p: Packed) -> dict[str, Any]:
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


def _from_state_dict(target: Packed, state: dict[str, Any]) -> Packed:
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


def register_packed_serialization() -> None:
    """Registers :class:`~gradtx.Packed` with ``flax.serialization`` (msgpack checkpoints).

    Idempotent; gradtx calls it by itself when flax is in use (see the module docs).

    Raises:
      ImportError: if flax is not installed.
    """
    from flax import serialization  # noqa: PLC0415  (optional dependency)

    if not _packing._flax_registered:
        _register(serialization)


def register_if_flax_loaded() -> None:
    """Registers with flax when ``flax.serialization`` is imported; never imports flax itself."""
    module = sys.modules.get("flax.serialization")
    if module is None or _packing._flax_registered:
        return
    try:
        _register(module)
    except AttributeError:  # flax.serialization is still being imported: try again later
        return


def _register(serialization: Any) -> None:
    serialization.register_serialization_state(
        Packed, _to_state_dict, _from_state_dict, override=True
    )
    _packing._flax_registered = True


register_if_flax_loaded()
