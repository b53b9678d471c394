"""The ask/tell loop: ask the sampler, hand policies to the executor, tell the study what came back."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import optuna

from ..executors import Outcome
from ..measure import Measurement
from ..policy import Policy
from ..space import BoundSpace
from ..train import FinetuneConfig
from .latency_limit import over_limit, skip_margin, skip_reason
from .latency_records import save_table
from .objectives import Objective
from .result import non_dominated
from .study import counted
from .tell import (abandon, lease_lost, promoted_pairs, skip_candidate, skip_twin, tell_outcome, tell_screened_out,
                   twin_verdict)


@dataclass(frozen=True)
class Progress:
    """Reported after every finished trial (for live displays)."""

    done: int
    failed: int
    target: int
    pending: int
    front_size: int
    best_compression: float | None  # best size ratio within 1 pp (or max_accuracy_drop) so far
    elapsed_s: float
    remaining_s: float | None
    last: dict[str, Any]


class WaitClock:
    """Accumulates the driver's time blocked in executor.wait()."""

    def __init__(self) -> None:
        self.waited = 0.0

    def wait(self, ex: Any) -> list[Outcome]:
        t0 = time.perf_counter()
        try:
            return ex.wait()
        finally:
            self.waited += time.perf_counter() - t0


@dataclass
class LoopContext:
    """What the loop and the later stages share: the study, executor and the study's fixed settings."""

    study: optuna.Study
    ex: Any
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
    latency_table: Any = None  # measure.latency_table.LatencyTable where latency is an objective
    max_latency: float | None = None  # search(max_latency_ms=...): search/latency_limit.py
    study_s: float = 0.0  # driver seconds in the loop's study calls: claims, sampling, attributes, tells
    locks: Any = None  # drivers.DriverLocks: this driver's lease and the study mutex (many drivers, one study)
    reaper: Any = None  # drivers.Reaper: re-queues dead drivers' running trials

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
        if self.latency_table is not None and policy.active():
            predicted = self.latency_table.predict(policy, self.baseline, self.runtime)
            if predicted is not None:
                trial.set_user_attr("latency_predicted_ms", round(predicted, 6))
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

    def report(self, o: Outcome, pending: int, counts: bool = True, full: bool = True) -> None:
        """Count a finished trial (unless it does not count towards n_trials) and report progress --
        `done` is the study's count, other drivers' trials included; `full`: its measurement is a
        full-fidelity one (a screened-out one never joins the front)."""
        if counts:
            self.done = counted(self.study)
        self.failed += 0 if o.ok else 1
        if o.ok and full:
            m = o.measurement
            if self.feasible(m):
                self.feasible_trials.append((o.key, [ob.normalized(v, self.baseline) for ob, v in zip(self.objectives,
                                                                                              self.values(m))],
                                      self.baseline.size_bytes / m.size_bytes))
        if self.progress:
            self.progress(_progress(self, pending, o))


def stage_of(trial: optuna.trial.Trial | optuna.trial.FrozenTrial) -> str:
    """How a trial came to be: baseline, warm-start, search (sampled) or refined."""
    attrs = trial.user_attrs
    for key, stage in (("refined_from", "refined"), ("baseline_policy", "baseline"), ("warm_start", "warm-start")):
        if attrs.get(key) is not None:
            return stage
    return "search"


@dataclass
class _Pending:
    trial: optuna.trial.Trial
    policy: Policy
    stage: str  # "screen" or "full"


@dataclass
class ScreenTally:
    """What screening did in this run: counts and evaluation seconds per fidelity."""

    promoted: int = 0
    stopped: int = 0
    screen_s: float = 0.0
    full_s: list[float] = field(default_factory=list)  # full evaluations of promoted candidates

    def summary(self) -> dict[str, Any]:
        """Counts, seconds, and the full-evaluation time the stopped candidates did not spend --
        an estimate: stopped candidates times the mean full evaluation of the promoted ones."""
        mean_full = sum(self.full_s) / len(self.full_s) if self.full_s else None
        return {"screened": self.promoted + self.stopped, "promoted": self.promoted, "stopped": self.stopped,
                "screen_s": round(self.screen_s, 3), "full_s": round(sum(self.full_s), 3),
                "saved_s_estimated": None if mean_full is None else round(self.stopped * mean_full, 3)}


