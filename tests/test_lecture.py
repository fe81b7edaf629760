"""The lecture lab (examples/lecture.py --quick): the qualitative facts of its summary.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

LAB = Path(__file__).resolve().parents[1] / "examples" / "lecture.py"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    spec = importlib.util.spec_from_file_location("lecture_lab_main", LAB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("lecture")
    returned = module.main(["--quick", "--out", str(out), "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary == returned
    return out, summary


def test_figures_exist(lab):
    out, summary = lab
    assert len(summary["figures"]) >= 4
    for name in summary["figures"]:
        assert name.endswith(".png")
        assert (out / name).stat().st_size > 10_000


def test_gradient_descent_in_the_narrow_valley(lab):
    v = lab[1]["valley"]
    assert v["problem"]["condition_number"] >= 1e5
    big, small = v["gd_large_lr"], v["gd_small_lr"]
    assert big["diverged_or_oscillating"] and not big["converged"]
    assert not big["reached_tolerance"]
    assert not small["diverged_or_oscillating"] and not small["converged"]
    assert small["final_distance"] > 100 * v["problem"]["tolerance"]


@pytest.mark.parametrize("name", ["adagrad_rms", "adagrad_sum", "rmsprop", "adam"])
def test_adaptive_scales_reach_the_minimum(lab, name):
    r = lab[1]["valley"][name]
    assert r["reached_tolerance"]
    assert 0 < r["steps_to_tolerance"] < lab[1]["valley"]["steps"]


def test_burst_and_its_removal(lab):
    v = lab[1]["valley"]
    burst = v["adagrad_rms"]["burst"]
    assert burst["n_bursts"] >= 1
    assert burst["step"] > burst["turn_step"] + 1000  # well after the descent reached the floor
    assert v["adagrad_rms"]["stability"]["first_unstable_step"] is not None
    for fix in ("with_decay", "with_warmup"):
        assert v[fix]["burst"]["n_bursts"] == 0
        assert burst["max_excursion"] > 20 * v[fix]["burst"]["max_excursion"]
        assert v[fix]["stability"]["first_unstable_step"] is None
    assert v["burst_comparison"]["decay_and_warmup_remove_it"]
    # textbook Adagrad is the lecture's with η/√(t+1): no burst
    assert v["adagrad_sum"]["burst"]["n_bursts"] == 0
    assert v["textbook_adagrad_is_rms_with_root_decay"]["same"]
    # without gradient noise nothing seeds the instability: the floor stays exactly flat
    assert v["adagrad_rms_without_noise"]["n_bursts"] == 0


def test_plateau_is_not_a_critical_point(lab):
    p = lab[1]["plateau"]
    assert p["loss_relative_change"] < 0.1
    assert p["grad_norm_window_min"] > 0.02 * p["initial_grad_norm"]
    assert p["grad_norm_window_mean"] > 0.1 * p["initial_grad_norm"]
    assert p["first_order_decrease_promised"] > 100 * abs(p["loss_decrease_actual"])
    assert p["not_a_critical_point"] and p["decay_lowers_loss_and_grad_norm"]


def test_knob_table_lists_every_named_optimizer(lab):
    from helpers import named_optimizer_names

    import gradtx

    rows = {r["name"]: r for r in lab[1]["knobs"]}
    assert named_optimizer_names() <= set(rows)
    for name, row in rows.items():
        assert isinstance(getattr(gradtx, name)(1e-3), gradtx.Optimizer)
        assert {"g", "sigma", "eta"} <= set(row), row
    assert "Adam" in rows["adam"]["sigma"] and "EMA" in rows["adam"]["g"]
    assert rows["sgd"]["sigma"].startswith("none") and rows["sgd"]["before"] == []


# --- the figures on the docs site (docs/img/lecture/, made by tools/docs_figures.py) ----------

ROOT = LAB.parents[1]
DOCS_FIGURES = ROOT / "docs" / "img" / "lecture"


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_committed_figures_are_the_labs(lab):
    """docs/img/lecture/ holds exactly the PNGs the lab makes, at the same pixel sizes (the
    regenerated ones here are --quick: same figures, fewer steps), and the docs show each."""
    out, summary = lab
    committed = sorted(p.name for p in DOCS_FIGURES.glob("*.png"))
    assert committed == sorted(summary["figures"]), "run `python tools/docs_figures.py`"
    page = (ROOT / "docs" / "three_knobs.md").read_text("utf-8")
    for name in committed:
        assert _png_size(DOCS_FIGURES / name) == _png_size(out / name), name
        assert f"](img/lecture/{name})" in page, f"docs/three_knobs.md does not show {name}"
    spec = importlib.util.spec_from_file_location(
        "docs_figures", ROOT / "tools" / "docs_figures.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.DEST == DOCS_FIGURES and tool.LAB == LAB


@pytest.fixture(scope="module")
def plots_and_recs():
    """The lab's plotting module, and runs of every optimizer name made in NumPy: plain GD
    (y ← (1 − η b) y, x ← (1 − η a) x) with η = 2.2/b for the diverging run and 1.9/b for all
    others, enough for the figures' layout."""
    pytest.importorskip("matplotlib")
    import sys

    sys.path.insert(0, str(LAB.parent))
    try:
        from lecture_lab import plots, valley
    finally:
        sys.path.pop(0)
    prob = valley.Valley()
    t = np.arange(301.0)[:, None]
    recs = {}
    for name in plots.STYLE:
        eta = (2.2 if name == "gd_large_lr" else 1.9) / prob.b
        factors = np.array([1.0 - eta * prob.a, 1.0 - eta * prob.b])
        recs[name] = {"params": np.asarray(prob.start) * factors**t}
    summary = {"adagrad_rms": {"burst": {"first_burst": None, "max_excursion": None}}}
    return plots, prob, recs, summary


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_trajectory_figure_shows_the_gd_zigzag_and_no_legend_covers_data(plots_and_recs):
    import matplotlib.pyplot as plt

    plots, prob, recs, summary = plots_and_recs
    fig = plots.trajectory_figure(prob, recs, summary)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = fig.axes
        for ax in axes:
            legend = ax.get_legend()
            assert legend is not None
            box = legend.get_window_extent(renderer)
            for other in axes:  # outside every panel, so over no data
                assert not _overlaps(box, other.get_window_extent(renderer)), ax.get_title()
        zig = [a for a in axes if a.get_title().startswith("Plain GD")]
        assert len(zig) == 1
        ax = zig[0]
        (x_lo, x_hi), (y_lo, y_hi) = ax.get_xlim(), ax.get_ylim()
        line = next(ln for ln in ax.get_lines() if ln.get_label() == plots.STYLE["gd_small_lr"][0])
        x, y = line.get_data()
        assert len(y) >= 20 and np.all(np.sign(y[1:]) == -np.sign(y[:-1]))  # flips every step
        # the zigzag fills the panel: x spans most of the axis (x is magnified), y is visible
        assert np.ptp(x) > 0.5 * (x_hi - x_lo) and np.ptp(y) > 0.3 * (y_hi - y_lo)
    finally:
        plt.close(fig)


