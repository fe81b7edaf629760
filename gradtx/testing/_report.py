"""What :func:`gradtx.testing.check_transformation` returns and raises."""

from __future__ import annotations

import dataclasses

__all__ = ["CheckFailure", "CheckReport"]


class CheckFailure(AssertionError):
    """A transformation broke one rule of the kit.

    Attributes:
      check: the check that failed (``"jit"``, ``"dtypes"``, ...), with the part when a check
        has several (``"stability.scan"``).
      transformation: the name of the transformation under test.
      reason: what was wrong, naming the leaf path, dtype or sharding involved.
    """

    def __init__(self, check: str, transformation: str, reason: str) -> None:
        self.check = check
        self.transformation = transformation
        self.reason = reason
        super().__init__(f"{transformation} failed check {check!r}: {reason}")


@dataclasses.dataclass
class CheckReport:
    """Which checks passed (with what they verified) and which were skipped (with why).

    Skipped checks are always recorded with a reason, never dropped silently. A failure is not
    recorded: it is raised as :class:`CheckFailure`.
    """

    transformation: str
    passed: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def ok(self, check: str, detail: str = "") -> None:
        """Records that ``check`` passed."""
        self.passed[check] = detail

    def skip(self, check: str, reason: str) -> None:
        """Records that ``check`` was not run, and why."""
        self.skipped[check] = reason

    def fail(self, check: str, reason: str) -> CheckFailure:
        """The exception to raise for a failure of ``check`` (``raise report.fail(...)``)."""
        return CheckFailure(check, self.transformation, reason)

    def __str__(self) -> str:
        lines = [f"check_transformation({self.transformation}):"]
        lines += [f"  passed   {k}" + (f": {v}" if v else "") for k, v in self.passed.items()]
        lines += [f"  skipped  {k}: {v}" for k, v in self.skipped.items()]
        return "\n".join(lines)
