"""optax's names for transformations gradtx builds from its knobs (``scale_by_adam``, ``trace``...).

Each function has ``optax.<name>``'s signature and meaning and returns one :class:`~gradtx.Knobs`
stage named after the function (its errors say ``gradtx.scale_by_adam``, and in a chain its state
is ``state.scale_by_adam``). ``identity``, ``set_to_zero`` and ``scale_by_schedule`` live with
the η knob in :mod:`gradtx.schedules._learning_rate`. docs/migration.md has the table of every
optax name.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .._core.knobs import Direction, Knobs, Scale
from .._core.struct import hyper
from .._direction.momentum import Ema, Momentum
from .._direction.sign import Lion, Sign
from .._scale.adam import AdamaxScale, AdamScale
from .._scale.factored import FactoredScale
from .._scale.optax_forms import OptaxAmsgradScale, RssScale
from .._scale.rms import RMSPropScale
from .._scale.variants import AdaBeliefScale, AdadeltaScale, RAdamScale, YogiScale
from .adam import adam_direction
from .builder import naming

__all__ = [
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_yogi",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_stddev",
    "scale_by_rss",
    "scale_by_adadelta",
    "scale_by_lion",
    "scale_by_sign",
    "scale_by_factored_rms",
    "trace",
    "ema",
]


class _Named(Knobs):
    """A :class:`Knobs` stage that carries the optax name it was built under."""

    def __repr__(self) -> str:
        return f"{self.name}{super().__repr__()[len('Knobs') :]}"


_CLASSES: dict[str, type[Knobs]] = {}
for _name in __all__:
    _cls_name = "_" + "".join(w.title() for w in _name.split("_")) + "Stage"
    _CLASSES[_name] = type(
        _cls_name, (_Named,), {"name": _name, "__module__": __name__, "__qualname__": _cls_name}
    )
    globals()[_cls_name] = _CLASSES[_name]  # importable by qualified name (pickle)


def _stage(name: str, direction: Direction | None, scale: Scale | None) -> Knobs:
    return _CLASSES[name](direction, scale)


class _EmaFrom(Ema):
    """:class:`~gradtx.Ema` whose ``m_0`` is ``initial`` (optax's Yogi starts ``m`` there)."""

    name = "ema"
    initial: float = hyper(0.0, "any")

    def init_leaf(self, param: jax.Array) -> dict[str, jax.Array]:
        return {"mu": jnp.full_like(param, self.initial, dtype=jnp.result_type(param))}


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> Knobs:
    r"""Adam's ``m̂_t / (√(v̂_t + ε_root) + ε)`` without the learning rate (``optax.scale_by_adam``).

    Knobs: g = :class:`~gradtx.Ema` (debiased; :class:`~gradtx.NesterovEma` if ``nesterov``),
    σ = :class:`~gradtx.AdamScale`. ``mu_dtype`` is the storage dtype of ``m`` (``None``: the
    param's). ``gradtx.adam(lr, ...)`` is this followed by ``-lr``.
    """
    with naming("scale_by_adam", decay="b1"):
        scale = AdamScale(b2, eps, eps_root)
        return _stage("scale_by_adam", adam_direction(b1, nesterov, mu_dtype), scale)


def scale_by_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Knobs:
    """Adamax's ``m̂_t / max(β2·u, |g| + ε)`` (``optax.scale_by_adamax``).

    Knobs: g = :class:`~gradtx.Ema` (debiased), σ = :class:`~gradtx.AdamaxScale`.
    """
    with naming("scale_by_adamax", decay="b1"):
        return _stage("scale_by_adamax", Ema(b1), AdamaxScale(b2, eps))


def scale_by_amsgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> Knobs:
    r"""optax's AMSGrad: the maximum of the *bias-corrected* second moments.

    Knobs: g = :class:`~gradtx.Ema` (debiased if ``bias_correction_mu``), σ = the running
    maximum of :math:`v_t/(1-\beta_2^t)` (of :math:`v_t` without ``bias_correction_nu``).

    Warning:
      :func:`gradtx.amsgrad` keeps PyTorch's rule (maximum of raw moments, then corrected), so
      it is *not* ``chain(scale_by_amsgrad(), scale_by_learning_rate(lr))``; this is.
    """
    with naming("scale_by_amsgrad", decay="b1"):
        direction = Ema(b1, bias_correction_mu, mu_dtype)
        scale = OptaxAmsgradScale(b2, eps, eps_root, debias=bias_correction_nu)
        return _stage("scale_by_amsgrad", direction, scale)


def scale_by_belief(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
) -> Knobs:
    """AdaBelief's scaling (``optax.scale_by_belief``).

    Knobs: g = :class:`~gradtx.Ema` (or :class:`~gradtx.NesterovEma`), σ =
    :class:`~gradtx.AdaBeliefScale`.
    """
    with naming("scale_by_belief", decay="b1"):
        scale = AdaBeliefScale(b2, eps, eps_root)
        return _stage("scale_by_belief", adam_direction(b1, nesterov), scale)


def scale_by_yogi(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
) -> Knobs:
    """Yogi's scaling (``optax.scale_by_yogi``): ``m`` and ``v`` both start at
    ``initial_accumulator_value``, as in optax (:func:`gradtx.yogi` starts ``m`` at 0).

    Knobs: g = :class:`~gradtx.Ema` (debiased), σ = :class:`~gradtx.YogiScale`.
    """
    with naming("scale_by_yogi", decay="b1"):
        direction = _EmaFrom(b1, True, None, initial_accumulator_value)
        scale = YogiScale(b2, eps, eps_root, initial_accumulator_value)
        return _stage("scale_by_yogi", direction, scale)


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
) -> Knobs:
    """RAdam's rectified scaling (``optax.scale_by_radam``).

    Knobs: g = :class:`~gradtx.Ema` (or :class:`~gradtx.NesterovEma`), σ =
    :class:`~gradtx.RAdamScale`.
    """
    with naming("scale_by_radam", decay="b1"):
        scale = RAdamScale(b2, eps, eps_root, threshold)
        return _stage("scale_by_radam", adam_direction(b1, nesterov), scale)


