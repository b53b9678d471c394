"""Latency lookup table: each layer's latency per (layer, choice, runtime, device, batch), and the
sum rule that predicts a candidate's latency from it.

Where latency is an objective, every evaluation (untouched model: choice "none", pre-pass rows, trials)
also times each searched layer alone (measure/layer_latency.py) on the study's runtime; the table keeps
the latest MAX_OBSERVATIONS per key, uses their median, and is stored in the study ("latency_table").
Sum rule: predicted = the untouched model's latency + the sum over searched layers of (table[layer,
choice] - table[layer, "none"]); the rest of the model is taken as unchanged. Predictions are stored on
the trial ("latency_predicted_ms") and checked against the measurement (prediction_errors).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping

import pandas as pd

from ..policy import Policy
from .measurement import Measurement

MAX_OBSERVATIONS = 9
NONE = "none"


def choice_label(policy: Policy, layer: str) -> str:
    """The layer's choice in `policy` as a table key part: its LayerPolicy as sorted JSON, or "none"."""
    lp = policy.layers.get(layer)
    if lp is None or lp.is_identity:
        return NONE
    return json.dumps(lp.to_dict(), sort_keys=True, separators=(",", ":"))


def entry_key(layer: str, choice: str, runtime: str, device: str, batch: int) -> str:
    return json.dumps([layer, choice, runtime, device, int(batch)], separators=(",", ":"))


class LatencyTable:
    """Observations per key (see the module docstring); `observe` adds, `predict` applies the sum rule."""

    def __init__(self, entries: Mapping[str, list[float]] | None = None) -> None:
        self.entries: dict[str, list[float]] = {k: list(v) for k, v in (entries or {}).items()}

    def observe(self, policy: Policy, layer_ms: Mapping[str, float], runtime: str, device: str, batch: int) -> bool:
        """Add one evaluation's per-layer timings (ms by layer) of `policy`; False if it had none."""
        for layer, ms in layer_ms.items():
            key = entry_key(layer, choice_label(policy, layer), runtime, device, batch)
            self.entries[key] = (self.entries.get(key, []) + [float(ms)])[-MAX_OBSERVATIONS:]
        return bool(layer_ms)

    def ms(self, layer: str, choice: str, runtime: str, device: str, batch: int) -> float | None:
        obs = self.entries.get(entry_key(layer, choice, runtime, device, batch))
        return statistics.median(obs) if obs else None

    def predict(self, policy: Policy, baseline: Measurement, runtime: str) -> float | None:
        """The sum-rule latency of `policy` (ms) on the study's `runtime` and the baseline's device and
        batch; None where a layer's choice (or its "none" entry) has no observation yet."""
        layers = list(baseline.layer_latency_ms)
        if not layers:
            return None
        total = baseline.latency_ms
        for layer in layers:
            here = self.ms(layer, choice_label(policy, layer), runtime, baseline.device, baseline.batch_size)
            none = self.ms(layer, NONE, runtime, baseline.device, baseline.batch_size)
            if here is None or none is None:
                return None
            total += here - none
        return total

    def frame(self) -> pd.DataFrame:
        """One row per key: layer, choice, runtime, device, batch, latency_ms (median), observations."""
        rows = []
        for key, obs in self.entries.items():
            layer, choice, runtime, device, batch = json.loads(key)
            rows.append(
                {
                    "layer": layer,
                    "choice": choice,
                    "runtime": runtime,
                    "device": device,
                    "batch": batch,
                    "latency_ms": statistics.median(obs),
                    "observations": len(obs),
                }
            )
        cols = ["layer", "choice", "runtime", "device", "batch", "latency_ms", "observations"]
        return pd.DataFrame(rows, columns=cols).sort_values(["layer", "choice"], ignore_index=True)
