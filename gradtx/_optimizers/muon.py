r"""Muon: momentum orthogonalised by Newton–Schulz on the matrices, AdamW on the rest.

One :class:`Muon` chain whose stages are masked by a leaf's role, decided from its shape (or by
an override): the matrices (2-D leaves, and >= 3-D leaves viewed as one matrix) get Muon's
momentum, the orthogonalisation (:class:`~gradtx._stages.orthogonalize.Orthogonalize`, one
batched iteration per matrix shape) and its weight decay; every other leaf gets AdamW. Since the
roles are stage masks, :func:`gradtx.pack` keeps the two groups in separate buffers and the
packed tree runs unsplit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from .._core.knobs import Knobs
from .._core.struct import FrozenTree, static
from .._core.tree import TransformError, flatten, path_str
from .._scale.adam import AdamScale
from .._stages.matrices import leaf_specs
from .._stages.orthogonalize import DEFAULT_NS_COEFFS, Orthogonalize, coefficient_rows
from .._stages.weight_decay import AddDecayedWeights
from ..schedules._learning_rate import ScaleByLearningRate
from .adam import adam_direction
from .builder import Optimizer, naming, optimizer
from .common import Schedule, all_true

__all__ = ["muon", "scale_by_muon"]


def _frozen(tree: Any) -> Any:
    """A hashable form of a static spec (a tree of bools, labels or dimension numbers)."""
    if tree is None or callable(tree):
        return tree
    try:
        hash(tree)
        return tree
    except TypeError:
        leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is None)
        return FrozenTree(treedef, tuple(leaves))


_LABELS = {True: True, False: False, "muon": True, "adam": False}


@dataclasses.dataclass(frozen=True)
class MuonLeaves:
    """Which leaves are Muon's (a mask, called with the params or updates).

    By default a leaf with at least two dimensions. ``override`` (a tree of bools or of the
    labels ``"muon"``/``"adam"``, a prefix of one, or a function of the params returning one)
    or optax's ``dims`` (a tree of ``MuonDimensionNumbers``, ``None`` for AdamW's leaves)
    decides instead. ``muon=False`` is the complement: AdamW's leaves.
    """

    override: Any = None
    dims: Any = None
    muon: bool = True

    def flags(self, tree: Any) -> list[bool]:
        leaves = [x for _, x in flatten(tree)[0]]
        if self.override is not None:
            values = leaf_specs("muon", self.override, tree, "muon_mask")
            out = []
            for (path, x), v in zip(flatten(tree)[0], values):
                if v not in _LABELS:  # True/False/"muon"/"adam" (1 == True is fine)
                    raise TransformError(
                        f"gradtx.muon: muon_mask at {path_str(path)} is {v!r}; use True/False "
                        "or the labels 'muon'/'adam'"
                    )
                out.append(x is not None and _LABELS[v])
            return out
        if self.dims is not None:
            values = leaf_specs("muon", self.dims, tree, "muon_weight_dimension_numbers")
            return [x is not None and v is not None for x, v in zip(leaves, values)]
        return [x is not None and len(getattr(x, "shape", ())) >= 2 for x in leaves]

    def __call__(self, tree: Any) -> Any:
        treedef = flatten(tree)[1]
        return treedef.unflatten([f == self.muon for f in self.flags(tree)])

    def __repr__(self) -> str:
        role = "matrices" if self.muon else "other leaves"
        given = [f"{k}={v!r}" for k, v in (("override", self.override), ("dims", self.dims)) if v]
        return f"MuonLeaves({', '.join([role, *given])})"

    def complement(self) -> MuonLeaves:
        return dataclasses.replace(self, muon=not self.muon)


@dataclasses.dataclass(frozen=True)
class _Both:
    """The leaves in ``first`` (a :class:`MuonLeaves`) and in ``second`` (a weight-decay mask:
    a tree of bools, a prefix of one, or a function of the params)."""

    first: MuonLeaves
    second: Any

    def __call__(self, tree: Any) -> Any:
        treedef = flatten(tree)[1]
        ours = [f == self.first.muon for f in self.first.flags(tree)]
        theirs = leaf_specs("muon", self.second, tree, "weight_decay_mask")
        return treedef.unflatten([a and bool(b) for a, b in zip(ours, theirs)])


class _RoleKnobs(Knobs):
    """:class:`~gradtx.Knobs` restricted to one role's leaves (``mask``)."""

    mask: Any = static(None)

    def __repr__(self) -> str:
        return f"{self.name}{super().__repr__()[len('Knobs') :]}"


