"""Which knobs each named gradtx optimizer turns: the direction g, the scale σ, the schedule η."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import gradtx


def named_optimizers() -> list[str]:
    """Every public function of gradtx that returns an :class:`gradtx.Optimizer` (or a subclass:
    ``muon``, ``lbfgs``, ``soap``), the builder and optax's update-only ``scale_by_*`` forms aside.

    The same set as the tests' ``helpers.named_optimizer_names`` (the family modules' ``__all__``),
    which tests/test_nan_inf.py checks; the lab runs without tests/ on its path."""
    names = []
    for name in sorted(dir(gradtx)):
        obj = getattr(gradtx, name)
        if name.startswith(("_", "scale_by_")) or name == "optimizer":
            continue
        if not inspect.isfunction(obj):
            continue
        ret = typing.get_type_hints(obj).get("return")
        if isinstance(ret, type) and issubclass(ret, gradtx.Optimizer):
            names.append(name)
    return names


def knob_table(learning_rate: float = 1e-3) -> list[dict[str, Any]]:
    """One row per named optimizer, from ``gradtx.<name>(learning_rate).describe()``."""
    rows = []
    for name in named_optimizers():
        fn = getattr(gradtx, name)
        params = inspect.signature(fn).parameters
        required = [p for p, v in params.items() if v.default is inspect.Parameter.empty]
        kwargs = {"learning_rate": learning_rate} if "learning_rate" in params else {}
        if set(required) - set(kwargs):
            rows.append({"name": name, "error": f"needs {sorted(set(required) - set(kwargs))}"})
            continue
        d = fn(**kwargs).describe()
        rows.append(
            {
                "name": name,
                "g": d["g"],
                "sigma": d["sigma"],
                "eta": d["eta"],
                "order": d["order"],
                "before": d["before"],
                "after": d["after"],
            }
        )
    return rows


def _short(text: str) -> str:
    """The rule part of a knob description (``Repr(...): rule`` -> ``rule``)."""
    return text.split("): ", 1)[-1] if "): " in text else text


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: name | g | σ | η | before/after stages."""
    lines = []
    for r in rows:
        stages = [f"before: {s}" for s in r.get("before", [])]
        stages += [f"after: {s}" for s in r.get("after", [])]
        extra = ", ".join(stages)
        lines.append(
            (
                r["name"],
                _short(r.get("g", "")),
                _short(r.get("sigma", r.get("error", ""))),
                r.get("eta", ""),
                extra,
            )
        )
    head = ("optimizer", "g (direction)", "σ (scale)", "η (schedule)", "other stages")
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(4)]
    fmt = lambda x: " | ".join(c.ljust(w) for c, w in zip(x[:4], widths)) + " | " + x[4]  # noqa: E731
    return "\n".join([fmt(head), "-+-".join("-" * w for w in widths) + "-+-", *map(fmt, lines)])
