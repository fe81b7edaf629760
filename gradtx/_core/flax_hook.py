"""Registration with ``flax.serialization`` as soon as flax is in use, without importing flax
and without ``_core`` importing the layer that knows the format.

:mod:`gradtx._interop.checkpoint` installs its registration function here when it is imported
(at ``import gradtx``). :class:`~gradtx.State` and :class:`~gradtx.Packed` call
:func:`maybe_register` when one is built while :data:`registered` is false; it registers both
once ``flax.serialization`` is in ``sys.modules`` (a dictionary lookup until then, one boolean
afterwards).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["registered", "install", "maybe_register"]

#: Whether State and Packed are registered with flax.serialization.
registered = False
_register: Callable[[Any], None] | None = None


def install(register: Callable[[Any], None]) -> None:
    """Sets the function that registers gradtx's types with a ``flax.serialization`` module,
    and runs it now if flax is already imported."""
    global _register
    _register = register
    maybe_register()


def maybe_register() -> None:
    """Registers with flax if ``flax.serialization`` is imported and it has not been done."""
    global registered
    if registered or _register is None:
        return
    module = sys.modules.get("flax.serialization")
    if module is None:
        return
    try:
        _register(module)
    except AttributeError:  # flax.serialization is still being imported: try again later
        return
    registered = True
