"""tools/compare_optimizers.py: the comparison page's numbers are the committed results, and
the tool's pipeline (sweep, figures, results, table) runs; on two optimizers, few steps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
from helpers import named_optimizer_names

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "img" / "compare" / "results.json"


def _tool():
    spec = importlib.util.spec_from_file_location(
        "compare_optimizers", ROOT / "tools" / "compare_optimizers.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_page_shows_the_committed_results():
    tool = _tool()
    saved = json.loads(RESULTS.read_text())["results"]
    page = (ROOT / "docs" / "optimizers_compared.md").read_text()
    shown = page[page.index(tool.MARK_START) + len(tool.MARK_START) : page.index(tool.MARK_END)]
    assert shown.strip() == tool.table(saved).strip()
    # every optimizer the tool knows is in the results and drawn, and it knows every named one
    assert set(tool.available()) == set(saved)
    assert named_optimizer_names() <= set(saved), named_optimizer_names() - set(saved)
    for name in ("valley", "digits"):
        assert (RESULTS.parent / f"{name}.png").stat().st_size > 10_000


def test_the_pipeline_runs_on_two_optimizers(tmp_path, monkeypatch):
    tool = _tool()
    monkeypatch.setattr(tool, "CANDIDATES", {k: tool.CANDIDATES[k] for k in ("adam", "prodigy")})
    monkeypatch.setattr(tool, "GRID", (1e-2, 1e-1))
    steps = {"valley": 30, "digits": 5}
    problems = {"valley": tool.valley_problem(30), "digits": tool.digits_problem()}
    # the tool runs with JAX's default promotion (a bias broadcast over a batch)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        results = tool.sweep(problems, steps)
    assert set(results) == {"adam", "prodigy"}
    assert results["prodigy"]["valley"]["lr"] == 1.0  # learning-rate free: no grid
    for res in results.values():
        for prob, r in res.items():
            curve = np.asarray(r["curve"])
            assert curve.shape == (steps[prob] + 1,) and r["final"] == curve[-1]
            assert curve[-1] < curve[0], prob  # each makes progress on both problems
    paths = tool.figures(results, tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)
    assert tool.table(results).count("\n") == 3
