"""The public API is a list kept in the tests: a name added, removed or changed in kind fails.

``tests/public_api.txt`` lists every public name of ``gradtx``, ``gradtx.schedules`` and
``gradtx.testing`` with its kind (class, callable, module or the type of a constant). A change
of the public API is a change of that file, made on purpose (and recorded in CHANGELOG.md);
moving code between private modules changes nothing here. Also: names that two public modules
share are the same object (one public identity per concept).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import gradtx
import gradtx.schedules
import gradtx.testing

LISTED = Path(__file__).with_name("public_api.txt")
MODULES = ("gradtx", "gradtx.schedules", "gradtx.testing")


def _kind(obj: object) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "callable"
    return type(obj).__name__


def _current() -> set[str]:
    out = set()
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in dir(module):
            if not attr.startswith("_"):
                out.add(f"{name}.{attr} {_kind(getattr(module, attr))}")
    return out


def _listed() -> set[str]:
    lines = LISTED.read_text(encoding="utf-8").splitlines()
    return {line for line in lines if line and not line.startswith("#")}


def test_public_names_are_the_listed_ones():
    current, listed = _current(), _listed()
    assert not current - listed, f"public names not in {LISTED.name}: {sorted(current - listed)}"
    assert not listed - current, f"listed names gone or changed: {sorted(listed - current)}"


def test_shared_names_are_one_object():
    # optax's schedule names are at the top level and in gradtx.schedules: one object each.
    for name in dir(gradtx.schedules):
        if not name.startswith("_") and hasattr(gradtx, name):
            assert getattr(gradtx, name) is getattr(gradtx.schedules, name), name
