"""A latency limit for a search: `search(max_latency_ms=...)`.

The limit is on the measured latency (`Measurement.latency_ms`), an Optuna constraint "latency" =
measured / limit - 1: a trial over it stays in the study but not in the front, `best()` or the refine
stage. A candidate that the lookup table's sum rule (measure/latency_table.py) predicts over the limit by
more than the error margin is not run: it is told PRUNED with a "skipped" attribute and counts towards
`n_trials`. Margin: SKIP_MARGIN until MIN_CHECKED predictions were checked in this study, then the larger
of it and their 90th percentile of |predicted / measured - 1|; so the table never decides a close call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna

from ...errors import ConfigError
from ..study.latency_records import prediction_errors
from ..study.schema import StudyAttr

SKIP_MARGIN = 0.5
MIN_CHECKED = 5
ATTR = StudyAttr.MAX_LATENCY_MS


def check_limit(value: Any, objectives: Sequence[str]) -> float | None:
    """`value` as a limit in ms (None: no limit); a ConfigError naming the fix otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"search: max_latency_ms={value!r}; use a latency in milliseconds > 0, or None.")
    if "latency" not in objectives:
        raise ConfigError(
            "search: max_latency_ms needs 'latency' among the objectives (the limit is checked on "
            "the measured latency, and the lookup table that predicts it is filled only then); add "
            "it, e.g. objectives=('accuracy', 'size', 'latency')."
        )
    return float(value)


def over_limit(latency_ms: float, limit: float | None) -> bool:
    """Whether a measured latency breaks the limit (None: no limit)."""
    return limit is not None and latency_ms > limit + 1e-12


def relative_excess(latency_ms: float, limit: float) -> float:
    """The Optuna constraint value: measured / limit - 1 (<= 0 within the limit)."""
    return latency_ms / limit - 1.0


def skip_margin(study: optuna.Study) -> float:
    """The relative margin a prediction must exceed the limit by to skip a candidate (module docstring)."""
    errors = prediction_errors(study)["error"].abs().dropna()
    if len(errors) < MIN_CHECKED:
        return SKIP_MARGIN
    return max(SKIP_MARGIN, float(errors.quantile(0.9)))


def skip_reason(predicted_ms: float | None, limit: float | None, margin: float) -> str | None:
    """Why a candidate predicted at `predicted_ms` is not run, or None where it runs."""
    if limit is None or predicted_ms is None or predicted_ms <= limit * (1 + margin):
        return None
    return (
        f"not run: predicted latency {predicted_ms:.4g} ms (lookup table, sum rule) is over the limit "
        f"max_latency_ms={limit:g} by more than the table's margin ({margin * 100:.0f} %)"
    )
