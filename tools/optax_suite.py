"""Run optax's own test files with gradtx substituted wherever it has the same public name.

Usage (by hand, not part of the pytest suite; about 10 minutes on 2 cores)::

    python tools/optax_suite.py --out runs/optax_suite.json [--markdown docs/optax_suite.md]

Method
------
1. The chosen ``*_test.py`` files of the installed optax are copied into a temporary directory.
2. In each copy, after every top-level ``import`` statement, one line is inserted that replaces
   each optax module bound in the test module's globals (``alias``, ``transform``,
   ``_schedule``, ``optax`` ...) by a *routing proxy*. The proxy forwards every attribute to
   the real optax module, except a **shared name**: a public name ``n`` of that module whose
   object is optax's public ``optax.n`` (or ``optax.schedules.n``) and for which gradtx has
   ``gradtx.n`` (or ``gradtx.schedules.n``) at the same place. A shared name resolves to gradtx's
   object. Shared names are discovered when the run starts, so names added to gradtx are picked
   up without editing this file. optax's own internals are untouched: only what the test code
   reaches through a module name is routed.
3. A test case is *routed* when it touched at least one shared name: the proxy records names
   looked up while a test runs, and callables looked up at import time (``parameterized``
   arguments) are wrapped so that calling them records the name.
4. Each file runs in its own ``pytest -p no:xdist`` subprocess (with a per-file time limit) so
   that one crash or hang costs one file. Results are written as JSON: a table by file, failures
   grouped by cause (exception type plus the normalised first line of its message), and every case.

This module is also the pytest plugin loaded in the subprocesses (``-p optax_suite``).
"""

from __future__ import annotations

import argparse
import ast
import collections
import concurrent.futures
import datetime
import functools
import importlib
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# The files of issue #9's measurement: alias, schedules, transforms, clipping, combine, update,
# adding, float64 (paths relative to the installed ``optax`` package).
DEFAULT_FILES = (
    "_src/alias_test.py",
    "_src/transform_test.py",
    "_src/combine_test.py",
    "_src/update_test.py",
    "_src/float64_test.py",
    "transforms/_clipping_test.py",
    "transforms/_adding_test.py",
    "transforms/_combining_test.py",
    "schedules/_schedule_test.py",
    "schedules/_join_test.py",
)

# alias_test alone is ~60 % of the run; three subprocesses keep each one short.
DEFAULT_SHARDS = {"_src/alias_test.py": 3}

_RECORD_ENV = "OPTAX_SUITE_RECORD"
_SHARD_ENV = "OPTAX_SUITE_SHARD"
_INSTALL_LINE = "__import__('optax_suite').install(globals())"

# --------------------------------------------------------------------------------------------
# Routing (runs inside the pytest subprocess)
# --------------------------------------------------------------------------------------------

_current: set[str] | None = None  # names touched by the running test; None between tests
_proxies: dict[str, types.ModuleType] = {}
_wrapped: dict[str, Any] = {}


def _public_places() -> list[tuple[Any, Any, str]]:
    """(optax namespace, gradtx namespace, gradtx prefix) pairs: the 'same places'."""
    import optax
    import optax.schedules

    import gradtx
    import gradtx.schedules

    return [
        (optax, gradtx, "gradtx."),
        (optax.schedules, gradtx.schedules, "gradtx.schedules."),
    ]


