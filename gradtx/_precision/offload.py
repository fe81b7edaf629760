"""``offload_state``: the optimizer state kept in host memory, streamed into the step.

Between steps every state array of rank >= 1 (``mu``, ``nu``, accumulators, factored
statistics) lives in host memory (``memory_kind="pinned_host"``); scalars (counts, flags, a
loss scale) stay in device memory, where the step's control flow reads them. Per step::

    s_dev      = every offloaded state array moved to device memory  (jax.memory.Space.Device)
    u, s_dev'  = inner.update(g, s_dev, params)                       (on the device, as ever)
    s'         = every offloaded array of s_dev' moved back to host   (jax.memory.Space.Host)

The moves are ``jax.device_put`` to a memory space, so inside ``jax.jit`` XLA schedules the
host-to-device copies itself (on GPU and TPU they overlap the step's compute) and each array
keeps its sharding: an offloaded slot has its parameter's sharding, only its memory kind is
``pinned_host``. The state a step returns has the placement ``init`` gave it, so the step
compiles once. The numbers are ``inner``'s exactly (the same operations on the same values).

Support is the backend's: ``init`` and ``update`` check that the devices the state is on (the
default backend's, when tracing) have a ``pinned_host`` memory
(``device.addressable_memories()``) and raise a :class:`~gradtx.TransformError` naming the
transformation, the backend and the memory kinds it has otherwise. Only ``pinned_host`` is
offered: it is the host memory JAX can move arrays to inside ``jit`` (``jax.memory.Space.Host``);
``unpinned_host`` arrays are not kept as outputs of a jitted step.

On the CPU backend ``device``, ``pinned_host`` and ``unpinned_host`` all exist and are the same
physical memory (the host's RAM): offloading there changes the memory kind, and so the code path
GPU and TPU take, but saves nothing.
"""

from __future__ import annotations

from typing import Any

import jax

from .._core.struct import static
from .._core.transformation import GradientTransformation
from .._core.tree import TransformError, check_structure, is_none
from .._wrappers.common import as_inner

__all__ = ["OffloadState", "offload_state", "memory_kinds"]

#: The memory kinds offered, and the memory space JAX moves an array to for each.
_SPACES = {"pinned_host": jax.memory.Space.Host}


def memory_kinds(device: Any = None) -> tuple[str, ...]:
    """The memory kinds of ``device`` (default: the first device of the default backend),
    e.g. ``('device', 'pinned_host', 'unpinned_host')`` on CPU, GPU and TPU."""
    device = jax.devices()[0] if device is None else device
    return tuple(m.kind for m in device.addressable_memories())


def _offloaded(x: Any) -> bool:
    return x is not None and hasattr(x, "shape") and len(x.shape) >= 1


class OffloadState(GradientTransformation):
    """``inner`` with its state kept in host memory between steps; see the module docstring."""

    inner: Any = None
    memory_kind: str = static("pinned_host")

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_inner(self.name, self.inner))
        if self.memory_kind not in _SPACES:
            raise ValueError(
                f"gradtx.{self.name}: memory_kind must be one of {sorted(_SPACES)} (the host "
                "memory JAX moves arrays to inside jit, jax.memory.Space.Host), got "
                f"{self.memory_kind!r}"
            )
        super().__post_init__()

    def _check_backend(self, tree: Any) -> None:
        """Raises unless every device holding ``tree`` (or the default backend's first device,
        for a traced tree) has ``memory_kind``."""
        devices: set[Any] = set()
        for x in jax.tree_util.tree_leaves(tree):
            if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
                devices |= set(x.sharding.device_set)
        for device in devices or {jax.devices()[0]}:
            kinds = memory_kinds(device)
            if self.memory_kind not in kinds:
                raise TransformError(
                    f"gradtx.{self.name}: the {device.platform} backend ({device}) has no "
                    f"{self.memory_kind!r} memory to offload the state to; its memory kinds "
                    f"are {list(kinds)}. Use the optimizer without offload_state there"
                )

    def _move(self, state: Any, space: Any) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten(state, is_leaf=is_none)
        treedef_: Any = treedef
        out = [jax.device_put(x, space) if _offloaded(x) else x for x in leaves]
        return treedef_.unflatten(out)

    def init(self, params: Any) -> Any:
        self._check_backend(params)
        return self._move(self.inner.init(params), _SPACES[self.memory_kind])

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, Any]:
        if params is not None:
            check_structure(self.name, "updates", updates, "params", params)
        self._check_backend(state)
        on_device = self._move(state, jax.memory.Space.Device)
        new_updates, new_state = self.inner.update(updates, on_device, params, **extra)
        return new_updates, self._move(new_state, _SPACES[self.memory_kind])

    def views(self, state: Any) -> list[tuple[Any, Any, Any]]:
        return [(None, self.inner, state)]


def offload_state(inner: Any, memory_kind: str = "pinned_host") -> OffloadState:
    r"""Keeps the optimizer state of ``inner`` in host memory; each step streams it in and out.

    For every state array :math:`s` of rank :math:`\geq 1` (scalars stay on the device):

    .. math::

        s_t = \mathrm{host}\big(\,\mathrm{inner}(g_t,\ \mathrm{device}(s_{t-1}),\ \theta_{t-1})
        \big)

    with ``device``/``host`` the moves ``jax.device_put(s, jax.memory.Space.Device / Host)``,
    which keep each array's sharding. The updates are ``inner``'s, equal bit for bit; the
    state has ``inner``'s structure (a checkpoint of it is the non-offloaded optimizer's).
    Works with any gradtx or optax transformation, and under ``shard_state`` (ZeRO-1) too:
    ``offload_state(shard_state(tx, "data"))`` keeps each device's shard on its host. The
    exact rule and the backend check are in :mod:`gradtx._precision.offload`.

    Warning:
      On the CPU backend the host memory kinds are the same RAM as ``device``: offloading
      there runs the GPU/TPU code path and saves no memory. Measure on the accelerator
      whether the step time (the transfers of every slot, each step) is worth the memory.

    Args:
      inner: a gradtx or optax transformation.
      memory_kind: where the state lives between steps; ``"pinned_host"`` (the host memory
        JAX moves arrays to inside ``jit``) is the one supported.

    Returns:
      An :class:`OffloadState`. Its ``init`` and ``update`` raise a
      :class:`~gradtx.TransformError` on a backend without ``memory_kind``.

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> tx = gradtx.offload_state(gradtx.adam(1e-3))
      >>> params = {"w": jnp.ones((4, 3))}
      >>> state = tx.init(params)
      >>> state.knobs.mu["w"].sharding.memory_kind, state.knobs.count.sharding.memory_kind
      ('pinned_host', 'device')
      >>> step = jax.jit(tx.update)
      >>> updates, state = step(params, state, params)
      >>> state.knobs.nu["w"].sharding.memory_kind
      'pinned_host'

    References:
      JAX, "Host offloading", https://docs.jax.dev/en/latest/notebooks/host-offloading.html;
      Ren et al., "ZeRO-Offload: Democratizing Billion-Scale Model Training", USENIX ATC 2021,
      https://arxiv.org/abs/2101.06840 (the optimizer state in host memory).
    """
    return OffloadState(inner, memory_kind)
