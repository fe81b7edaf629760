"""Building an optimizer from its knobs: ``before → (g, σ) → after → η``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from .._core.chain import Chain
from .._core.knobs import Direction, Knobs, Scale
from .._core.state import State, builder, with_builder
from .._core.struct import is_schedule_like, static
from .._core.tree import TransformError, is_own_error, renamed
from ..schedules._learning_rate import ScaleByLearningRate

__all__ = ["Optimizer", "optimizer", "naming"]


class Optimizer(Chain):
    """A chain built by :func:`optimizer`, which remembers which knob each stage turns.

    Its state is the chain's: ``state.knobs`` holds the direction and scale slots (``mu``,
    ``nu``, ``count``), ``state.learning_rate`` the schedule's ``count`` when η is scheduled,
    and the before/after stages are named after themselves. ``state[0]`` etc. work as in optax.
    """

    name: str = static("optimizer")  # type: ignore[misc]  # per instance, not per class

    @property
    def knobs(self) -> Knobs | None:
        """The stage holding the direction and scale knobs, if any."""
        return next((s for s in self.stages if isinstance(s, Knobs)), None)

    @property
    def schedule(self) -> ScaleByLearningRate | None:
        return next((s for s in self.stages if isinstance(s, ScaleByLearningRate)), None)

    def describe(self) -> dict[str, Any]:
        """Which knobs this optimizer turns, in the lecture's terms.

        Returns:
          A dict with ``"g"`` (direction), ``"sigma"`` (per-parameter scale), ``"eta"``
          (schedule), ``"order"`` and the ``"before"``/``"after"`` stages, each a readable string.

        Example:
          >>> import gradtx
          >>> gradtx.adam(1e-3).describe()["sigma"]
          'AdamScale(b2=0.999, eps=1e-08, eps_root=0.0): σ = √(v̂) + ε, v = EMA of g² (Adam)'
        """
        knobs, sched = self.knobs, self.schedule
        idx_s = self.stages.index(sched) if sched is not None else len(self.stages)
        # without knobs, before and after cannot be told apart: all stages count as before
        idx_k = self.stages.index(knobs) if knobs is not None else idx_s

        def say(k: Any) -> str:
            return "none (identity)" if k is None else k.describe()

        if sched is None:
            eta = "none (step size 1)"
        elif is_schedule_like(sched.learning_rate):
            eta = f"schedule {sched.learning_rate!r}"
        else:
            eta = f"constant {sched.learning_rate!r}"
        order = "σ then g" if knobs is not None and knobs.scale_first else "g and σ from g"
        return {
            "name": self.name,
            "g": say(knobs.direction if knobs else None),
            "sigma": say(knobs.scale if knobs else None),
            "eta": eta,
            "order": order,
            "before": [repr(s) for s in self.stages[:idx_k]],
            "after": [repr(s) for s in self.stages[idx_k + 1 : idx_s]],
            "state_dtypes": self.state_dtypes(),
        }

    def state_dtypes(self) -> dict[str, str]:
        """Each state slot's storage dtype: a fixed dtype (``"int32"`` for counters,
        ``"bfloat16"`` for ``mu_dtype=jnp.bfloat16``) or ``"param dtype"`` when it follows the
        parameter's (found by running ``init`` abstractly on float32, bfloat16 and float16
        arrays; Adam's ``nu`` is float32 for float16 params, which would overflow)."""

        def slots(dtype: Any) -> dict[str, Any]:
            out: dict[str, Any] = {}
            tree = jax.eval_shape(self.init, {"w": jax.ShapeDtypeStruct((2,), dtype)})
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
                # State entries are attribute keys (``.knobs.nu``), the param a dict key
                names = [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)]
                out.setdefault(names[-1] if names else "?", leaf.dtype)
            return out

        a, b, h = slots(jnp.float32), slots(jnp.bfloat16), slots(jnp.float16)

        def say(k: str) -> str:
            if not (a[k] == jnp.float32 and b.get(k) == jnp.bfloat16):
                return str(a[k])
            return "param dtype" if h.get(k) == jnp.float16 else f"param dtype ({h[k]} for float16)"

        return {k: say(k) for k in sorted(a)}

    def __repr__(self) -> str:
        return f"gradtx.{self.name}({', '.join(repr(s) for s in self.stages)})"

    @property
    def builder(self) -> str:
        """What this optimizer's state records as its builder: the name and the knob types,
        e.g. ``"adam(Ema, AdamScale)"``. Hyperparameter values are not part of it, so a
        checkpoint restores into the same optimizer built with other values."""
        knobs = self.knobs
        kinds = (
            []
            if knobs is None
            else [
                getattr(k, "builder_name", type(k).__name__) for k in (knobs.direction, knobs.scale)
            ]
        )
        return f"{self.name}({', '.join(k for k in kinds if k != 'NoneType')})"

    def init(self, params: Any) -> Any:
        with _naming_use(self.name):
            return with_builder(super().init(params), self.builder)

    def update(
        self, updates: Any, state: Any, params: Any | None = None, **extra: Any
    ) -> tuple[Any, Any]:
        with _naming_use(self.name):
            made_by = builder(state) if isinstance(state, State) else None
            if made_by is not None and made_by != self.builder:
                raise TransformError(
                    f"gradtx.{self.name}: state was built by {made_by}, not by this optimizer "
                    f"({self.builder})"
                )
            updates, new = super().update(updates, state, params, **extra)
            return updates, with_builder(new, made_by)


