"""The lecture lab: the narrow valley, the burst, the plateau, the knob table.

    python examples/lecture.py --out runs/lecture          # full run (under a minute, 2 cores)
    python examples/lecture.py --out /tmp/lab --quick      # reduced sizes (the test)

Writes PNG figures and ``summary.json`` (the qualitative facts as booleans and numbers) to
``--out`` and prints the knob table. No download: the network part uses scikit-learn's bundled
digits. See docs/three_knobs.md for the reasoning.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lecture_lab import knobs_table, plateau, plots, valley  # noqa: E402


def _jsonable(x: Any) -> Any:
    """Plain JSON: numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, default=Path("runs/lecture"), help="output folder")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (for the test)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    t0 = time.perf_counter()

    prob = valley.Valley()
    lab = valley.Lab(steps=50_000 if args.quick else 100_000)
    v_summary, v_recs = valley.run_lab(prob, lab, progress)

    cfg = plateau.Plateau(steps=4_000, decay_at=3_000) if args.quick else plateau.Plateau()
    p_rec = plateau.train(cfg, progress)
    p_summary = plateau.summarize(cfg, p_rec)

    rows = knobs_table.knob_table()
    print(knobs_table.format_table(rows))

    figures = [
        plots.valley_trajectories(prob, v_recs, v_summary, args.out),
        plots.valley_curves(prob, v_recs, args.out),
        plots.valley_burst(prob, v_recs, args.out),
        plots.valley_step_sizes(prob, v_recs, args.out),
        plots.plateau(p_rec, p_summary, args.out),
    ]
    summary = {
        "quick": args.quick,
        "valley": v_summary,
        "plateau": p_summary,
        "knobs": rows,
        "figures": [Path(f).name for f in figures],
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    summary = _jsonable(summary)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    _report(summary)
    print(
        f"wrote {args.out / 'summary.json'} and {len(figures)} figures "
        f"in {summary['wall_time_s']} s"
    )
    return summary


def _report(s: dict[str, Any]) -> None:
    v, p = s["valley"], s["plateau"]
    print(f"\nNarrow valley, condition number {v['problem']['condition_number']:.0e}:")
    big, small = v["gd_large_lr"], v["gd_small_lr"]
    print(f"  GD η > 2/b: diverged or oscillating = {big['diverged_or_oscillating']}")
    print(f"  GD η < 2/b: distance after {v['steps']} steps = {small['final_distance']:.4g}")
    for name in (
        "adagrad_rms",
        "adagrad_sum",
        "rmsprop",
        "adam",
        "with_decay",
        "with_warmup",
        "with_cosine_decay",
    ):
        r = v[name]
        b = r["burst"]
        print(
            f"  {name:18s} steps to tol {r['steps_to_tolerance']}, max excursion "
            f"{b['max_excursion']:.3g} at step {b['step']}, bursts {b['n_bursts']}"
        )
    print(
        f"Plateau: loss change {100 * p['loss_relative_change']:.1f}% while |grad| "
        f"~{p['grad_norm_window_mean']:.3f} (min {p['grad_norm_window_min']:.3f}); "
        f"after η/10: loss {p['after_decay_loss']:.4f}, |grad| "
        f"{p['after_decay_grad_norm_mean']:.3f}"
    )


if __name__ == "__main__":
    main()
