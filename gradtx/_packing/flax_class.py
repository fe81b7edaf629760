"""Public classes that extend a flax class without ``import gradtx`` importing flax.

gradtx never imports flax by itself (``tests/test_checkpoint.py`` checks it), yet
:class:`~gradtx.PackedOptimizer` must *be* an ``nnx.Optimizer`` (``nnx.jit`` propagates the
mutations of graph nodes only) and :class:`~gradtx.PackedTrainState` a linen ``TrainState``.
So the public class is written without flax bases, with the metaclass :class:`FlaxBacked`
and a static method ``_flax_bases()`` that imports flax and returns the bases. Calling the
public class (or one of its class methods that calls ``cls(...)``) builds, once, the
implementation class ``(public class, *flax bases)`` and constructs that: the instance is
both ``isinstance(x, gradtx.PackedOptimizer)`` and ``isinstance(x, nnx.Optimizer)``, and its
methods are the public class's (first in the method resolution order).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FlaxBacked", "implementation"]

#: The implementation class of each public class, built on first use.
_IMPLS: dict[type, type] = {}


class FlaxBacked(type):
    """Metaclass of a public class whose instances are instances of its flax implementation."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls.__dict__.get("_flax_public") is not None:  # the implementation: construct it
            return super().__call__(*args, **kwargs)
        return implementation(cls)(*args, **kwargs)


def implementation(cls: type) -> type:
    """The class ``(cls, *cls._flax_bases())`` (built once), with ``cls``'s name and module."""
    impl = _IMPLS.get(cls)
    if impl is not None:
        return impl
    bases = cls._flax_bases()  # type: ignore[attr-defined]
    meta: type = FlaxBacked
    for b in bases:
        if not issubclass(meta, type(b)):  # e.g. nnx's PytreeMeta: a metaclass of both
            meta = type(f"{type(b).__name__}FlaxBacked", (FlaxBacked, type(b)), {})
    namespace = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "_flax_public": cls,
    }
    impl = meta(cls.__name__, (cls, *bases), namespace)
    after = getattr(cls, "_flax_built", None)
    if after is not None:
        after(impl)
    _IMPLS[cls] = impl
    return impl
