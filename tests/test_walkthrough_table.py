"""The walk-through's table says how each weight is stored."""

from __future__ import annotations

from autoshrink.measure import Measurement
from autoshrink.measure.measurement import LayerStats
from autoshrink.walkthrough import Row, format_table


def _m(acc: float, size: int, layers: tuple = ()) -> Measurement:
    return Measurement(
        accuracy=acc, size_bytes=size, latency_ms=1.0, macs=10, device="cpu", threads=1, batch_size=1, layers=layers
    )


def test_each_policy_lists_its_weights_layout_streams_and_bytes() -> None:
    layers = (
        LayerStats("fc1.weight", (8, 4), 32, 3, 4, "relidx (gaps: entropy, values: fixed)", 12),
        LayerStats("fc2.weight", (2, 8), 16, 16, 8, "dense", 20),
    )
    text = format_table(Row("baseline", _m(0.9, 1000), 0.0), [Row("int4 sparse", _m(0.89, 100, layers), 1.0)])
    assert (
        "  int4 sparse: fc1.weight relidx (gaps: entropy, values: fixed) 12 B; fc2.weight dense 20 B"
        in text.splitlines()
    )
