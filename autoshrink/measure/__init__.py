"""Measurement of compressed models: accuracy, packed size, latency, MACs."""

from __future__ import annotations

from .latency import LatencyConfig
from .measure import measure, score_held_out, time_runtimes
from .measurement import HeldOut, LayerStats, Measurement, RuntimeTiming
from .packing import load_packed, save_packed

__all__ = [
    "HeldOut",
    "LatencyConfig",
    "LayerStats",
    "Measurement",
    "RuntimeTiming",
    "load_packed",
    "measure",
    "save_packed",
    "score_held_out",
    "time_runtimes",
]
