"""mkdocs hooks for the gradtx docs (``hooks:`` in mkdocs.yml).

Pages link to repository files outside ``docs/`` (``[examples/lecture.py](../examples/lecture.py)``)
so that they work when read on GitHub. The site does not contain those files, so such a link
becomes a link to ``repo_url`` (``<repo_url>/blob/main/<path>``) when mkdocs.yml sets one, and
inline code otherwise. Only links to files that exist are rewritten: a link to a missing file
stays as written and ``mkdocs build --strict`` reports it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")
_FENCE = re.compile(r"^(\s*)(```|~~~)")


def _outside_target(page_src: str, target: str, docs_dir: Path, root: Path) -> str | None:
    """The repository path a relative link points to, if it leaves docs/ and exists."""
    if "://" in target or target.startswith(("/", "mailto:")):
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(page_src), target))
    if not joined.startswith("../"):
        return None  # inside docs/: mkdocs validates it
    path = (docs_dir / joined).resolve()
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    return rel.as_posix() if path.exists() else None


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    root = docs_dir.parent  # the repository
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def rewrite(match: re.Match) -> str:
        text, target, anchor = match.group(1), match.group(2), match.group(3) or ""
        rel = _outside_target(page.file.src_uri, target, docs_dir, root)
        if rel is None:
            return match.group(0)
        if repo_url:
            kind = "tree" if (root / rel).is_dir() else "blob"
            return f"[{text}]({repo_url}/{kind}/main/{rel}{anchor})"
        return text if text.startswith("`") else f"`{text}`"

    out, fenced = [], None
    for line in markdown.split("\n"):
        m = _FENCE.match(line)
        if m:
            fenced = None if fenced == m.group(2) else (fenced or m.group(2))
        out.append(line if fenced else _LINK.sub(rewrite, line))
    return "\n".join(out)