def _safe_getattr(obj: Any, name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return getattr(obj, name)
        except Exception:  # noqa: BLE001 - lazy/deprecated attributes may raise anything
            return None


def shared_names() -> dict[str, str]:
    """``{optax public path: gradtx path}`` for every name present at the same place in both."""
    out = {}
    for opt_ns, gtx_ns, prefix in _public_places():
        for name in sorted(dir(opt_ns)):
            if name.startswith("_") or not _routable(_safe_getattr(opt_ns, name)):
                continue
            if _routable(_safe_getattr(gtx_ns, name)):
                out[f"{opt_ns.__name__}.{name}"] = prefix + name
    return out


def _routable(value: Any) -> bool:
    """Objects a test can call or instantiate; typing aliases (``Schedule``) and modules are not."""
    if value is None or isinstance(value, types.ModuleType):
        return False
    if type(value).__module__ in (
        "typing",
        "types",
        "collections.abc",
        "_collections_abc",
    ) and not inspect.isfunction(value):
        return False
    return callable(value)


def _resolve(module: types.ModuleType, name: str) -> tuple[Any, str] | None:
    """gradtx's object and path for ``module.name`` if the name is shared, else None."""
    if name.startswith("_"):
        return None
    value = _safe_getattr(module, name)
    if not _routable(value):
        return None
    places = _public_places()
    if module.__name__.startswith("optax.schedules"):
        places.reverse()  # a schedule module's names are gradtx.schedules's first
    for opt_ns, gtx_ns, prefix in places:
        if _safe_getattr(opt_ns, name) is not value:
            continue
        target = _safe_getattr(gtx_ns, name)
        if _routable(target):
            return target, prefix + name
    return None


def _recording(path: str, fn: Any) -> Any:
    """``fn`` wrapped so that calling it marks ``path`` as touched by the running test."""
    key = f"{path}@{id(fn)}"
    if key not in _wrapped:

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _current is not None:
                _current.add(path)
            return fn(*args, **kwargs)

        _wrapped[key] = wrapper
    return _wrapped[key]


class _RoutingModule(types.ModuleType):
    """A module proxy: shared names resolve to gradtx, everything else to optax."""

    def __init__(self, real: types.ModuleType):
        super().__init__(real.__name__, real.__doc__)
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str) -> Any:
        real = object.__getattribute__(self, "_real")
        hit = _resolve(real, name)
        if hit is None:
            value = getattr(real, name)
            if isinstance(value, types.ModuleType) and value.__name__.startswith("optax"):
                return _proxy(value)
            return value
        target, path = hit
        if _current is not None:
            _current.add(path)
            return target
        # Looked up at import time (e.g. a parameterized argument): record on call instead.
        if callable(target) and not inspect.isclass(target):
            return _recording(path, target)
        return target

    def __dir__(self) -> list[str]:
        return dir(object.__getattribute__(self, "_real"))


def _proxy(module: types.ModuleType) -> types.ModuleType:
    if module.__name__ not in _proxies:
        _proxies[module.__name__] = _RoutingModule(module)
    return _proxies[module.__name__]


def install(namespace: dict[str, Any]) -> None:
    """Replace every optax module in a test module's globals by its routing proxy."""
    for key, value in list(namespace.items()):
        if (
            isinstance(value, types.ModuleType)
            and not isinstance(value, _RoutingModule)
            and (value.__name__ == "optax" or value.__name__.startswith("optax."))
        ):
            namespace[key] = _proxy(value)


# pytest hooks --------------------------------------------------------------------------------

_cases: dict[str, dict[str, Any]] = {}


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    """Keep this subprocess's shard (every n-th case) and record what it will run."""
    index, _, count = os.environ.get(_SHARD_ENV, "0/1").partition("/")
    i, n = int(index), int(count)
    if n > 1:
        keep = [item for j, item in enumerate(items) if j % n == i]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
    path = os.environ.get(_RECORD_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"collected": [item.nodeid for item in items]}) + "\n")


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    global _current
    _current = set()
    _cases[nodeid] = {"id": nodeid, "phases": {}, "error": None}


def pytest_runtest_makereport(item: Any, call: Any) -> None:
    case = _cases.get(item.nodeid)
    if case is None:
        return
    if "params" not in case:  # absl's parameterized keeps the arguments' repr on the method
        params = getattr(getattr(item, "obj", None), "__x_params_repr__", None)
        case["params"] = str(params)[:300] if params else None
    if call.excinfo is None or case["error"] is not None:
        return
    if call.excinfo.errisinstance(BaseException) and call.excinfo.typename != "Skipped":
        value = call.excinfo.value
        case["error"] = {
            "type": type(value).__name__,
            "message": _first_line(str(value))[:500],
            "phase": call.when,
        }


