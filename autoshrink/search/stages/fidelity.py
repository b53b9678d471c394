"""Multi-fidelity: screen every candidate with a short fine-tune; only promising ones get the full one.

Sampled and warm-start trials (not the uniform baselines) first fine-tune round(SCREEN_SHARE * steps)
steps (at least 1). Promoted: with `max_accuracy_drop`, when the screened drop <= max_accuracy_drop +
slack (max(SCREEN_SLACK, max_accuracy_drop) unless given; after CALIBRATION_PAIRS promoted candidates of
one `distill` setting, their median screened - full drop, within [0, slack], unless `calibrate=False`);
without it, when no screened candidate is more than `margin` (SCREEN_MARGIN) more accurate and no worse
otherwise (latency by MACs, so it replays). Else PRUNED: it keeps user attribute "screen", counts towards
n_trials, and refine.py may still take it. The full fine-tune restarts from the compressed model.

zero_step=True adds a rung before the screen: each such candidate is first evaluated with no fine-tune
(calibrated choices calibrated, BatchNorm re-estimated: what a post-training search measures) and kept
in the user attribute "zero_step". Under max_accuracy_drop, once CALIBRATION_PAIRS candidates of one
distill setting have both that and a full measurement, a candidate whose zero-step drop exceeds
max_accuracy_drop plus the largest recovery seen among them (zero-step drop - full drop) is stopped
there (PRUNED, as a screened-out one); before that, and without a constraint, the rung only measures.
It is meant for spaces where fine-tuning recovers little (low-bit GPTQ, a pretrained transformer); where
fine-tuning recovers much it costs one evaluation per candidate and stops few.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    zero_step: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 < self.share < 1:
            raise ConfigError(
                f"search: screen share={self.share!r}; use a fraction of the steps in (0, 1), e.g. 0.25 "
                "(or screen=False to fine-tune every candidate in full)."
            )
        if not isinstance(self.calibrate, bool):
            raise ConfigError(f"search: screen calibrate={self.calibrate!r}; use true or false.")
        if not isinstance(self.zero_step, bool):
            raise ConfigError(f"search: screen zero_step={self.zero_step!r}; use true or false.")
        for name in ("slack", "margin"):
            v = getattr(self, name)
            if v is None and name == "slack":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ConfigError(f"search: screen {name}={v!r}; use a fraction in [0, 1) (0.01 = 1 pp).")

    def config(self, full: FinetuneConfig) -> FinetuneConfig:
        """The screening fine-tune: the full settings with round(share * steps) steps (at least 1)."""
        return FinetuneConfig.from_dict({**full.to_dict(), "steps": max(1, int(round(self.share * full.steps)))})

    def zero_step_config(self, full: FinetuneConfig) -> FinetuneConfig:
        """The zero-step rung's evaluation: the full settings with no fine-tune."""
        return FinetuneConfig.from_dict({**full.to_dict(), "steps": 0})

    def promote_zero_step(
        self, measured: Measurement, baseline: Measurement, max_drop: float | None, pairs: Sequence[tuple[float, float]]
    ) -> tuple[bool, str]:
        """Whether a candidate measured with no fine-tune goes on to the screen, and why (`pairs`:
        (zero-step drop, full drop) of the study's candidates with the same distill setting)."""
        drop = baseline.accuracy - measured.accuracy
        if max_drop is None:
            return True, f"zero-step drop {drop * 100:.2f} pp (no max_accuracy_drop: the rung only measures)"
        if len(pairs) < CALIBRATION_PAIRS:
            return True, (
                f"zero-step drop {drop * 100:.2f} pp (the rung measures until {CALIBRATION_PAIRS} candidates "
                f"have both fidelities; {len(pairs)} so far)"
            )
        recovery = max(0.0, max(z - f for z, f in pairs))
        limit = max_drop + recovery
        how = f"max_accuracy_drop + the largest recovery of {len(pairs)} candidates, {recovery * 100:.2f} pp"
        if drop <= limit + 1e-12:
            return True, f"zero-step drop {drop * 100:.2f} pp <= {limit * 100:.2f} pp ({how})"
        return False, f"zero-step drop {drop * 100:.2f} pp > {limit * 100:.2f} pp ({how})"

    def limit(self, max_drop: float, pairs: Sequence[tuple[float, float]] = ()) -> float:
        """The largest screened accuracy drop that is promoted under `max_drop`; `pairs`: (screened,
        full) drops of the study's promoted candidates with the same distill setting."""
        return max_drop + self._slack(max_drop, pairs)[0]

    def _slack(self, max_drop: float, pairs: Sequence[tuple[float, float]]) -> tuple[float, str]:
        slack = max(SCREEN_SLACK, max_drop) if self.slack is None else self.slack
        if self.calibrate and len(pairs) >= CALIBRATION_PAIRS:
            recovered = float(np.median([s - f for s, f in pairs]))
            return min(slack, max(0.0, recovered)), (
                f"max_accuracy_drop + the {recovered * 100:.2f} pp the "
                f"{len(pairs)} promoted candidates recovered, in [0, "
                f"{slack * 100:.2f}] pp"
            )
        return slack, "max_accuracy_drop + slack"

    def promote(
        self,
        screened: Measurement,
        baseline: Measurement,
        max_drop: float | None,
        objectives: Sequence[Objective],
        others: Sequence[Measurement],
        pairs: Sequence[tuple[float, float]] = (),
    ) -> tuple[bool, str]:
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
                return False, (
                    f"a screened candidate is {(me[acc[0]] - q[acc[0]]) * 100:.2f} pp more accurate "
                    f"(> margin {self.margin * 100:.2f} pp) and no worse otherwise"
                )
        return True, "not dominated beyond the margin by any screened candidate"
