"""Where a candidate's seconds go: one clock per evaluation, split by stage."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

STAGES = ("apply", "calibrate", "finetune", "evaluate", "pack", "latency")
# apply: the policy applied to a copy of the model; calibrate: the calibrated choices' input statistics
# collected and BatchNorm statistics re-estimated;
# finetune: the fine-tune (distillation and gradual pruning included); evaluate: the forward passes
# over the evaluation data; pack: the packed size; latency: building the runtimes, the timings and
# the MAC count.


class CostClock:
    """Seconds spent in each of STAGES (wall time, summed over every entry of a stage)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"CostClock: stage {name!r} is not one of {', '.join(STAGES)}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def move(self, source: str, target: str, seconds: float) -> None:
        """Count `seconds` already on `source` to `target` instead (a stage timed inside another)."""
        self.seconds[source] -= seconds
        self.seconds[target] += seconds

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


COLUMNS = tuple(f"{s}_s" for s in STAGES)  # the cost columns of result.trials and the pre-pass table


def columns(*costs: Mapping[str, float] | None) -> dict[str, float]:
    """The COLUMNS of one row: each stage's seconds summed over `costs` (a trial's screening and full
    measurement); NaN where none of them recorded a split (a study written before splits existed)."""
    found = [c for c in costs if c]
    if not found:
        return dict.fromkeys(COLUMNS, float("nan"))
    return {f"{s}_s": round(sum(float(c.get(s, 0.0)) for c in found), 4) for s in STAGES}