def pytest_runtest_logreport(report: Any) -> None:
    case = _cases.get(report.nodeid)
    if case is None:
        return
    # Subtest reports (pytest >= 9) arrive here too; a failed one marks the case failed.
    previous = case["phases"].get(report.when)
    if previous != "failed":
        case["phases"][report.when] = report.outcome
    if report.failed and case["error"] is None:
        text = str(report.longrepr) if report.longrepr is not None else ""
        lines = [ln for ln in text.splitlines() if ln.startswith("E ")]
        message = lines[0][1:].strip() if lines else _first_line(text)
        etype, _, rest = message.partition(": ")
        if not re.fullmatch(r"[A-Za-z_][\w.]*", etype):
            etype, rest = "Failure", message
        case["error"] = {
            "type": etype.rsplit(".", 1)[-1],
            "message": rest[:500],
            "phase": report.when,
        }


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    global _current
    case = _cases.pop(nodeid, None)
    names, _current = sorted(_current or ()), None
    if case is None:
        return
    phases = case.pop("phases")
    if "failed" in phases.values():
        outcome = "failed"
    elif "skipped" in phases.values():
        outcome = "skipped"
    else:
        outcome = "passed"
    case.update(outcome=outcome, names=names)
    if outcome != "failed":
        case["error"] = None
    path = os.environ.get(_RECORD_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(case) + "\n")


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _rewrite(source: str) -> str:
    """Insert the proxy-installing line after every top-level import of the test module."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    ends = [n.end_lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    for end in sorted({e for e in ends if e is not None}, reverse=True):
        lines.insert(end, _INSTALL_LINE + "\n")
    return "".join(lines)


def normalise(message: str, limit: int = 160) -> str:
    """One failure cause per message shape: numbers, addresses and arrays blanked."""
    text = re.sub(r"0x[0-9a-fA-F]+", "0x…", message)
    text = re.sub(r"\[[-+0-9.eE, \n]+\]", "[…]", text)
    text = re.sub(r"(?<![\w.])[-+]?\d+(\.\d*)?([eE][-+]?\d+)?(?![\w])", "N", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:limit]


_QUOTED_ID = r"'[A-Za-z_][\w.]{0,40}'"


def family(cause: str, limit: int = 120) -> str:
    """A coarser cause: gradtx and function names, quoted text and leaf paths blanked."""
    text = re.sub(r"gradtx(\.\w+)+", "gradtx.*", cause)
    text = re.sub(r"\b\w+\(\) got an", "…() got an", text)
    # Quoted identifiers ('mu_dtype') stay; quoted text (reprs, paths) is blanked.
    text = re.sub(r"'[^']*'", lambda m: m[0] if re.fullmatch(_QUOTED_ID, m[0]) else "'…'", text)
    text = re.sub(r"at <root>|at \S+,", "at …", text)
    return text[:limit]


_live: set[subprocess.Popen[str]] = set()  # running pytest subprocesses, killed on interrupt


def _run_file(
    rel: str,
    work: Path,
    timeout: float,
    kexpr: str | None,
    shard: tuple[int, int],
    cache: str | None = None,
) -> dict[str, Any]:
    """One pytest subprocess over (one shard of) a copied test file; its cases as dicts."""
    dst = work / Path(rel).name
    record = work / f"{dst.stem}.{shard[0]}of{shard[1]}.jsonl"
    env = dict(os.environ)
    env[_RECORD_ENV] = str(record)
    env[_SHARD_ENV] = f"{shard[0]}/{shard[1]}"
    env["PYTHONPATH"] = str(work / "src")  # the gradtx snapshot and this plugin, nothing else
    env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
           "-p", "no:randomly", "-p", "optax_suite", "-c", str(work / "pytest.ini"),
           "--rootdir", str(work), "--tb=line", str(dst)]  # fmt: skip
    if kexpr:
        cmd += ["-k", kexpr]
    if cache:
        # A persistent compilation cache makes a rerun spend its time in tests, not in XLA.
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    start = time.monotonic()
    timed_out = False
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _live.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, _ = proc.communicate()
    finally:
        _live.discard(proc)
    rc, tail = (None if timed_out else proc.returncode), (out or "")[-3000:]
    seconds = time.monotonic() - start
    cases, collected = [], []
    if record.exists():
        for line in record.read_text(encoding="utf-8").splitlines():
            case = json.loads(line)
            if "collected" in case:
                collected = [rel + "::" + i.split("::", 1)[-1] for i in case["collected"]]
                continue
            case["file"] = rel
            case["id"] = rel + "::" + case["id"].split("::", 1)[-1]
            cases.append(case)
    done = {c["id"] for c in cases}
    return {
        "file": rel,
        "shard": f"{shard[0]}/{shard[1]}",
        "rc": rc,
        "timed_out": timed_out,
        "seconds": round(seconds, 1),
        "tail": tail if (timed_out or rc not in (0, 1, 5)) else "",
        "not_run": [i for i in collected if i not in done],
        "cases": cases,
    }


_COUNTS = ("total", "routed", "routed_passed", "routed_failed", "routed_skipped",
           "unrouted_passed", "unrouted_failed", "unrouted_skipped", "not_run")  # fmt: skip


def _summarise(runs: list[dict[str, Any]], names: dict[str, str], meta: dict) -> dict[str, Any]:
    """Per-file table (shards merged), failure causes over routed cases, and totals."""
    table: dict[str, dict[str, Any]] = {}
    causes: dict[str, list[str]] = collections.defaultdict(list)
    families: dict[str, list[str]] = collections.defaultdict(list)
    cases = []
    for run in runs:
        row = table.setdefault(
            run["file"],
            {**dict.fromkeys(_COUNTS, 0), "seconds": 0.0, "shards": 0, "rc": [],
             "timed_out": False, "tail": "", "not_run_ids": []},
        )  # fmt: skip
        row["seconds"] = round(row["seconds"] + run["seconds"], 1)
        row["shards"] += 1
        row["rc"].append(run["rc"])
        row["timed_out"] = row["timed_out"] or run["timed_out"]
        row["tail"] += run["tail"]
        row["not_run"] += len(run.get("not_run", ()))
        row["not_run_ids"] += run.get("not_run", [])
        for case in run["cases"]:
            routed = bool(case["names"])
            row["total"] += 1
            row[("routed_" if routed else "unrouted_") + case["outcome"]] += 1
            if routed:
                row["routed"] += 1
            if routed and case["outcome"] == "failed":
                err = case["error"] or {"type": "Unknown", "message": ""}
                full = f"{err['type']}: {normalise(err['message'], 10_000)}"
                causes[full[:160]].append(case["id"])
                families[family(full)].append(case["id"])
            cases.append(case)
    totals_d: dict[str, Any] = {k: sum(row[k] for row in table.values()) for k in _COUNTS}
    ran = totals_d["routed_passed"] + totals_d["routed_failed"]
    totals_d["routed_pass_rate"] = round(totals_d["routed_passed"] / ran, 4) if ran else None
    touched = collections.Counter(n for c in cases for n in c["names"])
    params = {c["id"]: (c.get("params") or "")[:120] for c in cases}
    return {
        "meta": meta,
        "shared_names": names,
        "totals": totals_d,
        "files": table,
        "causes": [
            {
                "cause": cause,
                "count": len(ids),
                "tests": ids,
                "examples": [f"{i} {params[i]}" if params.get(i) else i for i in ids[:3]],
            }
            for cause, ids in sorted(causes.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ],
        "cause_families": [
            {"family": fam, "count": len(ids), "tests": ids}
            for fam, ids in sorted(families.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ],
        "names_touched": dict(touched.most_common()),
        "cases": cases,
    }


def _markdown(result: dict[str, Any]) -> str:
    meta, totals = result["meta"], result["totals"]
    out = [
        "## Results",
        "",
        f"Run {meta['date']} (gradtx {meta['gradtx']}, optax {meta['optax']}, "
        f"{meta['seconds']:.0f} s). Shared names routed: {len(result['shared_names'])}.",
        "",
        f"**Routed cases: {totals.get('routed', 0)}: {totals.get('routed_passed', 0)} passed, "
        f"{totals.get('routed_failed', 0)} failed, {totals.get('routed_skipped', 0)} skipped** "
        f"(pass rate over passed+failed: {totals['routed_pass_rate']}). "
        f"All cases: {totals.get('total', 0)}.",
        "",
        "| file | cases | routed | passed | failed | skipped | not run | s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["files"].items():
        flag = " (timed out)" if row["timed_out"] else ""
        out.append(
            f"| `{name}`{flag} | {row['total']} | {row['routed']} | {row['routed_passed']} | "
            f"{row['routed_failed']} | {row['routed_skipped']} | {row.get('not_run', 0)} | "
            f"{row['seconds']:.0f} |"
        )
    out += ["", "### Failures by cause family (gradtx names and quoted text blanked)", ""]
    for group in result["cause_families"]:
        cause = group["family"].replace("|", "\\|")
        out.append(f"- **{group['count']}** · `{cause}`")
    out += ["", "### Failures by cause", ""]
    for group in result["causes"]:
        examples = ", ".join(f"`{t}`" for t in group.get("examples", group["tests"][:3]))
        cause = group["cause"].replace("|", "\\|")
        out.append(f"- **{group['count']}** · `{cause}` · e.g. {examples}")
    return "\n".join(out) + "\n"


_START, _END = "<!-- optax_suite:results:start -->", "<!-- optax_suite:results:end -->"


def _write_markdown(path: Path, section: str) -> None:
    """Replace the text between the result markers of ``path`` (or write a new file)."""
    block = f"{_START}\n{section}{_END}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if _START in text and _END in text:
        head, rest = text.split(_START, 1)
        text = head + block + rest.split(_END, 1)[1].lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block
    path.write_text(text, encoding="utf-8")


def _snapshot(which: str, dest: Path) -> str:
    """Copy gradtx (the working tree's, or a git revision's) into ``dest``; return its name.

    The whole run then measures one fixed gradtx even while the working tree is being edited.
    """
    dest.mkdir(parents=True)
    shutil.copy2(Path(__file__), dest / "optax_suite.py")
    if which == "worktree":
        shutil.copytree(
            REPO / "gradtx", dest / "gradtx", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        rev = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "gradtx")
        name = f"worktree@{rev}" + ("+dirty" if dirty else "")
    else:
        rev = _git("rev-parse", "--short", which)
        archive = subprocess.run(
            ["git", "archive", rev, "gradtx"], cwd=REPO, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        name = f"git {rev}"
    probe = subprocess.run(
        [sys.executable, "-c", "import gradtx, gradtx.schedules; print(gradtx.__file__)"],
        cwd=dest,
        env={**os.environ, "PYTHONPATH": str(dest)},
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or not probe.stdout.strip().startswith(str(dest)):
        raise RuntimeError(f"gradtx snapshot ({name}) does not import:\n{probe.stderr[-2000:]}")
    return name


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/optax_suite.json", help="JSON results file")
    parser.add_argument(
        "--files",
        nargs="*",
        default=None,
        help="test files relative to the optax package (default: issue #9's set;"
        " 'all' for every *_test.py)",
    )
    parser.add_argument(
        "--timeout", type=float, default=480.0, help="seconds per pytest subprocess (file shard)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="pytest subprocesses at a time")
    parser.add_argument(
        "--shard",
        action="append",
        default=[],
        metavar="FILE=N",
        help=f"split FILE into N subprocesses (default: {DEFAULT_SHARDS})",
    )
    parser.add_argument("-k", dest="kexpr", default=None, help="pytest -k expression")
    parser.add_argument(
        "--markdown", default=None, help="also write the results section (markdown) to this file"
    )
    parser.add_argument(
        "--gradtx",
        default="worktree",
        help="gradtx to measure: 'worktree' (a copy taken at start) or a git revision such as HEAD",
    )
    parser.add_argument(
        "--jax-cache",
        default=str(REPO / "runs" / ".jax_cache"),
        help="persistent XLA compilation cache shared by runs (results do not depend on it)",
    )
    parser.add_argument("--no-jax-cache", action="store_true", help="compile everything afresh")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--from-json", default=None, help="regroup this earlier result instead of running"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        return _rerun_summary(args)
    args.shards = dict(DEFAULT_SHARDS)
    for spec in args.shard:
        rel, _, n = spec.partition("=")
        args.shards[rel] = int(n)

    import optax

    optax_dir = Path(optax.__file__).parent
    if args.files == ["all"]:
        files = sorted(str(p.relative_to(optax_dir)) for p in optax_dir.rglob("*_test.py"))
    else:
        files = list(args.files or DEFAULT_FILES)

    work = Path(tempfile.mkdtemp(prefix="optax_suite_"))
    try:
        source = _snapshot(args.gradtx, work / "src")
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(work / "src"))
    names = shared_names()
    (work / "pytest.ini").write_text(
        "[pytest]\npython_files = *_test.py\naddopts = -p no:cacheprovider\n", encoding="utf-8"
    )
    jobs = []
    for rel in files:
        src = optax_dir / rel
        (work / src.name).write_text(_rewrite(src.read_text(encoding="utf-8")), encoding="utf-8")
        n = args.shards.get(rel, 1)
        jobs += [(rel, (i, n)) for i in range(n)]
    # Longest first: alias_test's shards, then the schedule file, then the rest.
    jobs.sort(key=lambda job: (job[0] not in args.shards, job[0] != DEFAULT_FILES[8]))
    cache = None if args.no_jax_cache else str(Path(args.jax_cache).resolve())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.monotonic()
    runs = []
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [
                pool.submit(_run_file, rel, work, args.timeout, args.kexpr, shard, cache)
                for rel, shard in jobs
            ]
            try:
                for future in concurrent.futures.as_completed(futures):
                    run = future.result()
                    routed = [c for c in run["cases"] if c["names"]]
                    fails = sum(c["outcome"] == "failed" for c in routed)
                    print(
                        f"{run['file']} [{run['shard']}]: {len(run['cases'])} cases,"
                        f" {len(routed)} routed, {fails} routed failed, {run['seconds']:.0f} s"
                        + (
                            f" TIMED OUT ({len(run['not_run'])} not run)"
                            if run["timed_out"]
                            else ""
                        ),
                        flush=True,
                    )
                    runs.append(run)
            except BaseException:  # Ctrl-C or SIGTERM: stop the subprocesses, then re-raise
                for future in futures:
                    future.cancel()
                for proc in list(_live):
                    proc.kill()
                raise
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    runs.sort(key=lambda run: (files.index(run["file"]), run["shard"]))
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "optax": optax.__version__,
        "gradtx": source,
        "python": sys.version.split()[0],
        "jax": importlib.import_module("jax").__version__,
        "seconds": round(time.monotonic() - start, 1),
        "files": files,
        "shards": args.shards,
        "jobs": args.jobs,
        "jax_cache": cache,
        "k": args.kexpr,
    }
    return _report(_summarise(runs, names, meta), args)


def _rerun_summary(args: argparse.Namespace) -> int:
    """Regroup an earlier JSON result (e.g. after changing the cause normalisation)."""
    old = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
    runs = []
    for rel, row in old["files"].items():
        cases = [c for c in old["cases"] if c["file"] == rel]
        runs.append({**{k: row[k] for k in ("seconds", "rc", "timed_out", "tail")},
                     "file": rel, "cases": cases})  # fmt: skip
    return _report(_summarise(runs, old["shared_names"], old["meta"]), args)


def _report(result: dict[str, Any], args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    t = result["totals"]
    print(
        f"routed {t.get('routed', 0)}: {t.get('routed_passed', 0)} passed, "
        f"{t.get('routed_failed', 0)} failed, {t.get('routed_skipped', 0)} skipped "
        f"(of {t.get('total', 0)} cases) -> {out}"
    )
    for group in result["cause_families"][:15]:
        print(f"  {group['count']:4d}  {group['family']}")
    if args.markdown:
        _write_markdown(Path(args.markdown), _markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
