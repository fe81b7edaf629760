"""Runs the conformance kit over every public transformation and writes a JSON summary.

Usage (from the repository root)::

    python tools/run_kit.py                      # all cases, all checks, summary on stdout
    python tools/run_kit.py --out runs/kit.json  # also write the JSON summary
    python tools/run_kit.py --only adam sgd --checks jit dtypes

The cases are those of ``tests/kit_cases.py`` (the table ``tests/test_conformance.py`` checks
for completeness). Unlike the test, a failure does not stop the run: every case is run and its
failure recorded. Both tiers count: a case with an advisory miss has status ``"advisory"`` and
counts as failed (gradtx holds itself to both), unless ``--required-only`` is given. The summary
holds the versions of Python, JAX, jaxlib, NumPy and gradtx, the backend and its devices, and per
case the checks passed and skipped (with reasons), the advisory misses (with reasons), the
required failure if any (check, tier, reason), and the wall time. The exit status is 1 if any
case failed.

On a CPU the kit gets ``--cpu-devices`` (default 8) devices for the sharding check; on a single
accelerator the sharding check is skipped with its reason recorded. The strict settings of the
test suite (``jax_numpy_dtype_promotion=strict``, ``jax_numpy_rank_promotion=raise``) are on
unless ``--standard-promotion`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the JSON summary here")
    p.add_argument("--only", nargs="*", help="case ids to run (default: all)")
    p.add_argument("--checks", nargs="*", help="checks to run (default: all)")
    p.add_argument("--cpu-devices", type=int, default=8, help="CPU devices (default 8)")
    p.add_argument("--standard-promotion", action="store_true", help="not the strict settings")
    p.add_argument(
        "--required-only", action="store_true", help="advisory misses do not fail a case"
    )
    return p.parse_args(argv)


def _versions() -> dict[str, str]:
    import jax  # noqa: PLC0415
    import jaxlib  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    import gradtx  # noqa: PLC0415

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "gradtx": gradtx.__version__,
        "platform": platform.platform(),
    }


def _device() -> dict[str, Any]:
    import jax  # noqa: PLC0415

    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "count": len(devices),
        "kind": devices[0].device_kind,
        "devices": [str(d) for d in devices],
    }


def run(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import jax  # noqa: PLC0415

    jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before the backend starts
    if not args.standard_promotion:
        jax.config.update("jax_numpy_dtype_promotion", "strict")
        jax.config.update("jax_numpy_rank_promotion", "raise")

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from kit_cases import CASES, KIT_ARGS  # noqa: PLC0415

    from gradtx.testing import CHECKS, CheckFailure, check_transformation  # noqa: PLC0415

    cases = [(i, m) for i, m in CASES if not args.only or i in args.only]
    unknown = sorted(set(args.only or ()) - {i for i, _ in CASES})
    if unknown:
        print(f"unknown case ids: {unknown}", file=sys.stderr)
        return 2
    checks = args.checks or list(CHECKS)
    summary: dict[str, Any] = {
        "versions": _versions(),
        "device": _device(),
        "settings": {
            "checks": checks,
            "strict_promotion": not args.standard_promotion,
            "required_only": args.required_only,
            "cpu_devices": args.cpu_devices,
            "env": {k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_"))},
        },
        "cases": {},
    }
    print(f"{len(cases)} cases on {summary['device']['kind']} ({summary['device']['backend']})")
    failed = 0
    t_all = time.perf_counter()
    for case_id, make in cases:
        t0 = time.perf_counter()
        entry: dict[str, Any] = {}
        try:
            report = check_transformation(make(), checks=checks, **KIT_ARGS.get(case_id, {}))
            missed = bool(report.misses) and not args.required_only
            failed += int(missed)
            entry.update(
                status="advisory" if missed else "passed",
                passed=report.passed,
                skipped=report.skipped,
                misses=report.misses,
            )
        except CheckFailure as e:
            failed += 1
            entry.update(status="failed", check=e.check, tier=e.tier, reason=e.reason)
        except Exception as e:  # noqa: BLE001  (a bug in the kit or the factory: record it)
            failed += 1
            entry.update(status="error", error=f"{type(e).__name__}: {e}")
            entry["traceback"] = traceback.format_exc(limit=8)
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        summary["cases"][case_id] = entry
        note = entry.get("reason") or entry.get("error") or ""
        if entry.get("misses"):
            note = "; ".join(f"{k}: {v[:120]}" for k, v in entry["misses"].items())
        skipped = f" skipped={sorted(entry.get('skipped', {}))}" if entry.get("skipped") else ""
        print(f"  {case_id:30s} {entry['status']:8s} {entry['seconds']:7.2f}s{skipped} {note}")
        if args.out:  # written after every case, so a run cut short still leaves its results
            _write(args.out, summary)
    summary["total_seconds"] = round(time.perf_counter() - t_all, 3)
    summary["failed"] = failed
    print(f"{len(cases) - failed}/{len(cases)} passed in {summary['total_seconds']:.1f}s")
    if args.out:
        _write(args.out, summary)
        print(f"summary written to {args.out}")
    return 1 if failed else 0


def _write(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")


if __name__ == "__main__":
    sys.exit(run())