def test_curves_figure_shows_the_sign_flips_its_title_claims(plots_and_recs):
    import matplotlib.pyplot as plt

    plots, prob, recs, _ = plots_and_recs
    fig = plots.curves_figure(prob, recs)
    try:
        ax = fig.axes[2]
        assert "sign flips" in ax.get_title()
        assert ax.get_yscale() == "symlog"  # signed values on a log-like axis
        for name in ("gd_large_lr", "gd_small_lr"):
            line = next(ln for ln in ax.get_lines() if ln.get_label() == plots.STYLE[name][0])
            y = np.asarray(line.get_ydata())
            assert np.all(np.sign(y[1:]) == -np.sign(y[:-1])), name
    finally:
        plt.close(fig)


def test_diagnostics_eta_over_sigma_on_the_valley(lab):
    """gradtx.diagnostics' η/σ (min and max over the two coordinates) brackets the step the
    optimizer actually took up the wall, −u_y/g_y, for the optimizers without momentum; and
    Adagrad's σ makes the floor's step the larger one at the end."""
    _, summary = lab
    v = summary["valley"]
    checked = [
        n
        for n, s in v.items()
        if isinstance(s, dict) and "brackets_steep_step" in s.get("eta_over_sigma", {})
    ]
    assert "adagrad_rms" in checked and "rmsprop" in checked
    for name in checked:
        assert v[name]["eta_over_sigma"]["brackets_steep_step"], name
    e = v["adagrad_rms"]["eta_over_sigma"]
    assert e["floor_final"] > 10 * e["wall_final"]
