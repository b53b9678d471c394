from __future__ import annotations

import pytest

import autoshrink as ash
from autoshrink.zoo import digits_model, digits_task


def test_task_split_and_shapes() -> None:
    t = digits_task(deploy_batch=4, device="cpu")
    assert len(t.train_data) == 1437 and len(t.eval_data) == 360
    assert tuple(t.example_input.shape) == (4, 1, 8, 8)


def test_models_train_quickly_and_well(digits_cnn, digits_mlp, digits) -> None:
    lat = ash.LatencyConfig(warmup=1, min_repeats=2, min_seconds=0)
    assert ash.measure(digits_cnn, digits, latency=lat).accuracy >= 0.97
    assert ash.measure(digits_mlp, digits, latency=lat).accuracy >= 0.95
    assert sum(p.numel() for p in digits_cnn.parameters()) == 151498


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind='vit'"):
        digits_model("vit")
