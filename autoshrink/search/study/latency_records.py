"""The study's latency lookup table (measure/latency_table.py) and its predictions, as stored in Optuna.

The table lives in the study's user attribute "latency_table" (observations per key); each trial
predicted before it ran carries "latency_predicted_ms". `prediction_errors` sets those predictions
against the measured end-to-end latencies.
"""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd

from ...measure.latency_table import LatencyTable
from .schema import StudyAttr, TrialAttr

ATTR = StudyAttr.LATENCY_TABLE


def load_table(study: optuna.Study) -> LatencyTable:
    """The study's table (empty where latency is not an objective)."""
    return LatencyTable(study.user_attrs.get(ATTR) or {})


def save_table(study: optuna.Study, table: LatencyTable) -> None:
    study.set_user_attr(ATTR, table.entries)


def prediction_errors(study: optuna.Study) -> pd.DataFrame:
    """Predicted against measured latency of every trial that had a prediction: columns trial,
    fidelity ("full" or "screened"), predicted_ms, measured_ms, error (predicted / measured - 1)."""
    rows: list[dict[str, Any]] = []
    for t in study.get_trials(deepcopy=False):
        pred = t.user_attrs.get(TrialAttr.LATENCY_PREDICTED_MS)
        if pred is None:
            continue
        if TrialAttr.MEASUREMENT in t.user_attrs:
            m, fidelity = t.user_attrs[TrialAttr.MEASUREMENT], "full"
        elif "measurement" in (t.user_attrs.get(TrialAttr.SCREEN) or {}):
            m, fidelity = t.user_attrs[TrialAttr.SCREEN]["measurement"], "screened"
        else:
            continue
        rows.append(
            {
                "trial": t.number,
                "fidelity": fidelity,
                "predicted_ms": pred,
                "measured_ms": m["latency_ms"],
                "error": pred / m["latency_ms"] - 1 if m["latency_ms"] > 0 else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["trial", "fidelity", "predicted_ms", "measured_ms", "error"])
