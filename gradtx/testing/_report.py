"""What :func:`gradtx.testing.check_transformation` returns and raises, and each check's tier."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

__all__ = ["ADVISORY", "REQUIRED", "TIERS", "CheckFailure", "CheckReport", "tier_of"]

#: The tier of a contract any transformation with optax's protocol must keep.
REQUIRED = "required"
#: The tier of a contract gradtx holds itself to but a third-party transformation need not.
ADVISORY = "advisory"

#: The tier of every check and part of a check, by name. The per-dtype parts of ``dtypes``
#: (``"dtypes.float16"``, ...) are required; :func:`tier_of` answers for any name.
TIERS: dict[str, str] = {
    "jit": REQUIRED,
    "jit.hyperparameters": ADVISORY,
    "stability": REQUIRED,
    "stability.jit": REQUIRED,
    "stability.cond": REQUIRED,
    "stability.scan": REQUIRED,
    "dtypes": REQUIRED,
    "dtypes.policy": ADVISORY,
    "dtypes.finite": ADVISORY,
    "strict_promotion": ADVISORY,
    "abstract_init": REQUIRED,
    "sharding": REQUIRED,
    "sharding.auto": REQUIRED,
    "sharding.explicit": REQUIRED,
    "structure": REQUIRED,
    "structure.errors": ADVISORY,
    "extra_args.declared": REQUIRED,
    "extra_args": ADVISORY,
    "vmap": REQUIRED,
    "vmap.params": REQUIRED,
    "vmap.hyperparameters": ADVISORY,
}


def tier_of(check: str) -> str:
    """``"required"`` or ``"advisory"``: the tier of a check or part (see :data:`TIERS`).

    Names not in :data:`TIERS` are the per-dtype parts of ``dtypes`` (``"dtypes.bfloat16"``):
    required.

    Raises:
      KeyError: for a name that is no check of the kit.
    """
    if check in TIERS:
        return TIERS[check]
    if check.startswith("dtypes.") and check.count(".") == 1:
        return REQUIRED
    raise KeyError(f"{check!r} is no check of gradtx.testing; the checks are {sorted(TIERS)}")


class CheckFailure(AssertionError):
    """A transformation broke one rule of the kit.

    Attributes:
      check: the check that failed (``"jit"``, ``"dtypes"``, ...), with the part when a check
        has several (``"stability.scan"``).
      transformation: the name of the transformation under test.
      reason: what was wrong, naming the leaf path, dtype or sharding involved.
      tier: ``"required"`` or ``"advisory"`` (:func:`tier_of` of ``check``).
    """

    def __init__(self, check: str, transformation: str, reason: str) -> None:
        self.check = check
        self.transformation = transformation
        self.reason = reason
        self.tier = tier_of(check)
        super().__init__(f"{transformation} failed {self.tier} check {check!r}: {reason}")


@dataclasses.dataclass
class CheckReport:
    """Which checks passed (with what they verified), were skipped (with why) or missed.

    A failed **required** check is never recorded: it is raised as :class:`CheckFailure`. A
    failed **advisory** check is raised too when ``strict`` is true; otherwise it is recorded in
    ``misses`` (check name -> reason) and the run goes on. Skipped checks are always recorded
    with a reason, never dropped silently.

    Attributes:
      transformation: the name of the transformation under test.
      strict: whether advisory misses raise.
      passed: check name -> what it verified.
      skipped: check name -> why it was not run.
      misses: advisory check name -> why it failed (empty when ``strict``).
    """

    transformation: str
    strict: bool = False
    passed: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    misses: dict[str, str] = dataclasses.field(default_factory=dict)

    def ok(self, check: str, detail: str = "") -> None:
        """Records that ``check`` passed."""
        self.passed[check] = detail

    def skip(self, check: str, reason: str) -> None:
        """Records that ``check`` was not run, and why."""
        self.skipped[check] = reason

    def fail(self, check: str, reason: str) -> CheckFailure:
        """The exception to raise for a failure of ``check`` (``raise report.fail(...)``)."""
        return CheckFailure(check, self.transformation, reason)

    def note(self, failure: CheckFailure) -> None:
        """Raises ``failure`` if it is required or ``strict`` is set; else records the miss."""
        if self.strict or failure.tier == REQUIRED:
            raise failure
        self.misses.setdefault(failure.check, failure.reason)

    @contextlib.contextmanager
    def advisory(self) -> Iterator[None]:
        """A block of advisory checks: a :class:`CheckFailure` raised in it ends the block and
        goes to :meth:`note` (recorded, or raised when required or ``strict``)."""
        try:
            yield
        except CheckFailure as e:
            self.note(e)

    def __str__(self) -> str:
        n = len(self.misses)
        head = f"check_transformation({self.transformation}): required checks passed"
        head += f", {n} advisory miss{'es' if n != 1 else ''}"
        rows = [("passed", k, v) for k, v in self.passed.items()]
        rows += [("skipped", k, v) for k, v in self.skipped.items()]
        rows += [("MISSED", k, v) for k, v in self.misses.items()]
        lines = [head]
        for status, check, text in rows:
            tier = _tier_label(check)
            lines.append(f"  {status:8s} {tier:8s} {check}" + (f": {text}" if text else ""))
        return "\n".join(lines)


def _tier_label(check: str) -> str:
    try:
        return tier_of(check)
    except KeyError:
        return "?"
