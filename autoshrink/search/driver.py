"""ash.search: set up (or resume) the study and run its stages. The driver owns the study; executors evaluate.

Stages, in order: the study's runtime (decided once, runtime.py), the untouched baseline, the
sensitivity pre-pass (sensitivity.py) and the narrowed space (narrow.py), the uniform baselines
and the warm start (warmstart.py) enqueued, the ask/tell loop with multi-fidelity screening
(loop.py, fidelity.py), then the optional refine stage (refine.py). Every stage submits its work
through the executor like any trial, and records what it did in the study.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import optuna
from torch import nn

from ..errors import ConfigError
from ..executors import Job, Outcome, make_executor
from ..measure import LatencyConfig, Measurement
from ..policy import Policy
from ..recipe import InputSpec, fingerprint, versions
from ..space import BoundSpace, SearchSpace, bind
from ..task import Task, require_model_and_task
from ..techniques.structured import structured_blockers
from ..train import FinetuneConfig
from .fidelity import Screening
from .latency_limit import ATTR as LIMIT_ATTR
from .latency_limit import check_limit
from .latency_records import load_table, save_table
from .loop import LoopContext, Progress, WaitClock, run_loop
from .tell import StudyWarning
from .narrow import narrow
from .narrow import narrow_cutoff as cutoff_for
from .objectives import Objective, replayable_values, resolve
from .preflight import check_model_on_task, check_name, check_seed
from .refine import REFINE_STEP_FACTOR, refine_candidates, refine_config, run_refine, screened_refine_limit
from .result import SearchResult, Session
from .runtime import check_runtime, study_runtime
from .sensitivity import Choice1, choices, run_choices
from .samplers import make_sampler
from .drivers import DriverLocks, Reaper, open_locks
from .study import check_storage, counted, default_storage, open_study
from .warmstart import warm_start_params

BASELINE_KEY = -1

__all__ = ["Progress", "search"]


def _baselines(bound: BoundSpace) -> list[dict[str, Any]]:
    """No compression, uniform 8-bit, uniform 50% sparsity, snapped to the space; deduplicated."""
    out: list[dict[str, Any]] = []
    for targets in ({}, {"bits": 8}, {"sparsity": 0.5}):
        params = bound.nearest_params(targets)
        if params not in out:
            out.append(params)
    return out


def _signature(model: nn.Module, bound: BoundSpace, objectives: Sequence[Objective], ft: FinetuneConfig,
               task: Task, cutoff: float | None) -> dict[str, Any]:
    space = {name: list(choice.values) for name, choice in bound.params()}
    digest = hashlib.sha256(json.dumps(space, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"model": type(model).__name__, "space": digest, "finetune": ft.to_dict(),
            "example_input": list(task.example_input.shape), "train_transform": task.transform_name,
            "narrow_cutoff": cutoff}


def _screening(screen: Any) -> Screening | None:
    if screen is False or screen is None:
        return None
    if screen is True:
        return Screening()
    if isinstance(screen, Screening):
        return screen
    if isinstance(screen, (int, float)) and not isinstance(screen, bool):
        return Screening(share=float(screen))
    raise ConfigError(f"search: screen={screen!r}; use True (default), False, a share of the steps (e.g. 0.25) "
                      "or autoshrink.search.Screening(...).")


def _warm_count(warm_start: Any, n_trials: int | None) -> int:
    """How many warm-start policies: True -> min(8, max(2, n_trials // 5)); an int as given; False -> 0."""
    if warm_start is False or warm_start is None:
        return 0
    if warm_start is True:
        return 8 if n_trials is None else min(8, max(2, n_trials // 5))
    if isinstance(warm_start, int) and not isinstance(warm_start, bool) and warm_start >= 0:
        return warm_start
    raise ConfigError(f"search: warm_start={warm_start!r}; use True (default), False or a count >= 0.")


def _positive_int(value: Any, name: str, zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise ConfigError(f"search: {name}={value!r}; use an integer >= {0 if zero else 1}.")


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
    sampler: Any = "front",
    seed: int = 0,
    max_accuracy_drop: float | None = None,
    max_latency_ms: float | None = None,
    latency: LatencyConfig | None = None,
    runtime: str = "auto",
    sensitivity: bool = True,
    narrow_cutoff: float | None = None,
    warm_start: bool | int = True,
    screen: Any = True,
    refine_top: int = 0,
    refine_steps: int | None = None,
    refine_finetune: Mapping[str, Any] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> SearchResult:
    """Search per-layer compression policies for `model` on `task`; return the SearchResult.

    An Optuna study (storage default sqlite:///studies/<study_name>.db) keeps every trial; the same
    storage and study_name resume it (trials left RUNNING by a dead run are re-queued). The first
    trials are uniform baselines (no compression, 8-bit, 50% sparsity). `n_trials` counts finished
    candidate trials in the study; `timeout` (seconds) stops asking new ones. `max_accuracy_drop`
    (fraction) is an Optuna constraint: trials past it stay in the study but not in the front;
    `max_latency_ms` likewise on the measured latency (needs the latency objective), and candidates the
    latency lookup table predicts clearly over it are not run (search/latency_limit.py).
    `runtime` ("auto", "float", "int8", "onnxruntime") is the runtime every trial's latency and accuracy are
    measured on, decided once per study (see search/runtime.py).
    `sensitivity` runs the pre-pass (every single choice alone, search/sensitivity.py), narrows the
    space by it (choices that alone cost more than `narrow_cutoff`, search/narrow.py) and, with
    `warm_start`, enqueues policies allocated from it for a sweep of budgets (search/warmstart.py).
    `screen` fine-tunes each candidate briefly first and only promising ones in full
    (search/fidelity.py). `refine_top=k` re-runs the k best feasible or near-feasible policies
    with `refine_steps` fine-tune steps (default 5x the search's) and gradual pruning, each keeping
    its own layer choices, with and without distillation where the space searches it, as trials of
    their own (search/refine.py; `refine_finetune` overrides settings).
    """
    t_start = time.perf_counter()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _search(model, task, space, objectives=objectives, n_trials=n_trials, timeout=timeout,
                       finetune_steps=finetune_steps, executor=executor, storage=storage, study_name=study_name,
                       sampler=sampler, seed=seed, max_accuracy_drop=max_accuracy_drop,
                       max_latency_ms=max_latency_ms, latency=latency,
                       runtime=runtime, sensitivity=sensitivity, narrow_cutoff=narrow_cutoff, warm_start=warm_start,
                       screen=screen, refine_top=refine_top, refine_steps=refine_steps,
                       refine_finetune=refine_finetune, progress=progress, t_start=t_start)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _search(model: nn.Module, task: Task, space: SearchSpace, *, objectives: Sequence[str], n_trials: int | None,
            timeout: float | None, finetune_steps: int | None, executor: Any, storage: str | None,
            study_name: str | None, sampler: Any, seed: int, max_accuracy_drop: float | None,
            max_latency_ms: float | None, latency: LatencyConfig | None, runtime: str, sensitivity: bool, narrow_cutoff: float | None,
            warm_start: Any, screen: Any, refine_top: int, refine_steps: int | None,
            refine_finetune: Mapping[str, Any] | None, progress: Callable[[Progress], None] | None,
            t_start: float) -> SearchResult:
    require_model_and_task(model, task, "search")
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"search: space must be a SearchSpace (use ash.load_space), got {type(space).__name__}.")
    if n_trials is None and timeout is None:
        raise ConfigError("search: give n_trials and/or timeout, or it would never stop.")
    if n_trials is not None:
        _positive_int(n_trials, "n_trials")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ConfigError(f"search: timeout={timeout!r}; use seconds > 0.")
    if max_accuracy_drop is not None and not (isinstance(max_accuracy_drop, (int, float)) and 0 <= max_accuracy_drop < 1):
        raise ConfigError(f"search: max_accuracy_drop={max_accuracy_drop!r}; use a fraction in [0, 1) (0.01 = 1 pp).")
    check_runtime(runtime)
    _positive_int(refine_top, "refine_top", zero=True)
    if not isinstance(sensitivity, bool):
        raise ConfigError(f"search: sensitivity={sensitivity!r}; use True or False.")
    if narrow_cutoff is not None and (isinstance(narrow_cutoff, bool) or not isinstance(narrow_cutoff, (int, float))
                                      or not 0 < narrow_cutoff <= 1):
        raise ConfigError(f"search: narrow_cutoff={narrow_cutoff!r}; use a drop in (0, 1] (0.1 = 10 pp), or None.")
    screening = _screening(screen)
    n_warm = _warm_count(warm_start, n_trials)
    objs = resolve(objectives)
    max_latency_ms = check_limit(max_latency_ms, [o.name for o in objs])
    check_seed(seed)
    study_name = check_name(study_name or f"autoshrink-{type(model).__name__.lower()}")
    ex = make_executor(executor)  # an unknown executor is refused before anything is created
    check_model_on_task(model, task)
    bound = bind(space, model)
    # layers structured pruning cannot touch (e.g. the classifier) would only waste trials on no-ops
    blocked = structured_blockers(model, bound.structured_candidates(), task.example_input)
    bound = bound.without_structured(blocked)
    if any(o.name == "latency" for o in objs):  # time each searched layer too: the latency lookup table
        latency = replace(latency or LatencyConfig(), layers=tuple(bound.layers))
    ft = space.finetune if finetune_steps is None else FinetuneConfig.from_dict({**space.finetune.to_dict(),
                                                                                 "steps": finetune_steps})
    ft = FinetuneConfig.from_dict({**ft.to_dict(), "seed": seed})
    refine_cfg = refine_config(ft, refine_steps if refine_steps is not None else max(1, REFINE_STEP_FACTOR * ft.steps),
                               refine_finetune) if refine_top else None
    grid = {name: list(choice.values) for name, choice in bound.params()}
    cutoff = cutoff_for(max_accuracy_drop, narrow_cutoff) if sensitivity else None
    first_sampler = make_sampler(sampler, seed=seed, n_trials=n_trials, search_space=grid,
                                 values_of=replayable_values(objs))
    storage = storage or default_storage(study_name)  # from here on the study may be created
    check_storage(storage)
    with open_locks(storage, study_name) as locks:  # this driver's lease; the study's mutex
        try:
            def waiting() -> None:
                warnings.warn(f"study {study_name!r}: another driver is setting it up (or claiming a trial); "
                              "waiting for it, then this one joins", StudyWarning, stacklevel=4)

            with locks.mutex(on_wait=waiting):  # set-up is once per study: others wait, then find it stored
                study, result, ctx, bound, pre_s = _setup(
                    model, task, space, locks, storage=storage, study_name=study_name, objs=objs,
                    first_sampler=first_sampler, bound=bound, ft=ft, cutoff=cutoff, blocked=blocked, executor=executor,
                    ex=ex, latency=latency, runtime=runtime, max_accuracy_drop=max_accuracy_drop,
                    max_latency_ms=max_latency_ms, screening=screening, sampler=sampler, seed=seed, n_trials=n_trials,
                    n_warm=n_warm, progress=progress, timeout=timeout, t_start=t_start)
            tally = run_loop(ctx, bound, n_trials, counted(study), screening, ft)
            if refine_cfg is not None:
                sources = refine_candidates(study, result.baseline, objs, max_accuracy_drop, refine_top,
                                            screened_limit=screened_refine_limit(study.user_attrs["screen"]),
                                            max_latency=max_latency_ms, skip_refined=False)
                run_refine(ctx, sources, refine_cfg)
        finally:
            ex.shutdown()
    wall = time.perf_counter() - t_start
    clock = ctx.clock
    # overhead: driver wall time not spent waiting for evaluations (study I/O, sampling, executor
    # start-up and dispatch); eval_s sums the workers' evaluation time (> wall with parallel workers);
    # study_s: the loop's study calls (claims under the mutex, sampling, attributes, tells); dispatch_s:
    # the executor's submitting and collecting (Ray)
    busy = wall - clock.waited
    result.timing = {"wall_s": wall, "eval_s": ctx.eval_s, "wait_s": clock.waited, "overhead_s": busy,
                     "overhead_fraction": busy / wall if wall else 0.0, "study_s": ctx.study_s,
                     "dispatch_s": getattr(ex, "dispatch_s", 0.0),
                     "sensitivity_s": pre_s,
                     "screening": tally.summary()}
    study.set_user_attr("last_run", {k: (round(v, 4) if isinstance(v, float) else v)
                                     for k, v in result.timing.items()})
    return result


def _setup(model: nn.Module, task: Task, space: SearchSpace, locks: DriverLocks, *, storage: str, study_name: str,
           objs: Sequence[Objective], first_sampler: Any, bound: BoundSpace, ft: FinetuneConfig, cutoff: float | None,
           blocked: list[str], executor: Any, ex: Any, latency: LatencyConfig | None, runtime: str,
           max_accuracy_drop: float | None, max_latency_ms: float | None, screening: Screening | None, sampler: Any,
           seed: int, n_trials: int | None, n_warm: int, progress: Callable[[Progress], None] | None,
           timeout: float | None, t_start: float) -> tuple[optuna.Study, SearchResult, LoopContext, BoundSpace, float]:
    """Under the study mutex: open or create the study, start the executor, decide the runtime, re-queue
    dead drivers' trials, measure the baseline, run the pre-pass and enqueue the first policies -- each
    only where the study does not hold it yet."""
    signature = _signature(model, bound, objs, ft, task, cutoff)
    study, created = open_study(storage, study_name, objs, first_sampler, signature)
    if created:
        study.set_user_attr("finetune", ft.to_dict())
        study.set_user_attr("structured_excluded", blocked)
        # what a recipe exported later needs without the model: its fingerprint and the input spec
        study.set_user_attr("fingerprint", fingerprint(model).to_dict())
        study.set_user_attr("example_input", InputSpec.of(task.example_input).to_dict())
        study.set_user_attr("train_transform", task.transform_name)
        study.set_user_attr("versions", versions())
    clock = WaitClock()
    session = Session(model=model, task=task, executor=executor, latency=latency, finetune=ft)
    ex.start(Job(model=model, task=task, finetune=ft, latency=latency))
    chosen, probe_s = study_runtime(study, runtime, model, ex, clock.wait)  # may refuse a resume
    study.set_user_attr("max_accuracy_drop", max_accuracy_drop)  # this run's constraint, read by load_result
    study.set_user_attr(LIMIT_ATTR, max_latency_ms)  # likewise
    study.set_user_attr("screen", _screen_attr(screening, max_accuracy_drop))  # this run's rule, read by refine
    reaper = Reaper(locks)
    reaper(study, force=True)  # dead drivers' running trials; a live driver's are left alone
    baseline, base_s = _baseline(study, ex, clock, chosen)
    result = SearchResult(study=study, baseline=baseline, objectives=objs, max_accuracy_drop=max_accuracy_drop,
                          max_latency_ms=max_latency_ms, storage=storage, session=session)
    ctx = LoopContext(study=study, ex=ex, clock=clock, objectives=objs, baseline=baseline, runtime=chosen,
                      max_drop=max_accuracy_drop, max_latency=max_latency_ms, progress=progress,
                      t_start=t_start, timeout=timeout, eval_s=probe_s + base_s, locks=locks, reaper=reaper)
    if latency is not None and latency.layers:
        ctx.latency_table = load_table(study)
        if base_s:  # measured in this run (a stored baseline's timings are in the stored table)
            ctx.observe_latency(Policy(), Outcome(BASELINE_KEY, baseline, None, base_s))
    pre_s = 0.0
    if cutoff is not None:
        rows, pre_s = _sensitivity(ctx, bound, ft)
        if pre_s and ctx.latency_table is not None:  # measured in this run: its timings join the table
            for r in rows:
                if r.get("layer_latency_ms"):
                    ctx.latency_table.observe(Choice1(r["layer"], r["field"], r["value"]).policy(),
                                              r["layer_latency_ms"], chosen, baseline.device,
                                              baseline.batch_size)
            save_table(study, ctx.latency_table)
        bound, removed = narrow(bound, rows, cutoff)
        if "narrowed" not in study.user_attrs:
            study.set_user_attr("narrowed", removed)
        if sampler in ("grid", "front"):  # they sample the narrowed space
            study.sampler = make_sampler(sampler, seed=seed, n_trials=n_trials,
                                         search_space={n: list(c.values) for n, c in bound.params()},
                                         values_of=replayable_values(objs))
    if not study.user_attrs.get("enqueued"):
        _enqueue(study, model, bound, baseline, objs, n_warm if cutoff is not None else 0, n_trials)
    return study, result, ctx, bound, pre_s


def _screen_attr(screening: Screening | None, max_drop: float | None) -> dict[str, Any] | None:
    """The screening rule as stored in the study: its settings and, under a constraint, its limit."""
    if screening is None:
        return None
    return {"share": screening.share, "slack": screening.slack, "margin": screening.margin,
            "calibrate": screening.calibrate, "limit": None if max_drop is None else round(screening.limit(max_drop), 6)}


def _sensitivity(ctx: LoopContext, bound: BoundSpace, ft: FinetuneConfig) -> tuple[list[dict[str, Any]], float]:
    """The stored pre-pass table, or run it now on the executor and store it (with its cost); and the
    wall seconds this run spent on it."""
    stored = ctx.study.user_attrs.get("sensitivity")
    if stored:
        return stored["rows"], 0.0
    t0 = time.perf_counter()
    rows, seconds = run_choices(ctx.ex, ctx.clock.wait, choices(bound), ctx.baseline, ctx.runtime, ft.bn_batches,
                                ft.seed)
    ctx.eval_s += seconds
    wall = time.perf_counter() - t0
    ctx.study.set_user_attr("sensitivity", {"rows": rows, "eval_s": round(seconds, 3), "wall_s": round(wall, 3)})
    return rows, wall


def _enqueue(study: optuna.Study, model: nn.Module, bound: BoundSpace, baseline: Measurement,
             objs: Sequence[Objective], n_warm: int, n_trials: int | None) -> None:
    """The uniform baselines, then the warm-start policies (no more than n_trials leaves room for,
    so that none is left waiting when the budget ends), once per study."""
    base = _baselines(bound)
    for params in base:
        study.enqueue_trial(params, user_attrs={"baseline_policy": True})
    warm = []
    if n_warm:
        rows = study.user_attrs["sensitivity"]["rows"]
        warm = [(p, d) for p, d in warm_start_params(model, bound, rows, baseline, [o.name for o in objs], n_warm)
                if p not in base]
        if n_trials is not None:
            warm = warm[:max(0, n_trials - len(base))]
        for params, description in warm:
            study.enqueue_trial(params, user_attrs={"warm_start": description})
    study.set_user_attr("enqueued", {"baselines": len(base), "warm_start": len(warm)})


def _baseline(study: optuna.Study, ex: Any, clock: WaitClock, runtime: str) -> tuple[Measurement, float]:
    """The untouched model's Measurement, measured by the executor once and kept in the study."""
    stored = study.user_attrs.get("baseline")
    if stored:
        return Measurement.from_dict(stored), 0.0
    ex.submit(BASELINE_KEY, Policy(), FinetuneConfig(steps=0), runtime=runtime)
    outcomes: list[Outcome] = []
    while not outcomes:
        outcomes = clock.wait(ex)
    o = outcomes[0]
    if not o.ok:
        raise ConfigError(f"measuring the untouched model failed, so nothing can be compared: {o.error}")
    study.set_user_attr("baseline", o.measurement.to_dict())
    return o.measurement, o.seconds
