"""ash.search: the ask/tell loop. The driver owns the study; the executor only evaluates."""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from torch import nn

from ..errors import ConfigError
from ..executors import Job, Outcome, make_executor
from ..measure import LatencyConfig, Measurement
from ..policy import Policy
from ..recipe import InputSpec, fingerprint, versions
from ..space import BoundSpace, SearchSpace, bind
from ..task import Task
from ..techniques.structured import structured_blockers
from ..train import FinetuneConfig
from .objectives import Objective, resolve
from .result import SearchResult, non_dominated
from .samplers import make_sampler
from .study import counted, default_storage, open_study, requeue_crashed

BASELINE_KEY = -1


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


def _baselines(bound: BoundSpace) -> list[dict[str, Any]]:
    """No compression, uniform 8-bit, uniform 50% sparsity, snapped to the space; deduplicated."""
    out: list[dict[str, Any]] = []
    for targets in ({}, {"bits": 8}, {"sparsity": 0.5}):
        params = bound.nearest_params(targets)
        if params not in out:
            out.append(params)
    return out


def _signature(model: nn.Module, bound: BoundSpace, objectives: Sequence[Objective], ft: FinetuneConfig,
               task: Task) -> dict[str, Any]:
    space = {name: list(choice.values) for name, choice in bound.params()}
    digest = hashlib.sha256(json.dumps(space, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"model": type(model).__name__, "space": digest, "finetune": ft.to_dict(),
            "example_input": list(task.example_input.shape)}


def _values(objectives: Sequence[Objective], m: Measurement) -> list[float]:
    return [o.value(m) for o in objectives]


def search(
    model: nn.Module,
    task: Task,
    space: SearchSpace,
    *,
    objectives: Sequence[str] = ("accuracy", "size", "latency"),
    n_trials: int | None = 40,
    timeout: float | None = None,
    finetune_steps: int | None = None,
    executor: Any = "local",
    storage: str | None = None,
    study_name: str | None = None,
    sampler: Any = "nsga2",
    seed: int = 0,
    max_accuracy_drop: float | None = None,
    latency: LatencyConfig | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> SearchResult:
    """Search per-layer compression policies for `model` on `task`; return the SearchResult.

    An Optuna study (storage default sqlite:///studies/<study_name>.db) keeps every trial; the same
    storage and study_name resume it (trials left RUNNING by a dead run are re-queued). The first
    trials are uniform baselines (no compression, 8-bit, 50% sparsity). `n_trials` counts finished
    trials in the study; `timeout` (seconds) stops asking new ones. `max_accuracy_drop` (fraction)
    is an Optuna constraint: trials past it stay in the study but not in the front.
    """
    t_start = time.perf_counter()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _search(model, task, space, objectives=objectives, n_trials=n_trials, timeout=timeout,
                       finetune_steps=finetune_steps, executor=executor, storage=storage, study_name=study_name,
                       sampler=sampler, seed=seed, max_accuracy_drop=max_accuracy_drop, latency=latency,
                       progress=progress, t_start=t_start)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _search(model: nn.Module, task: Task, space: SearchSpace, *, objectives: Sequence[str], n_trials: int | None,
            timeout: float | None, finetune_steps: int | None, executor: Any, storage: str | None,
            study_name: str | None, sampler: Any, seed: int, max_accuracy_drop: float | None,
            latency: LatencyConfig | None, progress: Callable[[Progress], None] | None,
            t_start: float) -> SearchResult:
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"search: space must be a SearchSpace (use ash.load_space), got {type(space).__name__}.")
    if n_trials is None and timeout is None:
        raise ConfigError("search: give n_trials and/or timeout, or it would never stop.")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
        raise ConfigError(f"search: n_trials={n_trials!r}; use a positive integer.")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ConfigError(f"search: timeout={timeout!r}; use seconds > 0.")
    if max_accuracy_drop is not None and not (isinstance(max_accuracy_drop, (int, float)) and 0 <= max_accuracy_drop < 1):
        raise ConfigError(f"search: max_accuracy_drop={max_accuracy_drop!r}; use a fraction in [0, 1) (0.01 = 1 pp).")
    objs = resolve(objectives)
    bound = bind(space, model)
    # layers structured pruning cannot touch (e.g. the classifier) would only waste trials on no-ops
    blocked = structured_blockers(model, bound.structured_candidates(), task.example_input)
    bound = bound.without_structured(blocked)
    ft = space.finetune if finetune_steps is None else FinetuneConfig.from_dict({**space.finetune.to_dict(),
                                                                                 "steps": finetune_steps})
    ft = FinetuneConfig.from_dict({**ft.to_dict(), "seed": seed})
    study_name = study_name or f"autoshrink-{type(model).__name__.lower()}"
    storage = storage or default_storage(study_name)
    grid = {name: list(choice.values) for name, choice in bound.params()}
    study, created = open_study(storage, study_name, objs, make_sampler(sampler, seed=seed, n_trials=n_trials,
                                                                         search_space=grid),
                                _signature(model, bound, objs, ft, task))
    if created:
        study.set_user_attr("finetune", ft.to_dict())
        study.set_user_attr("structured_excluded", blocked)
        # what a recipe exported later needs without the model: its fingerprint and the input spec
        study.set_user_attr("fingerprint", fingerprint(model).to_dict())
        study.set_user_attr("example_input", InputSpec.of(task.example_input).to_dict())
        study.set_user_attr("versions", versions())
        for params in _baselines(bound):
            study.enqueue_trial(params, user_attrs={"baseline_policy": True})
    study.set_user_attr("max_accuracy_drop", max_accuracy_drop)  # this run's constraint, read by load_result
    requeue_crashed(study)

    ex = make_executor(executor)
    eval_s = 0.0
    clock = _WaitClock()
    try:
        ex.start(Job(model=model, task=task, finetune=ft, latency=latency))
        baseline = _baseline(study, ex, clock)
        eval_s += baseline[1]
        result = SearchResult(study=study, baseline=baseline[0], objectives=objs, max_accuracy_drop=max_accuracy_drop,
                              storage=storage)
        eval_s += _loop(study, ex, bound, objs, result, n_trials, timeout, max_accuracy_drop, progress, t_start, clock)
    finally:
        ex.shutdown()
    wall = time.perf_counter() - t_start
    # overhead: driver wall time not spent waiting for evaluations (study I/O, sampling, executor
    # start-up and dispatch); eval_s sums the workers' evaluation time (> wall with parallel workers)
    busy = wall - clock.waited
    result.timing = {"wall_s": wall, "eval_s": eval_s, "wait_s": clock.waited, "overhead_s": busy,
                     "overhead_fraction": busy / wall if wall else 0.0}
    return result


class _WaitClock:
    """Accumulates the driver's time blocked in executor.wait()."""

    def __init__(self) -> None:
        self.waited = 0.0

    def wait(self, ex: Any) -> list[Outcome]:
        t0 = time.perf_counter()
        try:
            return ex.wait()
        finally:
            self.waited += time.perf_counter() - t0


def _baseline(study: optuna.Study, ex: Any, clock: _WaitClock) -> tuple[Measurement, float]:
    """The untouched model's Measurement, measured by the executor once and kept in the study."""
    stored = study.user_attrs.get("baseline")
    if stored:
        return Measurement.from_dict(stored), 0.0
    ex.submit(BASELINE_KEY, Policy(), FinetuneConfig(steps=0))
    outcomes: list[Outcome] = []
    while not outcomes:
        outcomes = clock.wait(ex)
    o = outcomes[0]
    if not o.ok:
        raise ConfigError(f"measuring the untouched model failed, so nothing can be compared: {o.error}")
    study.set_user_attr("baseline", o.measurement.to_dict())
    return o.measurement, o.seconds


def _loop(study: optuna.Study, ex: Any, bound: BoundSpace, objs: Sequence[Objective], result: SearchResult,
          n_trials: int | None, timeout: float | None, max_drop: float | None,
          progress: Callable[[Progress], None] | None, t_start: float, clock: _WaitClock) -> float:
    pending: dict[int, optuna.trial.Trial] = {}
    done = counted(study)
    failed = 0
    eval_s = 0.0
    capacity = max(1, int(getattr(ex, "capacity", 1)))
    feasible_pts: list[tuple[int, list[float], float]] = []  # (trial, normalized values, compression)
    try:
        while True:
            while (len(pending) < capacity and (n_trials is None or done + len(pending) < n_trials)
                   and (timeout is None or time.perf_counter() - t_start < timeout)):
                trial = study.ask()
                policy = bound.sample(trial)
                trial.set_user_attr("policy", policy.to_dict())
                ex.submit(trial.number, policy)
                pending[trial.number] = trial
            if not pending:
                break
            for o in clock.wait(ex):
                trial = pending.pop(o.key)
                eval_s += o.seconds
                ok = _tell(study, trial, o, objs, result.baseline, max_drop)
                done += 1
                failed += 0 if ok else 1
                if ok:
                    m = o.measurement
                    drop = result.baseline.accuracy - m.accuracy
                    if drop <= (0.01 if max_drop is None else max_drop) + 1e-12:
                        feasible_pts.append((o.key, [ob.normalized(v, result.baseline)
                                                     for ob, v in zip(objs, _values(objs, m))],
                                             result.baseline.size_bytes / m.size_bytes))
                if progress:
                    progress(_progress(done, failed, n_trials, len(pending), feasible_pts, t_start, timeout, o))
    except BaseException:
        _abandon(study, ex, pending)
        raise
    return eval_s


def _tell(study: optuna.Study, trial: optuna.trial.Trial, o: Outcome, objs: Sequence[Objective],
          baseline: Measurement, max_drop: float | None) -> bool:
    # few writes per trial: each user attribute is one storage transaction
    trial.set_user_attr("eval", {"seconds": round(o.seconds, 4), "worker": o.worker, "attempts": o.attempts})
    if not o.ok:
        trial.set_user_attr("failure", o.error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False
    m = o.measurement
    values = _values(objs, m)
    if not all(math.isfinite(v) for v in values):
        trial.set_user_attr("failure", f"non-finite objective values {values}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False
    trial.set_user_attr("measurement", m.to_dict())
    if max_drop is not None:
        trial.set_constraint("accuracy_drop", (baseline.accuracy - m.accuracy) - max_drop)
    frozen = study.tell(trial, values)
    if frozen.state != optuna.trial.TrialState.COMPLETE:  # Optuna fails a bad tell silently
        raise ConfigError(f"trial {trial.number}: Optuna did not accept values {values} (state {frozen.state.name}).")
    return True


def _abandon(study: optuna.Study, ex: Any, pending: dict[int, optuna.trial.Trial]) -> None:
    """Interrupted (Ctrl-C or an error): fail pending trials and queue their parameters again."""
    ex.cancel()
    for number, trial in pending.items():
        try:
            trial.set_user_attr("failure", "the search was interrupted while this trial was pending; re-queued")
            trial.set_user_attr("crashed", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": number})
        except Exception:  # noqa: BLE001 - best effort while unwinding; resume re-queues RUNNING trials anyway
            continue


def _progress(done: int, failed: int, target: int | None, pending: int, pts: list, t_start: float,
              timeout: float | None, o: Outcome) -> Progress:
    elapsed = time.perf_counter() - t_start
    front = 0
    best = None
    if pts:
        arr = np.array([p[1] for p in pts])
        front = int(non_dominated(arr).sum())
        best = max(p[2] for p in pts)
    remaining = None
    if target:
        remaining = elapsed / max(done, 1) * max(target - done, 0)
    if timeout is not None:
        remaining = min(remaining, max(timeout - elapsed, 0)) if remaining is not None else max(timeout - elapsed, 0)
    last = {"trial": o.key, "ok": o.ok, "error": o.error}
    if o.ok:
        last.update(accuracy=o.measurement.accuracy, size_bytes=o.measurement.size_bytes,
                    latency_ms=o.measurement.latency_ms)
    return Progress(done, failed, target or 0, pending, front, best, elapsed, remaining, last)
