"""What the named optimizers share: optax's argument conventions turned into gradtx's values."""

from __future__ import annotations

from typing import Any

from .._stages.weight_decay import AddDecayedWeights

__all__ = ["Schedule", "all_true", "decayed_weights"]

#: The type of a learning rate (or other hyperparameter): a float or a function of the step.
Schedule = Any


def all_true(mask: Any) -> Any:
    """optax's ``mask=True`` (every leaf) as gradtx's ``None``."""
    return None if mask is True else mask


def decayed_weights(weight_decay: float, mask: Any) -> tuple:
    """The stages of ``weight_decay`` on ``mask`` (optax's ``mask`` conventions)."""
    return (AddDecayedWeights(weight_decay, all_true(mask)),)
