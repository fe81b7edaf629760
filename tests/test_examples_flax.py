"""The flax examples, run in-process with ``--quick``: accuracy, JSON and PNG outputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("flax")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"_gradtx_example_{name}", EXAMPLES / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flax_nnx_digits_quick(tmp_path):
    example = _load("flax_nnx_digits")
    results = example.main(["--quick", "--no-progress", "--out", str(tmp_path)])

    assert results["main"]["optimizer"] == "adamw"
    assert results["main"]["test_accuracy"] >= 0.93  # full mode reaches >= 0.97
    names = [r["optimizer"] for r in results["comparison"]]
    assert names == ["adamw", "sgd_momentum", "rmsprop", "lion"]
    for r in results["comparison"]:
        assert r["test_accuracy"] >= 0.85, r
        assert r["final_train_loss"] < 0.6, r
        # the live learning-rate change of the last epoch did not recompile the step
        assert r["traces"] == 1, r
        assert r["groups"] == ["default", "no_decay"], r
        assert r["halved_for_last_epoch"] == ["default.learning_rate", "no_decay.learning_rate"]

    assert _is_png(tmp_path / "loss_curves.png")
    assert _is_png(tmp_path / "diagnostics.png")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["main"]["test_accuracy"] == results["main"]["test_accuracy"]
    assert [r["optimizer"] for r in saved["comparison"]] == names
    assert "adamw" in saved["table"] and "lion" in saved["table"]


def test_flax_linen_trainstate_quick(tmp_path):
    example = _load("flax_linen_trainstate")
    results = example.main(["--quick", "--no-progress", "--out", str(tmp_path)])

    assert results["test_accuracy"] >= 0.90  # full mode reaches >= 0.97
    assert results["resume_bit_identical"] is True
    # live changes before the checkpoint: one program, and the checkpoint keeps them
    assert results["traces"] == 1
    assert results["restored_weight_decay"] == pytest.approx(2 * 1e-4)
    assert results["groups"] == ["default", "no_decay"]
    assert _is_png(tmp_path / "loss_curve.png")
    assert _is_png(tmp_path / "diagnostics.png")
    assert (tmp_path / "checkpoint_half.msgpack").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test_accuracy"] == results["test_accuracy"]
    assert saved["resume_bit_identical"] is True
