"""Latency lookup table: per-layer timings and the sum rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.measure import Measurement
from autoshrink.measure.latency_table import MAX_OBSERVATIONS, LatencyTable, choice_label, entry_key
from autoshrink.zoo import digits_task

L = ash.LayerPolicy


def _base(layer_ms: dict[str, float], total: float = 1.0) -> Measurement:
    return Measurement(
        accuracy=0.9,
        size_bytes=1000,
        latency_ms=total,
        macs=100,
        device="cpu",
        threads=1,
        batch_size=1,
        layer_latency_ms=layer_ms,
    )


def test_the_prediction_is_the_sum_rule_over_observed_medians() -> None:
    table = LatencyTable()
    base = _base({"fc1": 0.4, "fc2": 0.2})
    untouched = ash.Policy()
    assert table.observe(untouched, base.layer_latency_ms, "float", "cpu", 1)
    p = ash.Policy(layers={"fc1": L(bits=4), "fc2": L(sparsity=0.5)})
    table.observe(p, {"fc1": 0.10, "fc2": 0.15}, "float", "cpu", 1)
    table.observe(p, {"fc1": 0.30, "fc2": 0.15}, "float", "cpu", 1)
    table.observe(p, {"fc1": 0.12, "fc2": 0.15}, "float", "cpu", 1)
    # fc1: median of 0.10 / 0.30 / 0.12 = 0.12; 1.0 + (0.12 - 0.4) + (0.15 - 0.2) = 0.67
    assert table.predict(p, base, "float") == pytest.approx(0.67)
    assert table.predict(untouched, base, "float") == pytest.approx(1.0)
    assert table.predict(ash.Policy(layers={"fc1": L(bits=2)}), base, "float") is None  # fc1 at 2 bits: unseen
    assert table.predict(p, base, "onnxruntime") is None  # other runtime: other keys
    assert table.predict(p, _base({}), "float") is None  # no per-layer timings of the baseline
    assert not table.observe(p, {}, "float", "cpu", 1)
    for i in range(MAX_OBSERVATIONS + 3):
        table.observe(p, {"fc2": float(i)}, "float", "cpu", 1)
    key = entry_key("fc2", choice_label(p, "fc2"), "float", "cpu", 1)
    assert table.entries[key] == [float(i) for i in range(3, MAX_OBSERVATIONS + 3)]  # the latest ones kept
    frame = table.frame()
    assert list(frame.columns) == ["layer", "choice", "runtime", "device", "batch", "latency_ms", "observations"]
    assert len(frame) == 4 and set(frame.choice) == {"none", choice_label(p, "fc1"), choice_label(p, "fc2")}
    assert choice_label(ash.Policy(layers={"fc1": L()}), "fc1") == "none"  # an identity layer policy is untouched


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x.flatten(1)).relu())


FAST = ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0.0)


@pytest.mark.parametrize("runtime", ["float", "onnxruntime"])
def test_measure_times_each_named_layer_alone(runtime) -> None:
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = ash.apply_policy(Tiny(), ash.Policy(layers={"fc1": L(bits=8), "fc2": L(rank=0.5)}))
    cfg = ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0.0, layers=("fc1", "fc2", "missing"))
    m = ash.measure(model, digits_task(device="cpu"), runtime=runtime, latency=cfg)
    assert set(m.layer_latency_ms) == {"fc1", "fc2"} and all(v > 0 for v in m.layer_latency_ms.values())
    assert Measurement.from_dict(m.to_dict()).layer_latency_ms == m.layer_latency_ms
    assert ash.measure(model, digits_task(device="cpu"), runtime=runtime, latency=FAST).layer_latency_ms == {}
