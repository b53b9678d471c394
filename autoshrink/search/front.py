"""The feasible trials of a study and their Pareto front, under a run's constraints (read by the result,
the refine stage and the held-out stage alike)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna

from ..measure import Measurement
from .objectives import Objective
from .pareto import non_dominated
from .stages.latency_limit import over_limit
from .study.schema import TrialAttr


def feasible(
    study: optuna.Study, baseline: Measurement, max_drop: float | None, max_latency: float | None
) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials with a measurement within `max_drop` (a fraction) and `max_latency` (ms)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        m = t.user_attrs.get(TrialAttr.MEASUREMENT)
        if not m:
            continue
        if max_drop is not None and baseline.accuracy - m["accuracy"] > max_drop + 1e-12:
            continue
        if over_limit(m["latency_ms"], max_latency):
            continue
        out.append(t)
    return out


def normalized(
    trials: Sequence[optuna.trial.FrozenTrial], objectives: Sequence[Objective], baseline: Measurement
) -> np.ndarray:
    """The trials' objective values in normalized units (see Objective.normalized), one row each."""
    return np.array(
        [[o.normalized(v, baseline) for o, v in zip(objectives, t.values)] for t in trials], dtype=float
    ).reshape(len(trials), len(objectives))


def feasible_front(
    study: optuna.Study,
    baseline: Measurement,
    objectives: Sequence[Objective],
    max_drop: float | None,
    max_latency: float | None,
) -> list[optuna.trial.FrozenTrial]:
    """The feasible trials no other feasible trial dominates, in trial order."""
    ok = feasible(study, baseline, max_drop, max_latency)
    return [t for t, keep in zip(ok, non_dominated(normalized(ok, objectives, baseline))) if keep] if ok else []