class MuonKnobs(_RoleKnobs):
    name = "muon"


class AdamKnobs(_RoleKnobs):
    name = "adam"


class RoleLearningRate(ScaleByLearningRate):
    """η on one role's leaves (used when AdamW's learning rate differs from Muon's)."""

    mask: Any = static(None)


class Muon(Optimizer):
    """What :func:`gradtx.muon` returns: an :class:`~gradtx.Optimizer` whose stages are masked
    by role (Muon's matrices, AdamW's other leaves); ``describe()`` says which knob each turns."""

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        by_name = dict(zip(self.names, self.stages))
        mu, ad, orth = by_name["muon"], by_name["adam"], by_name["orthogonalize"]
        out["g"] = f"matrices: {mu.direction.describe()}; other leaves: {ad.direction.describe()}"
        out["sigma"] = f"matrices: none (identity); other leaves: {ad.scale.describe()}"
        out["before"] = []
        out["after"] = [
            f"matrices: {orth!r} (Newton–Schulz, one batched iteration per matrix shape)",
            f"matrices: {by_name['muon_weight_decay']!r}",
            f"other leaves: {by_name['adam_weight_decay']!r}",
        ]
        lrs = [s for s in self.stages if isinstance(s, ScaleByLearningRate)]
        if len(lrs) == 2:
            out["eta"] = f"matrices: {out['eta']}; other leaves: {lrs[1].learning_rate!r}"
        return out


