"""What the loop and the later stages share: the study, the executor, the study's fixed settings and
the driver's clocks; progress reports."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from ..executors import Executor, Outcome
from ..measure import Measurement
from ..measure.cost import STAGES
from ..measure.latency_table import LatencyTable
from ..policy import Policy
from ..train import FinetuneConfig
from .objectives import Objective
from .pareto import non_dominated
from .stages.latency_limit import over_limit
from .study.claims import Reaper
from .study.latency_records import save_table
from .study.leases import DriverLocks
from .study.schema import TrialAttr
from .study.storage import counted


@dataclass(frozen=True)
class Session:
    """What the search that produced a result ran with (for `SearchResult.refine` afterwards)."""

    model: Any
    task: Any
    executor: Any
    latency: Any
    finetune: Any


@dataclass(frozen=True)
class Progress:
    """Reported as a stage starts and after every evaluation it finishes (for live displays).

    stage: "runtime" (the float / int8 probe of runtime="auto"), "baseline", "pre-pass" (done / target:
    single choices measured), "trials" (done / target:
    the study's trials; target 0 with a timeout only; `last["stage"]` says baseline policy, warm
    start or search), "refine" (refine trials) and "held-out" (front points scored on test_data).
    remaining_s: the stage's estimate of the time left (the search's timeout caps the trials'); None
    before its first evaluation. last: what just finished ({} as a stage starts).
    """

    done: int
    failed: int
    target: int
    pending: int
    front_size: int
    best_compression: float | None  # best size ratio within 1 pp (or max_accuracy_drop) so far
    elapsed_s: float
    remaining_s: float | None
    last: dict[str, Any]
    stage: str = "trials"


def stage_progress(
    stage: str,
    done: int,
    target: int,
    t_start: float,
    stage_start: float,
    last: dict[str, Any] | None = None,
    failed: int = 0,
) -> Progress:
    """A Progress of a stage with a known amount of work: its estimate is the stage's mean so far."""
    now = time.perf_counter()
    remaining = (now - stage_start) / done * max(target - done, 0) if done else None
    return Progress(done, failed, target, max(target - done, 0), 0, None, now - t_start, remaining, last or {}, stage)


class WaitClock:
    """Accumulates the driver's time blocked in executor.wait()."""

    def __init__(self) -> None:
        self.waited = 0.0

    def wait(self, ex: Executor) -> list[Outcome]:
        t0 = time.perf_counter()
        try:
            return ex.wait()
        finally:
            self.waited += time.perf_counter() - t0


@dataclass
class LoopContext:
    """What the loop and the later stages share: the study, executor and the study's fixed settings."""

    study: optuna.Study
    ex: Executor
    clock: WaitClock
    objectives: tuple[Objective, ...]
    baseline: Measurement
    runtime: str
    max_drop: float | None
    progress: Callable[[Progress], None] | None
    t_start: float
    timeout: float | None = None
    eval_s: float = 0.0
    done: int = 0
    failed: int = 0
    target: int | None = None
    feasible_trials: list[tuple[int, list[float], float]] = field(default_factory=list)  # (trial, normalized, ratio)
    latency_table: LatencyTable | None = None  # where latency is an objective
    max_latency: float | None = None  # search(max_latency_ms=...): stages/latency_limit.py
    study_s: float = 0.0  # driver seconds in the loop's study calls: claims, sampling, attributes, tells
    locks: DriverLocks | None = None  # this driver's lease and the study mutex (many drivers, one study)
    reaper: Reaper | None = None  # re-queues dead drivers' running trials
    cost: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))  # this run's split

    def account(self, o: Outcome) -> None:
        """Add one finished evaluation's seconds to eval_s and its cost split to `cost`."""
        self.eval_s += o.seconds
        self.add_cost(o.measurement.cost if o.measurement is not None else None)

    def add_cost(self, cost: Mapping[str, float] | None) -> None:
        for stage, seconds in (cost or {}).items():
            if stage in self.cost and math.isfinite(float(seconds)):
                self.cost[stage] += float(seconds)

    @contextlib.contextmanager
    def on_study(self) -> Iterator[None]:
        """Time a block of study calls (storage and sampling) into study_s."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.study_s += time.perf_counter() - t0

    def predict_latency(self, trial: optuna.trial.Trial, policy: Policy) -> float | None:
        """Store the lookup table's sum-rule latency on the trial before it is evaluated (if it has one)
        and return it."""
        if self.latency_table is not None and policy.active() and not policy.active_blocks():
            predicted = self.latency_table.predict(policy, self.baseline, self.runtime)
            if predicted is not None:
                trial.set_user_attr(TrialAttr.LATENCY_PREDICTED_MS, round(predicted, 6))
                return predicted
        return None

    def feasible(self, m: Measurement) -> bool:
        """Within the accuracy constraint (1 pp without one) and the latency limit, if any."""
        drop_ok = self.baseline.accuracy - m.accuracy <= (0.01 if self.max_drop is None else self.max_drop) + 1e-12
        return drop_ok and not over_limit(m.latency_ms, self.max_latency)

    def observe_latency(self, policy: Policy, o: Outcome) -> None:
        """Add an evaluation's per-layer timings to the lookup table and store it in the study."""
        if self.latency_table is None or not o.ok:
            return
        m = o.measurement
        if self.latency_table.observe(policy, m.layer_latency_ms, self.runtime, m.device, m.batch_size):
            save_table(self.study, self.latency_table)

    def values(self, m: Measurement) -> list[float]:
        return [o.value(m) for o in self.objectives]

    def report(
        self,
        o: Outcome,
        pending: int,
        counts: bool = True,
        full: bool = True,
        stage: str = "search",
        tally: tuple[int, int, float] | None = None,
    ) -> None:
        """Count a finished trial (unless it does not count towards n_trials) and report progress --
        `done` is the study's count, other drivers' trials included; `full`: its measurement is a
        full-fidelity one (a screened-out one never joins the front); `stage`: how the trial came to
        be (stage_of); `tally`: (done, target, start) of the refine stage, reported as "refine"."""
        if counts:
            self.done = counted(self.study)
        self.failed += 0 if o.ok else 1
        if o.ok and full:
            m = o.measurement
            if self.feasible(m):
                self.feasible_trials.append(
                    (
                        o.key,
                        [ob.normalized(v, self.baseline) for ob, v in zip(self.objectives, self.values(m))],
                        self.baseline.size_bytes / m.size_bytes,
                    )
                )
        if self.progress:
            self.progress(_progress(self, pending, o, stage, tally))

    def announce(
        self, stage: str, done: int, target: int, stage_start: float, last: dict[str, Any] | None = None
    ) -> None:
        """Report a stage's progress (its start with done=0) where a display is attached."""
        if self.progress:
            self.progress(stage_progress(stage, done, target, self.t_start, stage_start, last))