@contextlib.contextmanager
def _naming_use(name: str) -> Iterator[None]:
    """Names the optimizer in the errors its stages raise on bad input to init/update.

    ``gradtx.knobs: at ['w'] ...`` becomes ``gradtx.adam (knobs): at ['w'] ...``. Only gradtx's
    own validation errors are renamed (:func:`gradtx._core.tree.is_own_error`); errors that already
    name this optimizer, and every foreign exception (JAX's tracer errors, a user's schedule
    raising), pass through unchanged: the same object.
    """
    try:
        yield
    except (ValueError, TypeError) as e:
        if not is_own_error(e):
            raise
        head, sep, rest = str(e).partition(":")
        stage = head.removeprefix("gradtx.")
        if not sep or stage == name or stage.startswith(name + " ("):
            raise
        raise renamed(e, f"gradtx.{name} ({stage}):{rest}") from None


def optimizer(
    direction: Direction | None = None,
    scale: Scale | None = None,
    learning_rate: Any = None,
    *,
    before: tuple = (),
    after: tuple = (),
    scale_first: bool = False,
    name: str = "optimizer",
) -> Optimizer:
    r"""An optimizer from the lecture's three knobs: ``θ ← θ − η_t · m_t / σ_t``.

    The stages run in this order::

        before...  →  Knobs(direction g, scale σ)  →  after...  →  −η_t

    Args:
      direction: the g knob making ``m_t`` (e.g. :class:`gradtx.Ema`), or ``None`` for ``g_t``.
      scale: the σ knob dividing by a per-parameter scale (e.g. :class:`gradtx.AdamScale`), or
        ``None`` for σ = 1.
      learning_rate: η, a float or a schedule; ``None`` leaves out the step (and the sign flip).
      before: stages applied to the gradient first (clipping, coupled L2 decay).
      after: stages between the knobs and η (decoupled weight decay, trust ratio).
      scale_first: apply σ to the gradient first and the direction to the result.
      name: the name shown by ``repr``/``describe`` and used as this optimizer's key in a chain.

    Returns:
      An :class:`Optimizer`.

    Example:
      >>> import gradtx, jax.numpy as jnp
      >>> tx = gradtx.optimizer(gradtx.Ema(0.9), gradtx.RMSPropScale(0.99), 1e-3, name="mine")
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
      >>> sorted(state.knobs)
      ['count', 'mu', 'nu']
    """
    stages: list = list(before)
    if direction is not None or scale is not None:
        stages.append(Knobs(direction, scale, scale_first))
    stages.extend(after)
    if learning_rate is not None:
        stages.append(ScaleByLearningRate(learning_rate))
    return Optimizer(tuple(stages), (), name)


@contextlib.contextmanager
def naming(name: str, **aliases: str) -> Iterator[None]:
    """Prefixes construction errors of the stages with the named optimizer being built.

    ``aliases`` map a knob's field name to the optimizer's argument name (``decay="b1"``), so
    ``gradtx.adam(b1=1.5)`` reports ``b1``, the argument the user gave.
    """
    try:
        yield
    except (ValueError, TypeError) as e:
        if not is_own_error(e):
            raise  # a foreign exception (e.g. JAX's, for a traced value): unchanged
        inner = str(e).removeprefix("gradtx.")
        stage, _, rest = inner.partition(":")
        if stage == name or stage.startswith(name + " ("):
            raise
        for field, arg in aliases.items():
            if rest.startswith(f" {field} "):
                rest = f" {arg} " + rest[len(field) + 2 :]
        raise renamed(e, f"gradtx.{name} ({stage}):{rest}") from None
