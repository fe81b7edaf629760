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
    # optax's schedule names are also at the top level, as optax has them: the same objects
    # as in gradtx.schedules, documented there once (docs/api/schedules.md says so).
    aliases = {
        n
        for n in gradtx.schedules.OPTAX_NAMES
        if module is gradtx and getattr(gradtx, n) is getattr(gradtx.schedules, n)
    }
    assert module is not gradtx or aliases == set(gradtx.schedules.OPTAX_NAMES)
    missing = [
        n
        for n in _public_names(module)
        if f"{module_name}.{n}" not in documented
        and not (n in aliases and f"gradtx.schedules.{n}" in documented)
    ]
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
    # every gradtx factory is plotted; optax's spellings (`OPTAX_NAMES`: the same schedules under
    # optax's names and signatures) may be, and nothing else
    optax_names = set(getattr(gradtx.schedules, "OPTAX_NAMES", ()))
    assert factories - optax_names <= set(plot.EXAMPLES) <= factories
    for name, ys in plot.curves().items():
        assert ys.shape == (plot.STEPS,) and bool((ys >= 0).all()), name
    out = plot.main([str(tmp_path / "s.png")])
    assert out.stat().st_size > 10_000
    assert "img/schedules.png" in (DOCS / "schedules.md").read_text("utf-8")
    assert (DOCS / "img" / "schedules.png").exists()


def test_readme_loop_is_as_long_as_it_says_and_visibly_trains(capsys):
    """The README's first example: its heading gives its line count, and running it prints a
    loss that falls from the start value (14 = 1 + 4 + 9) by orders of magnitude."""
    text = (DOCS.parent / "README.md").read_text("utf-8")
    heading = re.search(r"^## .*\((\d+) lines\)$", text, re.M)
    assert heading, "README.md: no '## ... (N lines)' heading"
    code = _python_blocks("README.md")[0]
    assert text.index(heading.group(0)) < text.index(code)
    assert int(heading.group(1)) == sum(1 for line in code.splitlines() if line.strip())
    namespace: dict = {}
    exec(compile(code, "README.md:block0", "exec"), namespace)  # noqa: S102
    losses = [float(v) for v in re.findall(r"loss ([0-9.eE+-]+)", capsys.readouterr().out)]
    assert len(losses) >= 3
    assert losses[0] == pytest.approx(14.0)  # Σ (w* − 0)² at the start
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 1e-3 * losses[0], losses
    w = namespace["params"]["w"]
    assert abs(float(w[0]) - 1.0) < 1e-2 and abs(float(w[1]) + 2.0) < 1e-2


def _count_traces(make_tx, rates, set_rate=None):
    """Traces of a jitted nnx train step over ``rates``: one ``nnx.Optimizer`` per rate, or
    (``set_rate``) one optimizer whose rate is set in its state. Also returns the updates."""
    nnx = pytest.importorskip("flax.nnx")
    import jax.numpy as jnp

    traces = []
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    x = jnp.ones((4, 2))

    @nnx.jit
    def step(model, optimizer):
        traces.append(1)  # runs only while tracing
        grads = nnx.grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
        optimizer.update(model, grads)

    kernels = []
    optimizer = None
    for rate in rates:
        if set_rate is None or optimizer is None:
            optimizer = nnx.Optimizer(model, make_tx(rate), wrt=nnx.Param)
        if set_rate is not None:
            set_rate(optimizer, rate)
        before = jnp.array(model.kernel[...])
        step(model, optimizer)
        kernels.append(jnp.array(model.kernel[...]) - before)
    return len(traces), kernels


def test_flax_learning_rate_change_recompiles_unless_injected():
    """What the docs say about flax (README, docs/index.md, docs/design.md): nnx.Optimizer
    keeps ``tx`` as static data, so two learning rates are two traces; with
    ``optax.inject_hyperparams(gradtx.adam)`` the rate is state and one trace serves both.
    A gradtx transformation passed to a jitted function as an argument: one trace."""
    optax = pytest.importorskip("optax")
    import jax
    import jax.numpy as jnp

    for page in ("README.md", "docs/index.md", "docs/design.md"):  # the docs say so
        assert "optax.inject_hyperparams(gradtx." in (DOCS.parent / page).read_text("utf-8"), page
    rates = [1e-2, 1e-1]
    n, _ = _count_traces(gradtx.adam, rates)
    assert n == 2

    def set_rate(optimizer, rate):
        optimizer.opt_state.hyperparams["learning_rate"][...] = rate

    injected = optax.inject_hyperparams(gradtx.adam)
    n, moves = _count_traces(lambda r: injected(learning_rate=r), rates, set_rate)
    assert n == 1
    # the rate set in the state is the one applied: the same two steps with optax's own adam
    # under inject_hyperparams move the kernel the same (rtol 1e-5; optax's adam needs JAX's
    # standard dtype promotion for its int32 step count)
    reference_tx = optax.inject_hyperparams(optax.adam)
    with jax.numpy_dtype_promotion("standard"):
        _, reference = _count_traces(lambda r: reference_tx(learning_rate=r), rates, set_rate)
    for got, want in zip(moves, reference, strict=True):
        assert jnp.allclose(got, want, rtol=1e-5, atol=1e-9), (got, want)
    assert not jnp.allclose(moves[1], moves[0], rtol=0.5)  # the second rate made a difference

    traces = []

    @jax.jit
    def update(tx, grads, state):
        traces.append(1)
        return tx.update(grads, state)

    grads = {"w": jnp.ones(3)}
    for rate in rates:
        tx = gradtx.adam(rate)
        update(tx, grads, tx.init(grads))
    assert len(traces) == 1


