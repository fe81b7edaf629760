"""mkdocs hooks for the gradtx docs (``hooks:`` in mkdocs.yml).

Pages link to repository files outside ``docs/`` (``[examples/lecture.py](../examples/lecture.py)``)
so that they work when read on GitHub. The site does not contain those files, so such a link
becomes a link to ``repo_url`` (``<repo_url>/blob/main/<path>``) when mkdocs.yml sets one, and
inline code otherwise. Only links to files that exist are rewritten: a link to a missing file
stays as written and ``mkdocs build --strict`` reports it.

Every built page must work offline: :func:`external_resources` lists what a page would load
from another host (a ``<script src>``, a stylesheet, a font, a preconnect, an image), and
``on_post_page`` fails the build if there is anything (MathJax is vendored under
``docs/javascripts/vendor/``). Plain links (``<a href>``) to other sites are fine.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

# A tag that makes the browser fetch its URL: script/img/iframe/source src, and <link> hrefs
# (stylesheets, fonts, preconnect, preload). <a href> is a link the reader follows, not a load.
_LOAD = re.compile(
    r"<(?:script|img|iframe|source|audio|video|embed)\b[^>]*?\bsrc\s*=\s*[\"']([^\"']+)"
    r"|<link\b[^>]*?\bhref\s*=\s*[\"']([^\"']+)",
    re.I,
)
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


def external_resources(html: str) -> list[str]:
    """The URLs on another host (``scheme://`` or ``//``) that ``html`` makes a browser load."""
    urls = (m.group(1) or m.group(2) for m in _LOAD.finditer(html))
    return sorted({u for u in urls if "://" in u or u.startswith("//")})


def on_post_page(output: str, page: Any, config: Any) -> str:
    external = external_resources(output)
    if external:
        from mkdocs.exceptions import PluginError

        raise PluginError(
            f"docs page {page.file.src_uri} loads from another host (the site must work "
            f"offline; vendor it under docs/javascripts/vendor/): {external}"
        )
    return output
