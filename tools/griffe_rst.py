"""A griffe extension for the docs build: gradtx's reStructuredText bits become Markdown.

gradtx docstrings use Google-style sections with a few reST constructs inside; mkdocstrings
renders Markdown, so before parsing each docstring this rewrites

- ``.. math::`` blocks into ``$$ ... $$`` blocks and ``:math:`x``` into ``$x$`` (rendered by
  ``pymdownx.arithmatex`` and MathJax);
- cross-reference roles (``:class:`~gradtx.Optimizer```, ``:func:`nadam```) into inline code
  (the last component when the target starts with ``~``);
- a paragraph ending in ``::`` (a reST literal block follows) into one ending in ``:``;
- an ``Example:`` section header into ``Examples:``, the header griffe parses as doctest
  examples (rendered as code) rather than as an admonition.

Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_XREF_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|obj|exc|const):`(~?)([^`]+)`")
_DIRECTIVE = re.compile(r"^(\s*)\.\. math::\s*(.*)$")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$")


def _xref(match: re.Match) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if target.endswith("()"):
        target = target[:-2]
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, first = m.group(1), m.group(2).strip()
        body = [first] if first else []
        i += 1
        body_indent = None  # that of the first body line; a line indented less ends the block
        while i < len(lines):
            line = lines[i]
            depth = len(line) - len(line.lstrip())
            if line.strip():
                if depth <= len(indent) or (body_indent is not None and depth < body_indent):
                    break
                body_indent = depth if body_indent is None else body_indent
            body.append(line.strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        body = [b for b in body if b]  # a blank line would end the display in Markdown
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}$$", *(f"{indent}{b}" for b in body), f"{indent}$$", ""]
    return out


def rst_to_markdown(text: str) -> str:
    """The Markdown equivalent of the reST constructs gradtx docstrings use."""
    lines = _math_blocks(text.splitlines())
    fixed = []
    for line in lines:
        line = _MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", line)
        line = _XREF_ROLE.sub(_xref, line)
        line = _EXAMPLE.sub(r"\1Examples:", line)
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            line = line.rstrip()[:-1]
        fixed.append(line)
    return "\n".join(fixed)


class RstToMarkdown(griffe.Extension):
    """Rewrites each docstring before mkdocstrings parses its Google-style sections."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
