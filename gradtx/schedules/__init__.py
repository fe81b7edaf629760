"""Schedules of the step count for η (or any hyperparameter). See docs/schedules.md."""

from ._base import Schedule as Schedule
from ._basic import constant as constant
from ._basic import linear as linear

__all__ = ["Schedule", "constant", "linear"]