def _rms(name: str, decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered) -> Knobs:
    with naming(name):
        scale = RMSPropScale(decay, eps, initial_scale, centered, eps_in_sqrt, bias_correction)
        return _stage(name, None, scale)


def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> Knobs:
    """RMSProp's scaling ``g / √(v_t + ε)`` (``optax.scale_by_rms``; ε outside the root with
    ``eps_in_sqrt=False``). Knobs: σ = :class:`~gradtx.RMSPropScale`."""
    return _rms("scale_by_rms", decay, eps, initial_scale, eps_in_sqrt, bias_correction, False)


def scale_by_stddev(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> Knobs:
    """Centred RMSProp's scaling ``g / √(v_t − ḡ_t² + ε)`` (``optax.scale_by_stddev``).
    Knobs: σ = :class:`~gradtx.RMSPropScale` with ``centered=True``."""
    return _rms("scale_by_stddev", decay, eps, initial_scale, eps_in_sqrt, bias_correction, True)


def scale_by_rss(initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> Knobs:
    """optax's Adagrad scaling ``g / √(Σ g² + ε)`` (``optax.scale_by_rss``).

    ε is inside the root here, as optax; :func:`gradtx.adagrad` puts it outside (PyTorch).
    """
    with naming("scale_by_rss"):
        return _stage("scale_by_rss", None, RssScale(initial_accumulator_value, eps))


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> Knobs:
    """Adadelta's scaling (``optax.scale_by_adadelta``).

    Knobs: σ = :class:`~gradtx.AdadeltaScale`.
    """
    with naming("scale_by_adadelta"):
        return _stage("scale_by_adadelta", None, AdadeltaScale(rho, eps))


def scale_by_lion(
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    *,
    mode: str = "hard",
    smooth_beta: float = 1.0,
) -> Knobs:
    r"""Lion's direction (``optax.scale_by_lion``), with optax's three modes.

    With :math:`x_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`: ``"hard"`` gives
    :math:`\operatorname{sign}(x_t)`, ``"smooth"`` :math:`\tanh(\beta x_t)` (β = ``smooth_beta``),
    ``"refined"`` :math:`x_t` where :math:`|x_t| < 1` and its sign elsewhere. Knobs: g =
    :class:`~gradtx.Lion`.
    """
    with naming("scale_by_lion"):
        return _stage("scale_by_lion", Lion(b1, b2, mu_dtype, mode, smooth_beta), None)


def scale_by_sign() -> Knobs:
    """``sign(g)`` (``optax.scale_by_sign``). Knobs: g = :class:`~gradtx.Sign`."""
    return _stage("scale_by_sign", Sign(), None)


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
    decay_rate_fn: Any = None,
) -> Knobs:
    r"""Adafactor's factored second-moment scaling alone (``optax.scale_by_factored_rms``).

    :class:`~gradtx.FactoredScale` without update clipping and without the parameter scale.
    ``decay_rate_fn=None`` is optax's default rule :math:`\hat\beta_{2,t} = 1 - t^{-c}`;
    another function is not supported (``NotImplementedError``).
    """
    if decay_rate_fn is not None:
        raise NotImplementedError(
            "gradtx.scale_by_factored_rms: only the default decay rule 1 - t**(-decay_rate) "
            "(decay_rate_fn=None) is supported"
        )
    with naming("scale_by_factored_rms", decay_offset="step_offset", eps="epsilon"):
        scale = FactoredScale(
            decay_rate=decay_rate,
            decay_offset=step_offset,
            eps=epsilon,
            clipping_threshold=None,
            min_dim_size_to_factor=min_dim_size_to_factor,
            factored=factored,
            multiply_by_parameter_scale=False,
        )
        return _stage("scale_by_factored_rms", None, scale)


def trace(decay: float, nesterov: bool = False, accumulator_dtype: Any = None) -> Knobs:
    """Momentum ``m_t = decay·m_{t-1} + g_t`` (``optax.trace``). Knobs: g =
    :class:`~gradtx.Momentum`; ``accumulator_dtype`` is the storage dtype of ``m``."""
    with naming("trace", momentum="decay"):
        return _stage("trace", Momentum(decay, nesterov, accumulator_dtype), None)


def ema(decay: float, debias: bool = True, accumulator_dtype: Any = None) -> Knobs:
    """An exponential moving average of the updates, optionally debiased (``optax.ema``).

    Knobs: g = :class:`~gradtx.Ema`; ``accumulator_dtype`` is the storage dtype of the average.
    """
    with naming("ema"):
        return _stage("ema", Ema(decay, debias, accumulator_dtype), None)
