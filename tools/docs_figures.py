"""Regenerates the lecture figures shown on the docs site (``docs/img/lecture/*.png``).

    python tools/docs_figures.py             # the full lab, as `examples/lecture.py --out ...`
    python tools/docs_figures.py --quick     # reduced sizes (a smoke test; do not commit these)

Runs ``examples/lecture.py`` into a temporary folder and copies its PNG figures (the names in
its ``summary.json``) into ``docs/img/lecture/``, removing PNGs there that the lab no longer
makes. ``docs/three_knobs.md`` embeds them; ``tests/test_lecture.py`` checks that the committed
files are the ones this command makes (same names and pixel sizes) and that the page shows each.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "examples" / "lecture.py"
DEST = ROOT / "docs" / "img" / "lecture"
PAGE = ROOT / "docs" / "three_knobs.md"


def load_lab() -> ModuleType:
    """``examples/lecture.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("lecture_lab_main", LAB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (not for committing)")
    ap.add_argument("--dest", type=Path, default=DEST, help="folder for the PNGs")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        lab_args = ["--out", tmp, "--no-progress"] + (["--quick"] if args.quick else [])
        summary = load_lab().main(lab_args)
        args.dest.mkdir(parents=True, exist_ok=True)
        names = set(summary["figures"])
        for stale in args.dest.glob("*.png"):
            if stale.name not in names:
                stale.unlink()
        written = []
        for name in sorted(names):
            written.append(Path(shutil.copyfile(Path(tmp) / name, args.dest / name)))
    print(f"wrote {len(written)} figures to {args.dest}")
    return written


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
