"""The documentation: every public name is in the API reference, and the guides' code runs.

The API reference is ``docs/api/*.md``, one ``::: gradtx.name`` (mkdocstrings) line per
documented object. The site itself is built by ``mkdocs build --strict`` in ``.ci/run``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
import tempfile
import types
from pathlib import Path

import pytest

import gradtx
import gradtx.schedules

DOCS = Path(__file__).resolve().parent.parent / "docs"
DIRECTIVE = re.compile(r"^:::\s+(gradtx(?:\.\w+)*)\s*$", re.M)


def _documented() -> set[str]:
    found: set[str] = set()
    for page in sorted((DOCS / "api").glob("*.md")):
        found |= set(DIRECTIVE.findall(page.read_text(encoding="utf-8")))
    return found


def _public_submodules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(gradtx.__path__) if not m.name.startswith("_")
    )


def _public_names(module) -> list[str]:
    return sorted(
        name
        for name in dir(module)
        if not name.startswith("_") and not inspect.ismodule(getattr(module, name))
    )


def test_api_pages_exist():
    assert (DOCS / "api").is_dir()
    assert _documented(), "no '::: gradtx.…' lines in docs/api/*.md"


@pytest.mark.parametrize("module_name", ["gradtx", "gradtx.schedules"])
def test_every_public_name_is_in_the_api_reference(module_name):
    module = importlib.import_module(module_name)
    documented = _documented()
    missing = [n for n in _public_names(module) if f"{module_name}.{n}" not in documented]
    assert not missing, (
        f"public names of {module_name} missing from docs/api/*.md (add a "
        f"'::: {module_name}.<name>' line): {missing}"
    )


def test_every_public_submodule_is_in_the_api_reference():
    documented = _documented()
    missing = [m for m in _public_submodules() if f"gradtx.{m}" not in documented]
    assert not missing, f"submodules missing from docs/api/*.md ('::: gradtx.<module>'): {missing}"


def test_api_reference_has_no_stale_entries():
    stale = []
    for target in sorted(_documented()):
        parts = target.split(".")
        obj, i = None, len(parts)
        while i > 0:  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                i -= 1
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            stale.append(target)
    assert not stale, f"docs/api/*.md documents names that do not exist: {stale}"


def _python_blocks(page: str) -> list[str]:
    text = (DOCS.parent / page).read_text("utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


@pytest.mark.parametrize(
    "page",
    [
        "README.md",
        "docs/index.md",
        "docs/interop.md",
        "docs/schedules.md",
        # custom_optimizer.md, packing.md and testing.md quote excerpts of code that runs in
        # examples/custom_optimizer.py, tests/test_packing.py and tests/test_testing_kit.py.
    ],
)
def test_guide_code_runs(page, tmp_path, monkeypatch, capsys):
    """The page's Python blocks, run in order in one namespace (as a reader would)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # checkpoints go to tmp_path
    blocks = _python_blocks(page)
    assert blocks, page
    module = types.ModuleType(f"docs_{Path(page).stem}")  # a real module: dataclasses need one
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page}:block{i}", "exec"), module.__dict__)  # noqa: S102
    capsys.readouterr()


def test_schedule_plot_covers_every_schedule(tmp_path):
    """docs/schedules.md shows a plot of every schedule factory, made by tools/plot_schedules."""
    sys.path.insert(0, str(DOCS.parent / "tools"))
    try:
        plot = importlib.import_module("plot_schedules")
    finally:
        sys.path.pop(0)
    factories = {
        n
        for n in gradtx.schedules.__all__
        if n[0].islower() and callable(getattr(gradtx.schedules, n))
    }
    assert set(plot.EXAMPLES) == factories
    for name, ys in plot.curves().items():
        assert ys.shape == (plot.STEPS,) and bool((ys >= 0).all()), name
    out = plot.main([str(tmp_path / "s.png")])
    assert out.stat().st_size > 10_000
    assert "img/schedules.png" in (DOCS / "schedules.md").read_text("utf-8")
    assert (DOCS / "img" / "schedules.png").exists()