def muon(
    learning_rate: Schedule,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: float = 0.0,
    adam_learning_rate: Schedule | None = None,
    muon_weight_dimension_numbers: Any = None,
    consistent_rms: float | None = None,
    muon_mask: Any = None,
) -> Muon:
    r"""Muon: Nesterov momentum orthogonalised by Newton–Schulz on matrices, AdamW elsewhere.

    On a matrix leaf :math:`W \in \mathbb R^{n_{in}\times n_{out}}`:

    .. math::
        m_t = \beta m_{t-1} + (1-\beta) g_t, \qquad
        \hat m_t = \frac{\beta m_t}{1-\beta^{t+1}} + \frac{(1-\beta) g_t}{1-\beta^t}
        \;\;(\text{Nesterov; else } m_t/(1-\beta^t)),

    .. math::
        W_t = W_{t-1} - \eta_t\left(s\,\mathrm{NS}_5(\hat m_t) + \lambda W_{t-1}\right),\quad
        s = \sqrt{\max(1, n_{out}/n_{in})} \;\text{or}\; \rho\sqrt{\max(n_{in}, n_{out})}

    where :math:`\mathrm{NS}_5` is five quintic Newton–Schulz iterations
    :math:`X \leftarrow aX + (bA + cA^2)X`, :math:`A = XX^{\mathsf T}`, from
    :math:`X_0 = \hat m/(\|\hat m\|_F + \epsilon)` (:func:`gradtx.orthogonalize`) and ρ is
    ``consistent_rms`` (Moonlight's scaling; ``None``: Jordan's width scaling). Every other leaf
    gets AdamW (``adam_b1``, ``adam_b2``, ``eps``, ``adam_eps_root``, ``adam_weight_decay``,
    Nesterov if ``nesterov``) with ``adam_learning_rate`` (default: η).

    Knobs: g = bias-corrected (Nesterov) EMA with β on matrices, with ``adam_b1`` elsewhere;
    σ = 1 on matrices, Adam's elsewhere; after = the orthogonalisation (a stage) and weight
    decay; η = ``learning_rate``.

    **Which leaves are matrices** is decided by shape: every leaf with >= 2 dimensions. A leaf
    of >= 3 dimensions is one matrix ``(∏ shape[:-1], shape[-1])`` (its last axis is the output,
    as in flax kernels). ``muon_mask`` overrides the choice with a tree of bools or of the
    labels ``"muon"``/``"adam"`` (or a prefix of one, or a function of the params returning
    one); optax's ``muon_weight_dimension_numbers`` also works (``None`` for AdamW's leaves, and
    batch axes for stacks of matrices in one leaf). Matrices of one shape run as one batched
    iteration (``(d, 4d)`` and ``(4d, d)`` are one shape), so 24 equal layers cost one
    iteration's program, not 24.

    Equals ``optax.contrib.muon`` (same arguments, in optax's order) on trees of 1-D and 2-D
    leaves, and with the same dimension numbers.

    Warning:
      optax orthogonalises only 2-D leaves unless given dimension numbers, and gives >= 3-D
      leaves to AdamW; gradtx orthogonalises them as ``(∏ shape[:-1], shape[-1])`` matrices
      (``muon_mask`` sends them to AdamW). A callable ``weight_decay_mask`` is called with the
      whole params tree (optax calls it with Muon's part only).

    Args:
      learning_rate: η, a float or a schedule of the step count.
      ns_coeffs: the Newton–Schulz coefficients ``(a, b, c)``, a table of them (one row per
        iteration) or a preset (``"standard"``, ``"dion"``).
      ns_steps: iterations of a single triple.
      beta: β, the momentum's decay.
      eps: ε of the normalisation before Newton–Schulz, and Adam's ε.
      weight_decay: λ on the matrices, decoupled and multiplied by η.
      weight_decay_mask: which matrices to decay (a tree of bools or a function of the params).
      mu_dtype: the dtype of the momenta (Muon's and Adam's); ``None``: the param's dtype.
      nesterov: Nesterov momentum (both parts).
      adaptive: multiply each matrix's update by :math:`\langle \hat m, \mathrm{NS}(\hat m)
        \rangle` (Bernstein & Newhouse).
      preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"``.
      adam_b1: β1 of AdamW.
      adam_b2: β2 of AdamW.
      adam_eps_root: ε inside AdamW's root.
      adam_weight_decay: AdamW's decoupled weight decay.
      adam_learning_rate: AdamW's η; ``None``: ``learning_rate``.
      muon_weight_dimension_numbers: optax's tree of ``MuonDimensionNumbers`` (or a function
        of the params returning one): the axes of each leaf's matrices, ``None`` for AdamW.
      consistent_rms: ρ of Moonlight's scaling (0.2 matches AdamW's update RMS); ``None``:
        Jordan's width scaling.
      muon_mask: which leaves are Muon's, instead of the shape rule (see above).

    Returns:
      A :class:`Muon` optimizer; its state has ``muon`` (``count``, ``mu`` of the matrices)
      and ``adam`` (``count``, ``mu``, ``nu`` of the other leaves).

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
      >>> tx = gradtx.muon(0.02)
      >>> state = tx.init(params)
      >>> sorted(k for k, v in state.muon.mu.items() if v is not None)
      ['w']
      >>> sorted(k for k, v in state.adam.nu.items() if v is not None)
      ['b']
      >>> updates, state = tx.update({"w": jnp.eye(4, 3), "b": jnp.ones(3)}, state, params)
      >>> updates["w"].shape, updates["b"].shape
      ((4, 3), (3,))

    References:
      Jordan et al., *Muon: An optimizer for hidden layers in neural networks*, 2024.
      https://kellerjordan.github.io/posts/muon/

      Liu et al., *Muon is Scalable for LLM Training*, 2025. https://arxiv.org/abs/2502.16982

      Bernstein & Newhouse, *Old Optimizer, New Norm: An Anthology*, 2024.
      https://arxiv.org/abs/2409.20325
    """
    if muon_mask is not None and muon_weight_dimension_numbers is not None:
        raise TypeError(
            "gradtx.muon: give muon_mask or muon_weight_dimension_numbers, not both (the "
            "dimension numbers already say which leaves are Muon's: None for AdamW)"
        )
    dims = _frozen(muon_weight_dimension_numbers)
    mats = MuonLeaves(_frozen(muon_mask), dims)
    rest = mats.complement()
    with naming("muon"):
        rows = coefficient_rows("muon", ns_coeffs, ns_steps)
        scaling = "width" if consistent_rms is None else "consistent_rms"
        orth = Orthogonalize(
            rows, eps, preconditioning, adaptive, scaling, consistent_rms, dims, mats
        )
        wd_mask = all_true(weight_decay_mask)
        stages: list = []
        with naming("muon", decay="beta"):
            stages.append(MuonKnobs(adam_direction(beta, nesterov, mu_dtype), None, mask=mats))
        stages += [
            orth,
            AddDecayedWeights(
                weight_decay, mats if wd_mask is None else _Both(mats, _frozen(wd_mask))
            ),
        ]
        with naming("muon", decay="adam_b1", b2="adam_b2", eps_root="adam_eps_root"):
            scale = AdamScale(adam_b2, eps, adam_eps_root)
            stages.append(AdamKnobs(adam_direction(adam_b1, nesterov, mu_dtype), scale, mask=rest))
        stages.append(AddDecayedWeights(adam_weight_decay, rest))
        names = ["muon", "orthogonalize", "muon_weight_decay", "adam", "adam_weight_decay"]
        if adam_learning_rate is None:
            stages.append(ScaleByLearningRate(learning_rate))
            names.append("learning_rate")
        else:
            stages.append(RoleLearningRate(learning_rate, mask=mats))
            stages.append(RoleLearningRate(adam_learning_rate, mask=rest))
            names += ["learning_rate", "adam_learning_rate"]
    return Muon(tuple(stages), tuple(names), "muon")