def stage_of(trial: optuna.trial.Trial | optuna.trial.FrozenTrial) -> str:
    """How a trial came to be: baseline, warm-start, search (sampled) or refined."""
    attrs = trial.user_attrs
    for key, stage in (("refined_from", "refined"), ("baseline_policy", "baseline"), ("warm_start", "warm-start")):
        if attrs.get(key) is not None:
            return stage
    return "search"


def collect(
    ctx: LoopContext, submitted: dict[int, Any], on_each: Callable[[int, Outcome], None] | None = None
) -> dict[int, Outcome]:
    """Wait for every key in `submitted` (`on_each(done, outcome)` as each finishes); on interruption
    cancel the rest and re-raise."""
    out: dict[int, Outcome] = {}
    try:
        while len(out) < len(submitted):
            for o in ctx.clock.wait(ctx.ex):
                out[o.key] = o
                ctx.account(o)
                if on_each is not None:
                    on_each(len(out), o)
    except BaseException:
        ctx.ex.cancel()
        raise
    return out


def submit_policy(
    ctx: LoopContext, key: int, policy: Policy, finetune: FinetuneConfig | None = None, *, score_test: bool = False
) -> None:
    if score_test:
        ctx.ex.submit(key, policy, finetune, runtime=ctx.runtime, score_test=True)
    else:
        ctx.ex.submit(key, policy, finetune, runtime=ctx.runtime)


def _progress(ctx: LoopContext, pending: int, o: Outcome, stage: str, tally: tuple[int, int, float] | None) -> Progress:
    elapsed = time.perf_counter() - ctx.t_start
    pts = ctx.feasible_trials
    front = 0
    best = None
    if pts:
        arr = np.array([p[1] for p in pts])
        front = int(non_dominated(arr).sum())
        best = max(p[2] for p in pts)
    remaining = None
    target = ctx.target
    if target:
        remaining = elapsed / max(ctx.done, 1) * max(target - ctx.done, 0)
    if ctx.timeout is not None:
        left = max(ctx.timeout - elapsed, 0)
        remaining = min(remaining, left) if remaining is not None else left
    last = {"trial": o.key, "ok": o.ok, "error": o.error, "stage": stage}
    if o.ok:
        last.update(
            accuracy=o.measurement.accuracy, size_bytes=o.measurement.size_bytes, latency_ms=o.measurement.latency_ms
        )
    if tally is not None:
        done, total, start = tally
        remaining = (time.perf_counter() - start) / max(done, 1) * max(total - done, 0)
        return Progress(done, ctx.failed, total, pending, front, best, elapsed, remaining, last, "refine")
    return Progress(ctx.done, ctx.failed, target or 0, pending, front, best, elapsed, remaining, last, "trials")
