"""L-BFGS: the quasi-Newton direction of :func:`gradtx.scale_by_lbfgs`, a negative step and a
line search, as ``optax.lbfgs``."""

from __future__ import annotations

from typing import Any

from .._core.struct import is_schedule_like
from .._core.transformation import GradientTransformation
from .._stages.lbfgs import ScaleByLBFGS
from .._stages.zoom import ScaleByZoomLinesearch
from ..schedules._learning_rate import ConstantScale, ScaleByLearningRate
from .builder import Optimizer, naming

__all__ = ["lbfgs"]

#: optax's default line search of ``lbfgs``: zoom, 20 evaluations, first trial 1.
DEFAULT_LINESEARCH = ScaleByZoomLinesearch(20, initial_guess_strategy="one")


class LBFGS(Optimizer):
    """The chain :func:`gradtx.lbfgs` returns: ``scale_by_lbfgs → −η → line search``.

    Its stages, in the state under their names: ``scale_by_lbfgs`` (the curvature pairs),
    ``scale`` (−1) or ``learning_rate`` (−η), and the line search
    (``scale_by_zoom_linesearch`` by default). ``requires`` is the line search's: the
    keyword arguments ``update`` must be given.
    """

    @property
    def requires(self) -> tuple[str, ...]:
        return tuple(r for s in self.stages for r in getattr(s, "requires", ()))

    def describe(self) -> dict[str, Any]:
        """Which knobs L-BFGS turns: g is the quasi-Newton direction, σ is none (the
        curvature is in the direction), η is the line search's step (times the learning
        rate, if one is given). Same keys as :meth:`Optimizer.describe`."""
        lbfgs, factor, *rest = self.stages
        if isinstance(factor, ScaleByLearningRate):
            lr = factor.learning_rate
            eta = f"{'schedule' if is_schedule_like(lr) else 'constant'} {lr!r}"
        else:
            eta = "1"
        search = f"; then the step size of {rest[0].name}" if rest else ""
        return {
            "name": self.name,
            "g": (
                f"ScaleByLBFGS(memory_size={lbfgs.memory_size}, scale_init_precond="
                f"{lbfgs.scale_init_precond}): m = H_k g, H_k the L-BFGS inverse-Hessian "
                "estimate from the last memory_size pairs (two-loop recursion)"
            ),
            "sigma": "none (the curvature is in the direction g)",
            "eta": f"η = {eta}{search}",
            "order": "g, then −η, then the line search",
            "before": [],
            "after": [repr(s) for s in rest],
            "state_dtypes": self.state_dtypes(),
        }


def lbfgs(
    learning_rate: Any = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: Any = DEFAULT_LINESEARCH,
) -> LBFGS:
    r"""L-BFGS with a line search, as ``optax.lbfgs`` (same arguments, order and chain).

    .. math::
        w_{k+1} = w_k - \eta_k\, \alpha\, H_k g_k,

    with :math:`H_k g_k` L-BFGS's direction from the last ``memory_size`` curvature pairs
    (:func:`gradtx.scale_by_lbfgs`, where :math:`H_k` is written out), :math:`\alpha` the
    ``learning_rate`` (1 when ``None``) and :math:`\eta_k` the step size the line search finds
    along :math:`-\alpha H_k g_k` (:func:`gradtx.scale_by_zoom_linesearch` by default: strong
    Wolfe conditions, 20 evaluations at most, first trial 1). The chain is
    ``scale_by_lbfgs → scale(−1)`` (or ``scale_by_learning_rate(learning_rate)``) ``→
    linesearch``.

    ``update`` takes optax's extra arguments: ``value`` (:math:`f(w_k)`), ``grad``
    (:math:`\nabla f(w_k)`, usually the updates themselves) and ``value_fn`` (:math:`f`; required,
    declared in ``requires``); keyword arguments named by ``value_fn`` are passed to it. Left
    out, ``value`` and ``grad`` are computed from ``value_fn``. In a deterministic loop,
    :func:`gradtx.value_and_grad_from_state` reuses the line search's last evaluation.

    Args:
      learning_rate: :math:`\alpha`, a float or a schedule, or ``None`` (the step is the line
        search's alone).
      memory_size: the number of curvature pairs kept (int >= 1).
      scale_init_precond: whether the initial inverse Hessian is
        :math:`\gamma_k I = \frac{\langle y, s\rangle}{\langle y, y\rangle} I` (else :math:`I`).
      linesearch: a line search (or any transformation) applied last, or ``None`` for none (a
        fixed step :math:`\alpha`).

    Returns:
      An :class:`~gradtx._optimizers.lbfgs.LBFGS` (an :class:`Optimizer`); ``describe()``
      names its knobs.

    Warning:
      ``linesearch``'s default is gradtx's zoom search with optax's settings, so the default
      object is not optax's (``tests/test_optax_signatures.py`` lists it). L-BFGS is meant
      for deterministic objectives of moderate size: its state holds ``2·memory_size + 2``
      copies of the params.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> f = lambda w: jnp.sum((w - 1.0) ** 2) + 0.5 * jnp.sum(w**4)
      >>> tx = gradtx.lbfgs()
      >>> w = jnp.zeros(3)
      >>> state = tx.init(w)
      >>> value_and_grad = gradtx.value_and_grad_from_state(f)
      >>> for _ in range(8):
      ...     value, grad = value_and_grad(w, state=state)
      ...     u, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
      ...     w = gradtx.apply_updates(w, u)
      >>> print(f"{float(w[0]):.4f}")  # the root of w³ + w − 1
      0.6823

    References:
      Liu & Nocedal, `On the limited memory BFGS method for large scale optimization
      <https://doi.org/10.1007/BF01589116>`_, 1989; Nocedal & Wright, *Numerical
      Optimization*, 2nd ed., Algorithms 3.5, 3.6 and 7.5, 2006; ``optax.lbfgs``.
    """
    with naming("lbfgs"):
        stages: list[Any] = [ScaleByLBFGS(memory_size, scale_init_precond)]
        if learning_rate is None:
            stages.append(ConstantScale(-1.0))
        else:
            stages.append(ScaleByLearningRate(learning_rate))
        if linesearch is not None:
            if not (
                isinstance(linesearch, GradientTransformation)
                or (callable(getattr(linesearch, "init", None)) and callable(linesearch.update))
            ):
                raise TypeError(
                    "gradtx.lbfgs: linesearch must be a transformation (e.g. "
                    f"gradtx.scale_by_zoom_linesearch(20)) or None, got {type(linesearch).__name__}"
                )
            stages.append(linesearch)
    return LBFGS(tuple(stages), (), "lbfgs")
