"""Measurement of compressed models: accuracy, packed size, latency, MACs."""

from __future__ import annotations

from .latency import LatencyConfig
from .measure import measure
from .measurement import LayerStats, Measurement
from .packing import load_packed, save_packed

__all__ = ["LatencyConfig", "LayerStats", "Measurement", "load_packed", "measure", "save_packed"]
