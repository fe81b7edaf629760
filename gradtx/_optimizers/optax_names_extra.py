"""More of optax's ``scale_by_*`` names, for the knobs of Adan, NovoGrad, optimistic gradient
descent, Rprop and SM3 (:mod:`gradtx._optimizers.optax_names` has the others).

Each returns one :class:`~gradtx.Knobs` stage named after the function, with
``optax.<name>``'s signature; where gradtx's rule differs from optax 0.2.8's, the function's
Warning says how (and docs/migration.md lists it). ``scale_by_polyak`` and ``add_noise`` are
stages (:mod:`gradtx._stages.polyak`, :mod:`gradtx._stages.noise`).
"""

from __future__ import annotations

from typing import Any

from .._core.knobs import Direction, Knobs, Scale
from .._direction.momentum import Ema, Momentum
from .._direction.optimistic import OptimisticGradient
from .._direction.sign import Sign
from .._scale.adan import AdanScale
from .._scale.novograd import NovogradScale
from .._scale.rprop import RpropScale
from .._scale.sm3 import SM3Scale
from .builder import naming
from .optax_names import _Named

__all__ = [
    "scale_by_adan",
    "scale_by_novograd",
    "scale_by_optimistic_gradient",
    "scale_by_rprop",
    "scale_by_sm3",
]

_CLASSES: dict[str, type[Knobs]] = {}
for _name in __all__:
    _cls_name = "_" + "".join(w.title() for w in _name.split("_")) + "Stage"
    _CLASSES[_name] = type(
        _cls_name, (_Named,), {"name": _name, "__module__": __name__, "__qualname__": _cls_name}
    )
    globals()[_cls_name] = _CLASSES[_name]  # importable by qualified name (pickle)


def _stage(name: str, direction: Direction | None, scale: Scale | None, first: bool) -> Knobs:
    return _CLASSES[name](direction, scale, first)


def scale_by_adan(
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> Knobs:
    r"""Adan's direction over its σ, without the learning rate (``optax.scale_by_adan``).

    .. math::
        u_t = \frac{\hat m_t + \beta_2 \hat v_t}{\sqrt{\hat n_t + \epsilon_{root}} + \epsilon}

    Knobs: g = :class:`~gradtx.Ema` (β1, debiased), σ = :class:`~gradtx.AdanScale` (β2, β3).

    Warning:
      optax 0.2.8 weighs the gradient difference by ``1 - b2`` instead of the paper's ``b2``
      (optax PR #1715); equal at ``b2 = 0.5``. See :class:`~gradtx.AdanScale`.
    """
    with naming("scale_by_adan", decay="b1"):
        scale = AdanScale(b2, b3, eps, eps_root)
        return _stage("scale_by_adan", Ema(b1), scale, False)


def scale_by_novograd(
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    mu_dtype: Any = None,
) -> Knobs:
    r"""NovoGrad's layer-wise normalisation and momentum (``optax.scale_by_novograd``).

    .. math::
        m_t = \beta_1 m_{t-1} + \frac{g_t}{\sqrt{v_t + \epsilon_{root}} + \epsilon}
        + \lambda\theta_{t-1}

    Knobs (σ first): σ = :class:`~gradtx.NovogradScale` (``b2``, one ``v`` per array, the
    decay λ), then g = :class:`~gradtx.Momentum` (``b1``, no damping, ``m`` stored in
    ``mu_dtype``). Equals optax's rule.
    """
    with naming("scale_by_novograd", momentum="b1"):
        scale = NovogradScale(b2, eps, eps_root, weight_decay)
        direction = Momentum(b1, False, mu_dtype)
        return _stage("scale_by_novograd", direction, scale, True)


def scale_by_optimistic_gradient(alpha: float = 1.0, beta: float = 1.0) -> Knobs:
    r"""The optimistic combination :math:`(\alpha+\beta) g_t - \beta g_{t-1}`
    (``optax.scale_by_optimistic_gradient``). Knobs: g = :class:`~gradtx.OptimisticGradient`.
    Equals optax's rule (the first step uses :math:`g_0 = g_1`)."""
    with naming("scale_by_optimistic_gradient"):
        direction = OptimisticGradient(alpha, beta)
        return _stage("scale_by_optimistic_gradient", direction, None, False)


def scale_by_rprop(
    learning_rate: float,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> Knobs:
    r"""Rprop's per-parameter step sizes times the gradient's sign (``optax.scale_by_rprop``).

    Knobs: g = :class:`~gradtx.Sign`, σ = :class:`~gradtx.RpropScale` (step sizes starting at
    ``learning_rate``). The result is the ascent step :math:`\Delta_t \operatorname{sign}(g_t)`
    (0 after a sign flip); chain ``scale(-1.0)`` to descend, as :func:`gradtx.rprop` does.

    Warning:
      optax 0.2.8 returns the previous step's update (optax PR #1725); gradtx the current
      one, as ``torch.optim.Rprop``. The step sizes agree. See :class:`~gradtx.RpropScale`.
    """
    with naming("scale_by_rprop"):
        scale = RpropScale(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)
        return _stage("scale_by_rprop", Sign(), scale, False)


def scale_by_sm3(b1: float = 0.9, b2: float = 1.0, eps: float = 1e-8) -> Knobs:
    r"""SM3's cover-based scaling, then an EMA of the scaled gradients (``optax.scale_by_sm3``).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t / \sqrt{\nu_t + \epsilon}

    Knobs (σ first): σ = :class:`~gradtx.SM3Scale` (``b2``, ``eps``), then g =
    :class:`~gradtx.Ema` (``b1``, not debiased). Equals optax's rule; scalars (0-d leaves),
    which optax rejects, are their own cover.
    """
    with naming("scale_by_sm3", decay="b1"):
        return _stage("scale_by_sm3", Ema(b1, False), SM3Scale(b2, eps), True)
