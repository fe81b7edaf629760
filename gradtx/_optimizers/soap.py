"""SOAP: Adam in the eigenbasis of Shampoo's preconditioners.

Returns a :class:`Soap` (an :class:`~gradtx.Optimizer`); ``describe()`` says which knobs it
turns. optax has no SOAP: the arguments are the paper's reference implementation's (PyTorch,
``SOAP(params, lr, betas, shampoo_beta, eps, weight_decay, precondition_frequency,
max_precond_dim, ...)``) with ``betas`` as optax's ``b1, b2``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.tree import is_none
from .._stages.soap import ScaleBySoap
from .._stages.weight_decay import AddDecayedWeights
from ..schedules._learning_rate import ScaleByLearningRate
from .builder import Optimizer, naming
from .common import Schedule, all_true

__all__ = ["soap"]


class Soap(Optimizer):
    """What :func:`gradtx.soap` returns: the chain ``soap → weight decay → −η`` whose first
    update is 0 (the first call only measures the preconditioners)."""

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        st = self.stages[0]
        every = st.precondition_frequency
        out["g"] = (
            f"EMA of the gradient rotated into Shampoo's eigenbasis, m = β1·m + (1−β1)·Qₗᵀ g Qᵣ "
            f"(b1={st.b1!r})"
        )
        out["sigma"] = (
            f"Adam's σ = √v + ε in that basis (b2={st.b2!r}, eps={st.eps!r}), the basis of "
            f"L = EMA(g gᵀ), R = EMA(gᵀ g) refreshed every {every} steps ({st.eigenbasis}); "
            "plain Adam on leaves with no side preconditioned (SOAP)"
        )
        out["before"] = []
        out["after"] = [repr(s) for s in self.stages[1:-1]]
        return out

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, Any]:
        new_updates, new_state = super().update(updates, state, params, **extra)
        first = state["soap"]["count"] == 0
        zero = lambda u: None if u is None else jnp.where(first, jnp.zeros_like(u), u)  # noqa: E731
        return jax.tree_util.tree_map(zero, new_updates, is_leaf=is_none), new_state


def soap(
    learning_rate: Schedule,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    *,
    precondition_1d: bool = False,
    correct_bias: bool = True,
    eigenbasis: str = "qr",
    mu_dtype: Any = None,
    precond_dtype: Any = None,
    weight_decay_mask: Any = None,
) -> Soap:
    r"""SOAP: Adam run in the eigenbasis of Shampoo's two preconditioners, per matrix.

    For a matrix leaf :math:`W \in \mathbb R^{m\times n}` with gradient :math:`G_t`,
    :math:`\beta_s` = ``shampoo_beta`` (``None``: β2) and :math:`f` =
    ``precondition_frequency``:

    .. math::
        L_t = \beta_s L_{t-1} + (1-\beta_s)\,G_t G_t^{\mathsf T}, \qquad
        R_t = \beta_s R_{t-1} + (1-\beta_s)\,G_t^{\mathsf T} G_t,

    .. math::
        G'_t = Q_L^{\mathsf T} G_t Q_R, \quad
        M_t = \beta_1 M_{t-1} + (1-\beta_1)\,G'_t, \quad
        V_t = \beta_2 V_{t-1} + (1-\beta_2)\,G_t'^{\,2},

    .. math::
        W_t = W_{t-1} - \eta_t\left(\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
        Q_L\,\frac{M_t}{\sqrt{V_t}+\epsilon}\,Q_R^{\mathsf T} + \lambda W_{t-1}\right)

    where :math:`Q_L, Q_R` are eigenbases of :math:`L, R` (by decreasing eigenvalue). The
    first call only accumulates :math:`L_0, R_0` and takes their eigenvectors (``eigh``): its
    update is 0, weight decay included, and step :math:`t = 1` is the second call. Every
    :math:`f` steps, after the update, each basis is refreshed by one power iteration and a QR
    decomposition, :math:`Q \leftarrow \operatorname{QR}(L_t Q)` with :math:`Q`'s columns
    (and :math:`V`'s rows or columns) first sorted by decreasing
    :math:`\operatorname{diag}(Q^{\mathsf T} L_t Q)`, and :math:`M` is rotated into the new
    basis (:class:`~gradtx._stages.soap.ScaleBySoap` has the details). :math:`V` is not
    rotated (the paper's choice).

    Leaves of three or more dimensions are the matrix ``(∏ shape[:-1], shape[-1])``; a side
    larger than ``max_precond_dim`` (e.g. a vocabulary) keeps the identity basis; 1-D leaves
    and scalars get Adam (with the same skipped first step) unless ``precondition_1d``. All
    leaves of one shape run as one batched step (one ``eigh``/QR per shape).

    Knobs: g = EMA of the rotated gradient (debiased), σ = Adam's in Shampoo's eigenbasis,
    after = decoupled weight decay, η = ``learning_rate``.

    Note:
      Where :math:`L` or :math:`R` is rank deficient (the first :math:`L_0 = (1-\beta_s) G_0
      G_0^{\mathsf T}` of an ``m × n`` gradient with ``m > n``, or a zero gradient), its null
      space has no preferred basis: the eigensolver picks one, and the elementwise Adam step
      in it depends on the pick, as in the reference. A run is deterministic, but another
      program (a ``vmap`` over hyperparameters, another device) may pick another basis and
      follow another, equally valid, trajectory.

    Warning:
      gradtx's rule is the paper's reference implementation (its first version, with
      ``correct_bias=True``, ``merge_dims=False``, ``normalize_grads=False``) with two
      differences: weight decay is :math:`\eta\lambda W_{t-1}` added to the update (the
      reference decays the already-updated weights, a difference of
      :math:`\eta^2\lambda u_t`), and leaves of three or more dimensions are one matrix
      (the reference preconditions every axis). ``eigenbasis="eigh"`` refreshes with a full
      eigendecomposition instead of QR (the same sort of :math:`V` first). The reference's
      later versions debias the moments in place and take ``max(√V, ε)``; gradtx follows the
      paper's.

    Args:
      learning_rate: η, a float or a schedule of the step count.
      b1: β1 of Adam's first moment, in [0, 1).
      b2: β2 of Adam's second moment, in [0, 1).
      shampoo_beta: :math:`\beta_s` of the preconditioners :math:`L, R`; ``None`` (or a
        negative number, the reference's ``-1``): ``b2``.
      eps: ε, added to :math:`\sqrt{V_t}`.
      weight_decay: λ, decoupled (multiplied by η).
      precondition_frequency: f, steps between refreshes of the eigenbases (an int >= 1).
      max_precond_dim: the largest side preconditioned.
      precondition_1d: precondition 1-D leaves (with an ``n × n`` preconditioner).
      correct_bias: the bias correction :math:`\sqrt{1-\beta_2^t}/(1-\beta_1^t)`.
      eigenbasis: ``"qr"`` (one power iteration and QR, the paper's) or ``"eigh"``.
      mu_dtype: the dtype :math:`M` is stored in; ``None``: the param's dtype.
      precond_dtype: the dtype :math:`L, R, Q_L, Q_R` are stored in; ``None``: the param's
        compute dtype (float32 for bfloat16 and float16 params). Every slot's storage can
        also be set with :func:`gradtx.with_state_dtypes` (slots ``mu``, ``nu``, ``l``,
        ``r``, ``q_l``, ``q_r``), the arithmetic staying in float32.
      weight_decay_mask: which leaves to decay (a tree of bools or a function of the params).

    Returns:
      A :class:`Soap` optimizer; its state has ``soap`` (``count``, ``mu``, ``nu``, ``l``,
      ``r``, ``q_l``, ``q_r``).

    Example:
      >>> import gradtx, jax, jax.numpy as jnp
      >>> tx = gradtx.soap(3e-3)
      >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> state.soap.l["w"].shape, state.soap.r["w"].shape, state.soap.l["b"].shape
      ((4, 4), (3, 3), (0, 0))
      >>> grads = {"w": jnp.arange(12.0).reshape(4, 3), "b": jnp.ones(3)}
      >>> updates, state = tx.update(grads, state, params)  # the first call measures only
      >>> float(jnp.abs(updates["w"]).max())
      0.0
      >>> updates, state = tx.update(grads, state, params)
      >>> [round(x, 6) for x in updates["b"].tolist()]  # Adam's first step: −η·sign(g)
      [-0.003, -0.003, -0.003]

    References:
      Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson and Kakade, *SOAP: Improving
      and Stabilizing Shampoo using Adam*, ICLR 2025. https://arxiv.org/abs/2409.11321
      (reference implementation: https://github.com/nikhilvyas/SOAP)
    """
    if shampoo_beta is not None and not callable(shampoo_beta):
        try:
            if float(shampoo_beta) < 0:
                shampoo_beta = None
        except TypeError:  # a tracer: kept
            pass
    with naming("soap"):
        stage = ScaleBySoap(
            b1,
            b2,
            shampoo_beta,
            eps,
            precondition_frequency,
            max_precond_dim,
            precondition_1d,
            correct_bias,
            eigenbasis,
            mu_dtype,
            precond_dtype,
        )
        stages = (
            stage,
            AddDecayedWeights(weight_decay, all_true(weight_decay_mask)),
            ScaleByLearningRate(learning_rate),
        )
    return Soap(stages, (), "soap")
