"""The package's layout: layers import downwards only, no import cycles, small modules.

The layers are in docs/design.md#architecture. Imports are read from the source with ``ast``,
everywhere in a file (inside functions too, where an import that would make a cycle at the top
of a module likes to hide), so the test sees what Python would run, without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gradtx"

#: Each folder of gradtx/ and its layer: a module may import its own folder and the folders of
#: lower layers, nothing else. A new folder must be added here (and to docs/design.md).
LAYERS = {
    "_core": 0,  # protocol, Struct, State, Stage, Context, chain, knob bases, packed data type
    "_direction": 1,  # g
    "_scale": 1,  # σ
    "schedules": 1,  # η
    "_stages": 1,  # clipping, weight decay, trust ratio
    "_packing": 1,  # building the packed layout
    "_interop": 1,  # flax/orbax checkpoints
    "testing": 1,  # the conformance kit: checks any transformation, needs only _core
    "_optimizers": 2,  # named optimizers, built from the knobs and stages
    "_wrappers": 3,  # around any transformation: masking, partitions, skipping
    "_precision": 4,  # state dtypes, rounding of low-precision params, ZeRO-1, memory report
}
TOP = "__init__"  # gradtx/__init__.py re-exports the public names: it may import anything

#: Longest module allowed; none may be longer than HARD_LIMIT, and a module between the two
#: must be listed here with the reason splitting it would cut one concept in two.
SOFT_LIMIT, HARD_LIMIT = 400, 600
LONG_MODULES: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> set[str]:
    """The gradtx modules ``module`` imports (``from x import y`` counts ``x.y`` when ``y`` is
    a module, else ``x``)."""
    path = MODULES[module]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        found |= {n for n in names if n == "gradtx" or n.startswith("gradtx.")}
    found.discard(module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else TOP


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_reader_sees_every_import():
    # The parser must find the package's known edges, or the tests below prove nothing.
    assert "gradtx._core.stage" in GRAPH["gradtx._core.knobs"]
    assert "gradtx._core.flax_hook" in GRAPH["gradtx._core.state"]
    assert "gradtx._optimizers.builder" in GRAPH["gradtx._optimizers.adam"]
    assert "gradtx.schedules._learning_rate" in GRAPH["gradtx"]


def test_no_import_cycles():
    assert not _cycles(GRAPH), f"import cycles: {_cycles(GRAPH)}"


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_folder_has_a_layer():
    folders = {_folder(m) for m in MODULES} - {TOP}
    assert folders == set(LAYERS), (
        f"folders without a layer in tests/test_layout.py: {sorted(folders - set(LAYERS))}; "
        f"layers without a folder: {sorted(set(LAYERS) - folders)}"
    )


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _folder(m) != TOP))
def test_layers_import_downwards_only(module):
    here = _folder(module)
    bad = [
        target
        for target in sorted(GRAPH[module])
        if _folder(target) != here
        and (_folder(target) == TOP or LAYERS[_folder(target)] >= LAYERS[here])
    ]
    assert not bad, (
        f"{module} (layer {LAYERS[here]}, {here}/) imports {bad}: a module may import its own "
        "folder and lower layers only (docs/design.md#architecture)"
    )


def test_core_imports_nothing_above_it():
    above = {
        (m, t) for m in GRAPH if _folder(m) == "_core" for t in GRAPH[m] if _folder(t) != "_core"
    }
    assert not above, above


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_small(module):
    n = len(MODULES[module].read_text("utf-8").splitlines())
    rel = str(MODULES[module].relative_to(PACKAGE.parent))
    assert n <= HARD_LIMIT, f"{rel} has {n} lines (at most {HARD_LIMIT})"
    assert n <= SOFT_LIMIT or rel in LONG_MODULES, (
        f"{rel} has {n} lines: split it (at most {SOFT_LIMIT}), or list it in LONG_MODULES "
        "with the reason a split would cut one concept in two"
    )


def test_no_module_named_like_a_folder():
    # gradtx/_scale.py next to gradtx/_scale/ would shadow the folder: the layout is folders.
    flat = {p.stem for p in PACKAGE.glob("_*.py")} - {"__init__"}
    assert not flat, f"flat private modules at the top of gradtx/: {sorted(flat)}"