def run_loop(ctx: LoopContext, bound: BoundSpace, n_trials: int | None, counted: int,
             screening: Any = None, full: FinetuneConfig | None = None) -> ScreenTally:
    """Ask, evaluate and tell until `n_trials` candidates are finished in the study -- by this driver
    and any other on the same study (drivers.claim) -- or the timeout passes. With `screening`
    (fidelity.Screening) and the full fine-tune settings, candidates are screened first and only
    promoted ones fine-tuned in full (see fidelity.py)."""
    from .drivers import claim

    study, ex = ctx.study, ctx.ex
    pending: dict[int, _Pending] = {}
    capacity = max(1, int(getattr(ex, "capacity", 1)))
    ctx.done = counted
    ctx.target = n_trials
    tally = ScreenTally()
    screened: list[Measurement] = []
    pairs = promoted_pairs(study, ctx.baseline)  # distill -> [(screened drop, full drop)]: the screen's calibration
    screen_cfg = screening.config(full) if screening is not None and full is not None else None
    try:
        while True:
            while len(pending) < capacity and (ctx.timeout is None or time.perf_counter() - ctx.t_start < ctx.timeout):
                with ctx.on_study():
                    trial = claim(study, ctx.locks, ctx.reaper, n_trials)
                    if trial is None:
                        break
                    policy = bound.sample(trial)
                    stage = stage_of(trial)
                    trial.set_user_attr("policy", policy.to_dict())
                    trial.set_user_attr("stage", stage)
                verdict = twin_verdict(study, ctx.baseline) if stage == "warm-start" else None
                if verdict is not None and policy.distill != verdict[0]:
                    skip_twin(ctx, trial, verdict)
                    continue
                predicted = ctx.predict_latency(trial, policy)
                why = (skip_reason(predicted, ctx.max_latency, skip_margin(study))
                       if ctx.max_latency is not None and stage != "baseline" else None)
                if why is not None:
                    skip_candidate(ctx, trial, why)
                    continue
                if screen_cfg is not None and stage != "baseline" and policy.active():
                    ex.submit(trial.number, policy, screen_cfg, runtime=ctx.runtime)
                    pending[trial.number] = _Pending(trial, policy, "screen")
                else:
                    ex.submit(trial.number, policy, runtime=ctx.runtime)
                    pending[trial.number] = _Pending(trial, policy, "full")
            if not pending:
                break
            for o in ctx.clock.wait(ex):
                p = pending.pop(o.key)
                try:
                    ctx.eval_s += o.seconds
                    ctx.observe_latency(p.policy, o)
                    if p.stage == "screen" and o.ok:
                        tally.screen_s += o.seconds
                        promote, why = screening.promote(o.measurement, ctx.baseline, ctx.max_drop, ctx.objectives,
                                                         screened, pairs.get(p.policy.distill, []))
                        screened.append(o.measurement)
                        p.trial.set_user_attr("screen", {"steps": screen_cfg.steps, "seconds": round(o.seconds, 4),
                                                         "decision": "promoted" if promote else "stopped",
                                                         "reason": why, "measurement": o.measurement.to_dict()})
                        if promote:
                            tally.promoted += 1
                            ex.submit(o.key, p.policy, runtime=ctx.runtime)
                            pending[o.key] = _Pending(p.trial, p.policy, "full")
                            continue
                        tally.stopped += 1
                        with ctx.on_study():
                            tell_screened_out(ctx, p.trial, o)
                        ctx.report(o, len(pending), full=False)
                        continue
                    else:
                        if p.stage == "screen":
                            o = Outcome(o.key, None, f"screening fine-tune: {o.error}", o.seconds, o.worker, o.attempts)
                        elif p.trial.user_attrs.get("screen"):
                            tally.full_s.append(o.seconds)
                            if o.ok:
                                screen = Measurement.from_dict(p.trial.user_attrs["screen"]["measurement"])
                                pairs.setdefault(p.policy.distill, []).append(
                                    (ctx.baseline.accuracy - screen.accuracy,
                                     ctx.baseline.accuracy - o.measurement.accuracy))
                        with ctx.on_study():
                            tell_outcome(ctx, p.trial, o)
                    ctx.report(o, len(pending))
                except optuna.exceptions.UpdateFinishedTrialError:
                    lease_lost(o.key)
    except BaseException:
        abandon(study, ex, {k: p.trial for k, p in pending.items()})
        raise
    return tally


def collect(ctx: LoopContext, submitted: dict[int, Any]) -> dict[int, Outcome]:
    """Wait for every key in `submitted`; on interruption cancel the rest and re-raise."""
    out: dict[int, Outcome] = {}
    try:
        while len(out) < len(submitted):
            for o in ctx.clock.wait(ctx.ex):
                out[o.key] = o
                ctx.eval_s += o.seconds
    except BaseException:
        ctx.ex.cancel()
        raise
    return out


def submit_policy(ctx: LoopContext, key: int, policy: Policy, finetune: FinetuneConfig | None = None) -> None:
    ctx.ex.submit(key, policy, finetune, runtime=ctx.runtime)


def _progress(ctx: LoopContext, pending: int, o: Outcome) -> Progress:
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
    last = {"trial": o.key, "ok": o.ok, "error": o.error}
    if o.ok:
        last.update(accuracy=o.measurement.accuracy, size_bytes=o.measurement.size_bytes,
                    latency_ms=o.measurement.latency_ms)
    return Progress(ctx.done, ctx.failed, target or 0, pending, front, best, elapsed, remaining, last)
