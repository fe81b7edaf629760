"""examples/custom_optimizer.py: a user-written σ knob and a user-written stage."""

import importlib.util
import pathlib
import sys

import jax.numpy as jnp
import pytest

import gradtx

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "custom_optimizer.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("custom_optimizer", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def result(example):
    return example.main()


def test_lp_scale_with_p2_is_adam(result):
    assert result["lp2_vs_adam_max_diff"] < 1e-6  # pow(v, 1/2) vs sqrt(v): float32 rounding
    assert "LpScale(b2=0.999, p=2.0" in result["lp_describe"]


def test_lp_adam_trains_and_p_is_traced(result):
    for p, loss in result["lp_final_loss"].items():
        assert loss < 1e-4 * result["initial_loss"], (p, loss)
    assert result["lp_traces"] == 1  # three values of p, one compilation


def test_spike_clip_stage(result):
    assert result["spikes_clipped"] == {"w": 2, "b": 2}  # the two corrupted batches
    assert result["spikes_clipped_clean"] == {"w": 0, "b": 0}
    assert result["spike_clip_final_loss"] < 1e-4 * result["initial_loss"]
    # Adam's second moment remembers an unclipped spike: it ends far worse (docs say so).
    assert result["spike_clip_final_loss"] < 0.1 * result["plain_adam_final_loss"]


def test_custom_classes_are_values(example):
    assert example.LpScale(0.99, 1.0) == example.LpScale(0.99, 1.0)
    assert hash(example.SpikeClip(3.0)) == hash(example.SpikeClip(3.0))
    with pytest.raises(ValueError, match=r"gradtx\.lp_scale: p must be > 0"):
        example.LpScale(p=0.0)
    tx = gradtx.chain(example.SpikeClip(), example.lp_adam(1e-3, p=1.0))
    state = tx.init({"w": jnp.ones(3, jnp.float32)})
    assert list(state) == ["spike_clip", "lp_adam"]
    assert state.spike_clip.spikes["w"].dtype == jnp.int32
    assert sorted(state.lp_adam.knobs) == ["count", "mu", "nu"]
