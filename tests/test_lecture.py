"""The lecture lab (examples/lecture.py --quick): the qualitative facts of its summary.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
    import gradtx
    from gradtx import _alias, _alias_more

    rows = {r["name"]: r for r in lab[1]["knobs"]}
    assert set(_alias.__all__) | set(_alias_more.__all__) <= set(rows)
    for name, row in rows.items():
        assert isinstance(getattr(gradtx, name)(1e-3), gradtx.Optimizer)
        assert {"g", "sigma", "eta"} <= set(row), row
    assert "Adam" in rows["adam"]["sigma"] and "EMA" in rows["adam"]["g"]
    assert rows["sgd"]["sigma"].startswith("none") and rows["sgd"]["before"] == []