def scale_by_muon(
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    weight_dimension_numbers: Any = None,
) -> Optimizer:
    r"""Muon's orthogonalised momentum, without η (``optax.contrib.scale_by_muon``).

    .. math::
        u_t = \mathrm{NS}(\hat m_t)

    with :math:`\hat m_t` the bias-corrected (Nesterov) EMA of :func:`muon`. Every leaf must be
    a matrix (>= 2 dimensions, viewed as in :func:`muon`) unless ``weight_dimension_numbers``
    gives its axes; no shape scaling (``optax.contrib.muon`` adds it, as :func:`muon` does).

    Knobs: g = bias-corrected (Nesterov) EMA, σ = 1, after = the orthogonalisation, no η.

    Args:
      ns_coeffs: ``(a, b, c)`` or a table of them, one per iteration.
      ns_steps: iterations of a single triple.
      beta: β, the momentum's decay.
      eps: ε of the normalisation.
      mu_dtype: the dtype of the momentum; ``None``: the param's dtype.
      nesterov: Nesterov momentum.
      adaptive: multiply by :math:`\langle \hat m, \mathrm{NS}(\hat m)\rangle`.
      preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"``.
      weight_dimension_numbers: optax's tree of ``MuonDimensionNumbers`` (a prefix, or a
        function of the params); ``None`` entries use the default view.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.scale_by_muon()
      >>> g = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]])}
      >>> u, _ = tx.update(g, tx.init(g))
      >>> u["w"].shape
      (2, 2)
    """
    with naming("scale_by_muon", decay="beta"):
        rows = coefficient_rows("scale_by_muon", ns_coeffs, ns_steps)
        dims = _frozen(weight_dimension_numbers)
        orth = Orthogonalize(rows, eps, preconditioning, adaptive, "none", None, dims)
        direction = adam_direction(beta, nesterov, mu_dtype)
        return optimizer(direction, None, None, after=(orth,), name="scale_by_muon")
