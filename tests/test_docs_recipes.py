"""The recipes of the docs pages run, and print what the page says they print.

A page's first ```python block is executed; where the page follows it with "prints" and a
```text block, the output must be exactly that text.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import jax
import pytest

DOCS = Path(__file__).parents[1] / "docs"
PAGES = [
    "param_groups.md",
    "training_steps.md",
    "averages.md",
    "diagnostics.md",
    "precision.md",
]


@pytest.mark.parametrize("page", PAGES)
def test_recipe_runs_and_prints_what_the_page_says(page):
    text = (DOCS / page).read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), jax.numpy_dtype_promotion("standard"):
        exec(compile(code, page, "exec"), {})
    marker = "prints\n\n```text\n"
    if marker in text:
        start = text.index(marker) + len(marker)
        assert out.getvalue() == text[start : text.index("```", start)]
