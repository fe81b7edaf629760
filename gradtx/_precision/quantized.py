"""8-bit block-quantised storage of a state slot: ``int8_blocks``, a value of the dtype policy.

A slot stored this way keeps, per float leaf ``x`` of ``n`` elements, one byte per element and
one float32 scale per block of ``B`` elements (the row-major flattening of ``x``, cut into
``⌈n/B⌉`` blocks, the last one padded with zeros while it is quantised)::

    signed (mu):      s_b = max_{i∈b} |x_i|,     c_i = Q(x_i / s_b),      x̂_i = T[c_i] · s_b
    unsigned (nu):    s_b = max_{i∈b} √x_i,      c_i = Q⁺(√x_i / s_b),    x̂_i = (T⁺[c_i] · s_b)²

``T`` and ``T⁺`` are sorted tables of 8-bit values in ``[-1, 1]`` and ``[0, 1]``: the dynamic
(tree) quantisation of Dettmers (2016), used for both Adam moments by Dettmers et al. (2022) and
torchao's ``AdamW8bit``. A value ``10^(-E) · f`` has a decade ``E`` and a linear fraction
``f ∈ (0.1, 1]``; of the bits after the sign, ``E`` leading zeros then a one mark the decade
and the remaining ones are the fraction, so decade ``E`` has ``2^(6-E)`` fractions (signed,
``E = 0..6``) or ``2^(7-E)`` (unsigned, ``E = 0..7``): fine steps near the block's absmax,
coarse ones over seven or eight decades below it. Here ``f`` runs over the right ends of equal
steps of ``(0.1, 1]``, so ``±1`` (the absmax itself) is exact. ``T`` has 255 values (0 and
127 of each sign; one code is unused), ``T⁺`` 256 (0 and 255).

``Q`` is round to nearest (``c`` the index of the nearest table value), or, with
``rounding="stochastic"``, one of the two table values around ``y`` with the probabilities
that make ``E[T[c]] = y``. ``Q⁺`` is the same except that ``y > 0`` never gives code 0: a
positive second moment below the table's smallest step is stored as that step (the
"zero-point" problem, Li et al. 2023: a ``v`` rounded to 0 turns ``m/(√v + ε)`` into
``m/ε``). The unsigned form stores ``√v``, not ``v`` as Dettmers et al. do: the table's
eight decades then span sixteen of ``v``, so the gradients in one block may differ by a factor
10⁷ (``v`` stored directly: about 3000) before the smaller ones are stored as the smallest
step. Measured on the noisy quadratic of tests/test_quantized_state.py (one seed, round to
nearest): ``v`` on the table without the square root gave 3.5× float32's loss after 1000
steps, ``√v`` 1.7× (for the rounding, see :func:`int8_blocks`).

Leaves smaller than ``min_size`` elements (and scalars) are not quantised: they are stored in
float32 (float64 for float64 params), as bitsandbytes and torchao keep small tensors in 32
bits. A non-finite value makes its block's scale non-finite, so it comes back non-finite.

References: Dettmers 2016, "8-Bit Approximations for Parallelism in Deep Learning"; Dettmers,
Lewis, Shleifer, Zettlemoyer 2022, "8-bit Optimizers via Block-wise Quantization" (ICLR);
Li, Chen, Zhu 2023, "Memory Efficient Optimizers with 4-bit States" (NeurIPS); torchao
``torchao.optim.AdamW8bit``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from .._core.numerics import compute_dtype
from .._core.tree import is_none

__all__ = ["Int8Blocks", "int8_blocks", "dynamic_table"]

CODE_DTYPE = jnp.uint8


@functools.cache
def dynamic_table(signed: bool) -> np.ndarray:
    """The sorted float64 table of the dynamic quantisation (see the module): 255 values in
    ``[-1, 1]`` (signed) or 256 in ``[0, 1]`` (unsigned), 0 and 1 among them."""
    bits = _bits(signed)
    mags = []
    for e in range(bits):
        k = 2 ** (bits - 1 - e)  # the fractions of decade e
        mags.append(10.0**-e * (0.1 + 0.9 * np.arange(1, k + 1) / k))
    pos = np.sort(np.concatenate(mags))
    vals = np.concatenate([-pos[::-1], [0.0], pos]) if signed else np.concatenate([[0.0], pos])
    vals.setflags(write=False)
    return vals


def _bits(signed: bool) -> int:
    return 7 if signed else 8  # the bits after the sign


def _decade(e: jax.Array, bits: int, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """``(k, f₀)`` of decade ``e``: its number of fractions and where its grid starts."""
    k = jnp.left_shift(1, bits - 1 - e).astype(dtype)
    return k, jnp.where(e == bits - 1, 0, 0.1).astype(dtype)


def encode(y: jax.Array, signed: bool, u: jax.Array | None = None) -> jax.Array:
    """The code (``uint8``) of each ``y`` in ``[-1, 1]`` (``[0, 1]`` unsigned): the index of
    the nearest value of :func:`dynamic_table`, or with uniforms ``u`` the lower or upper
    neighbour with the unbiased probabilities; unsigned ``y > 0`` never gets code 0.

    Computed, not searched: ``y``'s decade ``e`` (the number of ``10^(−i)``, ``i = 1..``,
    that ``|y|`` is at most; clipped to the table's), then the step ``j`` of the decade's grid
    ``10^(−e)·(f₀ + (1 − f₀)·j/k)``, ``j = 0..k``, whose ends are table values of this decade
    and the one below (``f₀ = 0.1``; 0 for the last decade, whose lower end is 0); the code
    counts the table values below. Comparisons and products only: no ``log`` or ``pow``
    (measured 1.5-2x faster on CPU than with them; a search of the table was 10x slower).
    """
    bits = _bits(signed)
    a = jnp.abs(y)
    e = jnp.zeros_like(a, dtype=jnp.int32)
    p10 = jnp.ones_like(a)  # 10^e, exactly
    for i in range(1, bits):
        below = a <= np.asarray(10.0**-i, y.dtype)
        e = e + below.astype(jnp.int32)
        p10 = jnp.where(below, p10 * 10, p10)
    k, f0 = _decade(e, bits, y.dtype)
    per_step = jnp.where(e == bits - 1, k, k * (1 / 0.9)).astype(y.dtype)  # k / (1 − f₀)
    steps = (a * p10 - f0) * per_step
    if u is None:
        j = jnp.round(steps)
    else:
        low = jnp.floor(steps)
        j = low + (u < steps - low).astype(y.dtype)
    pos = (k + jnp.clip(j, 0, k) - 2).astype(jnp.int32)  # index among the positives; -1: 0
    if signed:
        return (127 + jnp.where(y < 0, -1, 1) * (pos + 1)).astype(CODE_DTYPE)
    return (jnp.where(a > 0, jnp.maximum(pos, 0), pos) + 1).astype(CODE_DTYPE)


def decode(codes: jax.Array, signed: bool, dtype: Any) -> jax.Array:
    """The table value of each code, in ``dtype`` (the inverse of :func:`encode`): a lookup in
    :func:`dynamic_table` (the signed table's unused code 255 reads as 1)."""
    table = jnp.asarray(dynamic_table(signed), dtype)
    # on an Explicit mesh the lookup's result is sharded as the codes are
    return table.at[codes.astype(jnp.int32)].get(mode="clip", out_sharding=_explicit_spec(codes))


def _blocks(x: jax.Array, block: int) -> jax.Array:
    """``x`` flattened and zero-padded to ``[⌈n/B⌉, B]``."""
    flat = x.reshape(-1)
    nb = -(-flat.size // block)
    return jnp.pad(flat, (0, nb * block - flat.size)).reshape(nb, block)


def _explicit_spec(x: Any) -> PartitionSpec | None:
    """``x``'s spec when it is sharded over an ``Explicit`` mesh axis (sharding in its type)."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return None
    spec = getattr(sharding, "spec", None)
    return spec if spec is not None and any(e is not None for e in spec) else None


def _replicated(x: jax.Array) -> jax.Array:
    """``x`` gathered to every device if it is sharded over an ``Explicit`` mesh axis (the
    blocks cut across its shards), else ``x``."""
    return x if _explicit_spec(x) is None else jax.sharding.reshard(x, PartitionSpec())


def _like(x: jax.Array, leaf: jax.Array) -> jax.Array:
    """``x`` (of ``leaf``'s shape) sharded as ``leaf`` is over an ``Explicit`` mesh axis."""
    spec = _explicit_spec(leaf)
    return x if spec is None else jax.sharding.reshard(x, spec)


def _per_element(scales: jax.Array, block: int, leaf: jax.Array) -> jax.Array:
    """Each element's block scale, in ``leaf``'s shape (and explicit sharding)."""
    n, shape = leaf.size, leaf.shape
    per = jnp.broadcast_to(scales[:, None], (scales.size, block)).reshape(-1)[:n]
    return _like(per.reshape(shape), leaf)


def _placed(out: jax.Array, like: Any) -> jax.Array:
    """``out`` (of ``like``'s shape) on ``like``'s devices when ``like`` is a concrete sharded
    array (an eager ``init`` on sharded params). Traced, the codes need nothing: they are
    computed elementwise from the leaf, so they get its sharding (by type on an ``Explicit``
    mesh, by the compiler's propagation on an ``Auto`` one); only the small scales, computed
    from the blocks, may be placed otherwise."""
    if isinstance(like, jax.Array) and not isinstance(like, jax.core.Tracer):
        sharding = like.sharding
        if isinstance(sharding, NamedSharding) and len(sharding.device_set) > 1:
            return jax.device_put(out, sharding)
    return out


@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize(x: jax.Array, block: int, signed: bool, u: jax.Array | None) -> tuple:
    wide = x.astype(compute_dtype(x.dtype))
    if signed:
        r = wide
        scales = jnp.max(jnp.abs(_blocks(_replicated(wide), block)), axis=1)
    else:  # max √x = √max x: one square root per block for the scale
        r = jnp.sqrt(jnp.maximum(wide, 0))
        scales = jnp.sqrt(jnp.max(_blocks(_replicated(jnp.maximum(wide, 0)), block), axis=1))
    # one division per block; 0 for an all-zero block; no overflow for a subnormal scale
    tiny = jnp.finfo(scales.dtype).tiny
    inverse = jnp.where(scales > 0, 1 / jnp.maximum(scales, tiny), 0).astype(scales.dtype)
    y = r * _per_element(inverse, block, r)
    u = None if u is None else _like(u.astype(y.dtype), y)
    return encode(y, signed, u), scales


@functools.partial(jax.jit, static_argnums=(2, 3))
def _dequantize(codes: jax.Array, scales: jax.Array, block: int, signed: bool) -> jax.Array:
    out = decode(codes, signed, scales.dtype) * _per_element(scales, block, codes)
    return out if signed else out * out


def quantize(x: jax.Array, block: int, signed: bool, u: jax.Array | None = None) -> tuple:
    """``(codes, scales)`` of one leaf: codes ``uint8`` of ``x``'s shape (and sharding), scales
    of shape ``[⌈n/B⌉]`` in ``x``'s compute dtype; ``u`` (uniforms in ``[0, 1)`` of ``x``'s
    shape) for stochastic rounding, else nearest. One jitted program per shape (an eager
    ``init`` compiles it once, not op by op)."""
    codes, scales = _quantize(x, block, signed, u)
    return _placed(codes, x), scales


def dequantize(codes: jax.Array, scales: jax.Array, block: int, signed: bool) -> jax.Array:
    """The values ``codes`` and ``scales`` stand for, in ``scales``' dtype and ``codes``' shape
    (and sharding)."""
    return _placed(_dequantize(codes, scales, block, signed), codes)


@dataclasses.dataclass(frozen=True)
class Int8Blocks:
    """The storage spec :func:`int8_blocks` returns (a value of ``with_state_dtypes``' map)."""

    block_size: int = 256
    signed: bool = True
    min_size: int = 4096

    def __post_init__(self) -> None:
        for field, low in (("block_size", 1), ("min_size", 0)):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"gradtx.int8_blocks: {field} must be an int >= {low}, got {v!r}")
            object.__setattr__(self, field, int(v))
        if not isinstance(self.signed, (bool, np.bool_)):
            raise TypeError(f"gradtx.int8_blocks: signed must be a bool, got {self.signed!r}")
        object.__setattr__(self, "signed", bool(self.signed))

    #: The dtype of the codes, what ``declared_state_dtypes`` reports for the conformance kit.
    code_dtype = np.dtype(np.uint8)

    def quantizes(self, x: Any) -> bool:
        """Whether leaf ``x`` is quantised (a float array of at least ``min_size`` elements)."""
        return (
            jnp.issubdtype(x.dtype, jnp.floating)
            and len(x.shape) > 0
            and x.size >= max(self.min_size, 1)
        )

    def store(self, values: Any, key: jax.Array | None = None) -> dict:
        """The stored form of a slot's ``values`` (a tree): ``{"codes": tree, "scales": tree}``
        of ``values``' structure; a leaf kept unquantised is in ``codes`` (in float32, float64
        for float64) with ``None`` in ``scales``. With ``key``, stochastic rounding: one draw
        of uniforms for all the slot's quantised leaves (one random-bits program per slot, not
        per leaf: each costs compile time), cut into leaves; without, round to nearest."""
        leaves, treedef = jax.tree_util.tree_flatten(values)
        sizes: list[int] = [int(x.size) if self.quantizes(x) else 0 for x in leaves]
        total = sum(sizes)
        uniforms = None
        if key is not None and total:
            uniforms = jax.random.uniform(key, (total,), jnp.float32)
        codes, scales, start = [], [], 0
        for x, n in zip(leaves, sizes):
            if n:
                u = None if uniforms is None else uniforms[start : start + n].reshape(x.shape)
                c, s = quantize(x, self.block_size, self.signed, u)
                start += n
            else:
                inexact = jnp.issubdtype(x.dtype, jnp.inexact)
                c, s = (x.astype(compute_dtype(x.dtype)) if inexact else x), None
            codes.append(c)
            scales.append(s)
        unflatten = jax.tree_util.tree_unflatten
        return {"codes": unflatten(treedef, codes), "scales": unflatten(treedef, scales)}

    def load(self, stored: Any) -> Any:
        """A slot's values from its stored form (the inverse of :meth:`store`, up to the
        quantisation): a tree of float32 (float64 for float64) arrays."""
        leaves, treedef = jax.tree_util.tree_flatten(stored["codes"], is_leaf=is_none)
        scales = jax.tree_util.tree_leaves(stored["scales"], is_leaf=is_none)
        return jax.tree_util.tree_unflatten(
            treedef,
            [
                c if s is None else dequantize(c, s, self.block_size, self.signed)
                for c, s in zip(leaves, scales)
            ],
        )


def int8_blocks(block_size: int = 256, *, signed: bool = True, min_size: int = 4096) -> Int8Blocks:
    r"""8-bit block-wise quantised storage for a state slot, a value of
    :func:`gradtx.with_state_dtypes`' mapping.

    Per leaf of ``n`` elements, with blocks ``b`` of ``B = block_size`` consecutive elements
    (row-major), scale :math:`s_b` and table :math:`T` (dynamic quantisation, Dettmers et al.
    2022):

    .. math::

        \text{signed:}\quad s_b = \max_{i \in b} |x_i|,\quad
        \hat x_i = T[\,\mathrm{round}_T(x_i / s_b)\,]\, s_b
        \qquad
        \text{unsigned:}\quad s_b = \max_{i \in b} \sqrt{x_i},\quad
        \hat x_i = \big(T^+[\,\mathrm{round}_{T^+}(\sqrt{x_i} / s_b)\,]\, s_b\big)^2

    The state holds ``n`` bytes of ``uint8`` codes (the leaf's shape) and ``⌈n/B⌉`` float32
    scales per leaf: ``1 + 4/B`` bytes per element. Every step dequantises the slot to float32,
    runs the inner rule and quantises the result (with ``rounding="stochastic"``, unbiased
    between the two neighbouring codes). Leaves below ``min_size`` elements, scalars and
    non-float leaves stay unquantised, in float32. The tables and the rules are in
    :mod:`gradtx._precision.quantized`.

    Warning:
      With ``rounding="nearest"`` an 8-bit ``nu`` ratchets as a bfloat16 one does: a
      β₂ = 0.999 step moves ``v`` by ~1e-3 of itself, less than half a code step, so it
      rounds back unless ``g²`` is far above ``v``. Measured (tests/test_quantized_state.py):
      on a noisy quadratic the loss floor is 1.52× float32's; with
      ``rounding="stochastic"`` 1.01×. On the digits MLP both are within 0.1% of float32.
      Use ``with_state_dtypes(..., rounding="stochastic")`` with an 8-bit ``nu``.

    Args:
      block_size: ``B``, elements per scale (torchao: 256; bitsandbytes: 256 or 2048).
      signed: ``True`` for a signed slot (Adam's ``mu``); ``False`` for a non-negative one
        (``nu``): stores ``√v`` on the unsigned table, negative values as 0, and a positive
        value never as 0.
      min_size: leaves with fewer elements are stored in float32 (bitsandbytes'
        ``min_8bit_size``: 4096).

    Returns:
      An :class:`Int8Blocks` spec. In the state, a slot stored this way is the dict
      ``{"codes": tree, "scales": tree}`` of the slot's structure (key paths
      ``.mu['codes']['w']``, ``.mu['scales']['w']``; ``None`` scales at a leaf kept in
      float32); :meth:`Int8Blocks.load` gives its float32 values.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.with_state_dtypes(gradtx.adam(1e-3), {
      ...     "mu": gradtx.int8_blocks(), "nu": gradtx.int8_blocks(signed=False)})
      >>> params = {"w": jnp.ones((64, 128)), "b": jnp.ones(128)}
      >>> mu = tx.init(params).inner_state.knobs.mu
      >>> mu["codes"]["w"].dtype, mu["scales"]["w"].shape, mu["codes"]["b"].dtype, mu["scales"]["b"]
      (dtype('uint8'), (32,), dtype('float32'), None)
      >>> report = gradtx.memory_report(tx, params)  # w: 1 + 4/256 bytes a slot; b: 4
      >>> report.by_slot, round(report.bytes_per_param, 4)
      ({'count': 4, 'mu': 8832, 'nu': 8832}, 2.1236)

    References:
      Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization",
      https://arxiv.org/abs/2110.02861; Li et al. 2023, "Memory Efficient Optimizers with
      4-bit States", https://arxiv.org/abs/2309.01507.
    """
    return Int8Blocks(block_size, signed, min_size)
