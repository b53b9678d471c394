"""Multi-fidelity: screen every candidate with a short fine-tune; only promising ones get the full one.

A candidate (every sampled or warm-start trial; the uniform baselines always run in full) is first
fine-tuned for round(SCREEN_SHARE * steps) steps (at least 1) with the same settings, and measured.
It is promoted to the full fine-tune when
- with `max_accuracy_drop`: its screened drop is within max_accuracy_drop + slack, the slack being
  max(SCREEN_SLACK, max_accuracy_drop) unless given, i.e. about twice the constraint -- a quarter of
  the steps leaves about twice the final drop (ccexam CNN: screened 1.05 / 1.35 / 1.65 / 2.45 pp ended
  at 0.35 / 0.70 / 1.05 / 1.25 pp after the full 300 steps). Measured on LeNet-300-100 / Fashion-MNIST
  (max 0.5 pp, 1,000 steps, 3 seeds, 44 promoted candidates): of those screened within 1.0 pp, 8 of 32
  ended beyond 0.5 pp; of those screened at 1.0-1.5 pp, 6 of 12 did. Candidates stopped here are not
  lost: the refine stage (refine.py) also takes screened-out policies whose screened drop is within
  REFINE_SCREEN_FACTOR times this limit, so an aggressive policy that needs a long fine-tune still
  gets one. The slack assumes that the rest of the fine-tune recovers accuracy; once the study has
  CALIBRATION_PAIRS promoted candidates with the same `distill` setting, the slack becomes what
  they actually recovered (the median of screened minus full drop), between 0 and the slack above
  (`calibrate=False` keeps it fixed). On the ccexam CNN (3k fine-tune images, 300 steps) the
  labels-only candidates recovered nothing (-0.35 to +0.05 pp: the screened drop was already the
  final one) and ended beyond the constraint when promoted at 0.55-0.9 pp; on LeNet-300-100 they
  recover more than the slack, so its limit stays;
- without one: no screened candidate so far beats it by more than `margin` (SCREEN_MARGIN) of
  accuracy while being at least as good in every other objective -- latency counted by its MACs,
  since a decision on a timing would not replay (the same seed gives the same trials).
Otherwise it is told PRUNED (Optuna's state for a trial stopped early): it stays in the study with
its screened measurement (user attribute "screen"), counts towards n_trials like any candidate,
and is never on the front. A promoted trial keeps both fidelities: "screen" and its full
"measurement". The full fine-tune starts from the compressed model again (it does not continue the
screen), so a recipe replays exactly the full run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...errors import ConfigError
from ...measure import Measurement
from ...train import FinetuneConfig
from ..objectives import OBJECTIVES, Objective

SCREEN_SHARE = 0.25
SCREEN_SLACK = 0.005  # the least slack (0.5 pp), for a tight or zero max_accuracy_drop
SCREEN_MARGIN = 0.01
CALIBRATION_PAIRS = 3  # promoted candidates of one distill setting before the slack is the measured recovery


@dataclass(frozen=True)
class Screening:
    """The multi-fidelity rule's settings (see the module docstring)."""

    share: float = SCREEN_SHARE
    slack: float | None = None  # None: max(SCREEN_SLACK, max_accuracy_drop)
    margin: float = SCREEN_MARGIN
    calibrate: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 < self.share < 1:
            raise ConfigError(f"search: screen share={self.share!r}; use a fraction of the steps in (0, 1), e.g. 0.25 "
                              "(or screen=False to fine-tune every candidate in full).")
        if not isinstance(self.calibrate, bool):
            raise ConfigError(f"search: screen calibrate={self.calibrate!r}; use true or false.")
        for name in ("slack", "margin"):
            v = getattr(self, name)
            if v is None and name == "slack":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ConfigError(f"search: screen {name}={v!r}; use a fraction in [0, 1) (0.01 = 1 pp).")

    def config(self, full: FinetuneConfig) -> FinetuneConfig:
        """The screening fine-tune: the full settings with round(share * steps) steps (at least 1)."""
        return FinetuneConfig.from_dict({**full.to_dict(), "steps": max(1, int(round(self.share * full.steps)))})

    def limit(self, max_drop: float, pairs: Sequence[tuple[float, float]] = ()) -> float:
        """The largest screened accuracy drop that is promoted under `max_drop`; `pairs`: (screened,
        full) drops of the study's promoted candidates with the same distill setting."""
        return max_drop + self._slack(max_drop, pairs)[0]

    def _slack(self, max_drop: float, pairs: Sequence[tuple[float, float]]) -> tuple[float, str]:
        slack = max(SCREEN_SLACK, max_drop) if self.slack is None else self.slack
        if self.calibrate and len(pairs) >= CALIBRATION_PAIRS:
            recovered = float(np.median([s - f for s, f in pairs]))
            return min(slack, max(0.0, recovered)), (f"max_accuracy_drop + the {recovered * 100:.2f} pp the "
                                                     f"{len(pairs)} promoted candidates recovered, in [0, "
                                                     f"{slack * 100:.2f}] pp")
        return slack, "max_accuracy_drop + slack"

    def promote(self, screened: Measurement, baseline: Measurement, max_drop: float | None,
                objectives: Sequence[Objective], others: Sequence[Measurement],
                pairs: Sequence[tuple[float, float]] = ()) -> tuple[bool, str]:
        """Whether a screened candidate gets the full fine-tune, and why (`others`: the screened
        measurements of the candidates before it; `pairs`: see `limit`)."""
        drop = baseline.accuracy - screened.accuracy
        if max_drop is not None:
            slack, how = self._slack(max_drop, pairs)
            limit = max_drop + slack
            if drop <= limit + 1e-12:
                return True, f"screened drop {drop * 100:.2f} pp <= {limit * 100:.2f} pp ({how})"
            return False, f"screened drop {drop * 100:.2f} pp > {limit * 100:.2f} pp ({how})"
        objectives = [OBJECTIVES["macs"] if o.name == "latency" else o for o in objectives]
        me = np.array([o.normalized(o.value(screened), baseline) for o in objectives])
        acc = [i for i, o in enumerate(objectives) if o.maximize]
        if not acc:
            return True, "accuracy is not an objective: every candidate is promoted"
        for m in others:
            q = np.array([o.normalized(o.value(m), baseline) for o in objectives])
            rest = [i for i in range(len(objectives)) if i not in acc]
            if all(q[i] + self.margin <= me[i] for i in acc) and all(q[i] <= me[i] for i in rest):
                return False, (f"a screened candidate is {(me[acc[0]] - q[acc[0]]) * 100:.2f} pp more accurate "
                               f"(> margin {self.margin * 100:.2f} pp) and no worse otherwise")
        return True, "not dominated beyond the margin by any screened candidate"