def _hooks():
    sys.path.insert(0, str(DOCS.parent / "tools"))
    try:
        return importlib.import_module("mkdocs_hooks")
    finally:
        sys.path.pop(0)


def test_docs_site_loads_nothing_from_a_cdn():
    """MathJax is vendored and the theme uses system fonts, so the site (formulas included)
    works offline; the build's hook rejects any page that loads from another host."""
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((DOCS.parent / "mkdocs.yml").read_text("utf-8"))
    assets = config.get("extra_javascript", []) + config.get("extra_css", [])
    assert not [a for a in assets if "//" in str(a)], assets
    assert config["theme"].get("font") is False  # no Google Fonts
    for asset in assets:
        assert (DOCS / asset).is_file(), asset
    bundle = DOCS / "javascripts" / "vendor" / "mathjax"
    assert "javascripts/vendor/mathjax/tex-svg-full.js" in assets
    assert 'VERSION="3.2.2"' in (bundle / "tex-svg-full.js").read_text("utf-8")  # MathJax's
    assert "Apache License" in (bundle / "LICENSE").read_text("utf-8")

    hooks = _hooks()
    page = (
        '<link rel="stylesheet" href="assets/main.css"><script src="javascripts/mathjax.js">'
        '</script><a href="https://github.com/x">a link is not a load</a><img src="img/a.png">'
    )
    assert hooks.external_resources(page) == []
    cdn = '<script src="https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js"></script>'
    fonts = '<link rel="preconnect" href="https://fonts.gstatic.com" crossorigin>'
    assert hooks.external_resources(page + cdn + fonts) == [
        "https://fonts.gstatic.com",
        "https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js",
    ]
    assert hooks.external_resources("<script src='//cdn.example/x.js'></script>")


#: The API pages follow the package's layers: each page documents the names of its folders
#: (docs/design.md#architecture). The knob base classes live in _core/knobs.py and are shown
#: with their knobs; Packed and unpack (the data type, in _core/packed.py) with pack.
PAGE_FOLDERS = {
    "core.md": ("gradtx._core", "gradtx._interop"),
    "direction.md": ("gradtx._direction", "gradtx._core.knobs"),
    "scale.md": ("gradtx._scale", "gradtx._core.knobs"),
    "schedules.md": ("gradtx.schedules",),
    "stages.md": ("gradtx._stages",),
    "optimizers.md": ("gradtx._optimizers",),
    "packing.md": ("gradtx._packing", "gradtx._core.packed"),
    "testing.md": ("gradtx.testing",),
    "wrappers.md": ("gradtx._wrappers",),
    "precision.md": ("gradtx._precision",),
}


def _defining_module(target: str) -> str:
    """The module that defines a documented name (for constants without ``__module__``: the
    module whose ``__all__`` lists it, searched among gradtx's loaded modules)."""
    parts = target.split(".")
    obj = importlib.import_module(parts[0])
    for attr in parts[1:]:
        obj = getattr(obj, attr)
    if inspect.ismodule(obj):
        return obj.__name__
    module = getattr(obj, "__module__", None)
    if isinstance(module, str) and module.startswith("gradtx"):
        return module
    owners = [
        name
        for name, m in sorted(sys.modules.items())
        if name.startswith("gradtx.")
        and parts[-1] in getattr(m, "__all__", ())
        and getattr(m, parts[-1], None) is obj
        and not name.endswith(("gradtx.schedules", "gradtx.testing"))
    ]
    assert owners, f"no module of gradtx defines {target}"
    return owners[0]


def test_api_pages_follow_the_folders():
    pages = {p.name for p in (DOCS / "api").glob("*.md")} - {"index.md"}
    assert pages == set(PAGE_FOLDERS), (
        f"pages without a folder, or gone: {pages ^ set(PAGE_FOLDERS)}"
    )
    index = (DOCS / "api" / "index.md").read_text("utf-8")
    misplaced = []
    for page, folders in PAGE_FOLDERS.items():
        assert f"]({page})" in index, f"docs/api/index.md does not link {page}"
        for target in DIRECTIVE.findall((DOCS / "api" / page).read_text("utf-8")):
            module = _defining_module(target)
            if not any(module == f or module.startswith(f + ".") for f in folders):
                misplaced.append(f"{page}: {target} (defined in {module})")
    assert not misplaced, f"names documented on another folder's page: {misplaced}"
