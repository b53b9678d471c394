"""Objectives: names users give, the Measurement field each reads, and its direction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..measure import Measurement
from .study.schema import TrialAttr


@dataclass(frozen=True)
class Objective:
    name: str  # what users write: accuracy, size, latency, macs
    field: str  # Measurement field and Optuna metric name
    maximize: bool
    hv_reference: float  # reference in normalized units (see normalized())

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    def value(self, m: Measurement) -> float:
        return float(getattr(m, self.field))

    def normalized(self, value: float, baseline: Measurement) -> float:
        """Minimization units relative to the baseline: accuracy -> drop (baseline - value, a
        fraction); size/latency/macs -> ratio to the baseline (1.0 = no gain)."""
        base = float(getattr(baseline, self.field))
        return base - value if self.maximize else value / base


# Hypervolume reference point (normalized units): a 5 pp accuracy drop, and 1.1x the baseline's
# size / latency / MACs. Points worse than it in any objective add no volume.
OBJECTIVES = {
    "accuracy": Objective("accuracy", "accuracy", True, 0.05),
    "size": Objective("size", "size_bytes", False, 1.1),
    "latency": Objective("latency", "latency_ms", False, 1.1),
    "macs": Objective("macs", "macs", False, 1.1),
}


def resolve(objectives: Sequence[str]) -> tuple[Objective, ...]:
    """Validate objective names (accuracy, size, latency, macs; aliases size_bytes, latency_ms)."""
    if isinstance(objectives, str):
        objectives = (objectives,)
    aliases = {"size_bytes": "size", "latency_ms": "latency"}
    out = []
    for name in objectives:
        key = aliases.get(name, name)
        if key not in OBJECTIVES:
            raise ConfigError(f"objectives: got {name!r}; use any of {', '.join(OBJECTIVES)}.")
        if OBJECTIVES[key] in out:
            raise ConfigError(f"objectives: {name!r} is given twice.")
        out.append(OBJECTIVES[key])
    if not out:
        raise ConfigError("objectives: empty; give at least one of " + ", ".join(OBJECTIVES) + ".")
    return tuple(out)


def replayable_values(objectives: Sequence[Objective]) -> Callable[[Any], list[float] | None]:
    """A finished trial's objective values as a sampling decision may use them: latency replaced by
    the trial's MACs (same direction), since a decision on a timing would not replay -- the same seed
    must give the same trials. None for a trial without a stored measurement."""
    use = [OBJECTIVES["macs"] if o.name == "latency" else o for o in objectives]

    def values(trial: Any) -> list[float] | None:
        stored = trial.user_attrs.get(TrialAttr.MEASUREMENT)
        if stored is None:
            return None
        m = Measurement.from_dict(stored)
        return [o.value(m) for o in use]

    return values
