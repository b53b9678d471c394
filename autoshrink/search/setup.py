"""Before the loop: the study's set-up under its mutex (open or create, runtime, baseline, pre-pass,
narrowing, enqueued policies), from the Plan (plan.py)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from torch import nn

from ..errors import ConfigError
from ..executors import Executor, Job, Outcome
from ..inputs import is_mapping
from ..measure import Measurement
from ..measure.cost import STAGES
from ..policy import Policy
from ..recipe import InputSpec, fingerprint, versions
from ..space import BoundSpace
from ..task import Task
from ..train import FinetuneConfig
from .config import SearchConfig
from .context import LoopContext, Progress, Session, WaitClock, stage_progress
from .objectives import Objective, replayable_values
from .plan import Plan
from .result import SearchResult
from .sampling.samplers import make_sampler
from .stages.fidelity import Screening
from .stages.latency_limit import ATTR as LIMIT_ATTR
from .stages.narrow import narrow
from .stages.prepass_budget import (
    budget_seconds,
    enqueue_room,
    estimates,
    plan_prepass,
    prepass_examples,
    shared_row,
    stopped_at_budget,
    subsample_accuracy,
)
from .stages.runtime import study_runtime
from .stages.sensitivity import Choice1, choices, run_choices
from .stages.warmstart import warm_start_params
from .study.claims import Reaper
from .study.latency_records import load_table, save_table
from .study.leases import DriverLocks
from .study.schema import StudyAttr, TrialAttr
from .study.storage import open_study

BASELINE_KEY = -1


def _baselines(bound: BoundSpace) -> list[dict[str, Any]]:
    """No compression, uniform 8-bit, uniform 50% sparsity and, where the space removes heads and FFN
    neurons, uniform 8-bit with half of every block's heads and neurons (a structural point on the front
    from the start: the sampler alone rarely reaches one, and the refine ranks what is there); snapped to
    the space; deduplicated."""
    out: list[dict[str, Any]] = []
    for targets in ({}, {"bits": 8}, {"sparsity": 0.5}, {"bits": 8, "heads": 0.5, "neurons": 0.5}):
        params = bound.nearest_params(targets)
        if params not in out:
            out.append(params)
    return out


def _signature(
    model: nn.Module,
    bound: BoundSpace,
    objectives: Sequence[Objective],
    ft: FinetuneConfig,
    task: Task,
    cutoff: float | None,
) -> dict[str, Any]:
    space = {name: list(choice.values) for name, choice in bound.params()}
    digest = hashlib.sha256(json.dumps(space, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = {
        "model": type(model).__name__,
        "space": digest,
        "finetune": ft.to_dict(),
        "example_input": _input_shapes(task.example_input),
        "train_transform": task.transform_name,
        "narrow_cutoff": cutoff,
    }
    if task.split_record() is not None:  # only then: a study written before held-out splits still resumes
        out["split"] = task.split_record()
    if task.unlabeled_count is not None:  # likewise
        out["unlabeled"] = task.unlabeled_count
    return out


def setup(
    model: nn.Module,
    task: Task,
    cfg: SearchConfig,
    plan: Plan,
    locks: DriverLocks,
    ex: Executor,
    progress: Callable[[Progress], None] | None,
    t_start: float,
) -> tuple[optuna.Study, SearchResult, LoopContext, BoundSpace, float]:
    """Under the study mutex: open or create the study, start the executor, decide the runtime, re-queue
    dead drivers' trials, measure the baseline, run the pre-pass and enqueue the first policies -- each
    only where the study does not hold it yet."""
    bound, objs, ft, cutoff = plan.bound, plan.objectives, plan.finetune, plan.cutoff
    signature = _signature(model, bound, objs, ft, task, cutoff)
    study, created = open_study(plan.storage, plan.study_name, objs, plan.first_sampler, signature)
    if created:
        study.set_user_attr(StudyAttr.FINETUNE, ft.to_dict())
        study.set_user_attr(StudyAttr.STRUCTURED_EXCLUDED, plan.blocked)
        # what a recipe exported later needs without the model: its fingerprint and the input spec
        study.set_user_attr(StudyAttr.FINGERPRINT, fingerprint(model).to_dict())
        study.set_user_attr(StudyAttr.EXAMPLE_INPUT, InputSpec.of(task.example_input).to_dict())
        study.set_user_attr(StudyAttr.TRAIN_TRANSFORM, task.transform_name)
        if task.unlabeled_count is not None:
            study.set_user_attr(StudyAttr.UNLABELED, task.unlabeled_count)
        if task.split_record() is not None:
            study.set_user_attr(StudyAttr.SPLIT, task.split_record())
        study.set_user_attr(StudyAttr.VERSIONS, versions())
    clock = WaitClock()
    session = Session(model=model, task=task, executor=cfg.executor, latency=plan.latency, finetune=ft)
    ex.start(Job(model=model, task=task, finetune=ft, latency=plan.latency))
    if progress is not None and cfg.runtime == "auto" and StudyAttr.RUNTIME not in study.user_attrs:
        progress(stage_progress("runtime", 0, 1, t_start, time.perf_counter()))  # the probe below
    chosen, probe_s = study_runtime(study, cfg.runtime, model, ex, clock.wait)  # may refuse a resume
    study.set_user_attr(
        StudyAttr.MAX_ACCURACY_DROP, cfg.max_accuracy_drop
    )  # this run's constraint, read by load_result
    study.set_user_attr(LIMIT_ATTR, cfg.max_latency_ms)  # likewise
    study.set_user_attr(
        StudyAttr.SCREEN, _screen_attr(plan.screening, cfg.max_accuracy_drop)
    )  # this run's rule, read by refine
    reaper = Reaper(locks)
    reaper(study, force=True)  # dead drivers' running trials; a live driver's are left alone
    if progress is not None and StudyAttr.BASELINE not in study.user_attrs:
        progress(stage_progress("baseline", 0, 1, t_start, time.perf_counter()))
    baseline, base_s = _baseline(study, ex, clock, chosen)
    result = SearchResult(
        study=study,
        baseline=baseline,
        objectives=objs,
        max_accuracy_drop=cfg.max_accuracy_drop,
        max_latency_ms=cfg.max_latency_ms,
        storage=plan.storage,
        session=session,
    )
    ctx = LoopContext(
        study=study,
        ex=ex,
        clock=clock,
        objectives=objs,
        baseline=baseline,
        runtime=chosen,
        max_drop=cfg.max_accuracy_drop,
        max_latency=cfg.max_latency_ms,
        progress=progress,
        t_start=t_start,
        timeout=cfg.timeout,
        eval_s=probe_s + base_s,
        locks=locks,
        reaper=reaper,
    )
    if base_s:  # measured in this run
        ctx.add_cost(baseline.cost)
    if plan.latency is not None and plan.latency.layers:
        ctx.latency_table = load_table(study)
        if base_s:  # measured in this run (a stored baseline's timings are in the stored table)
            ctx.observe_latency(Policy(), Outcome(BASELINE_KEY, baseline, None, base_s))
    pre_s = 0.0
    if cutoff is not None:
        rows, pre_s = _sensitivity(ctx, bound, ft, model, task, cfg.n_trials, cfg.sensitivity == "full")
        if pre_s and ctx.latency_table is not None:  # measured in this run: its timings join the table
            for r in rows:
                if r.get("layer_latency_ms"):  # measured rows only (a shared copy has none)
                    ctx.latency_table.observe(
                        Choice1.from_row(r).policy(),
                        r["layer_latency_ms"],
                        chosen,
                        baseline.device,
                        baseline.batch_size,
                    )
            save_table(study, ctx.latency_table)
        bound, removed = narrow(bound, rows, cutoff)
        if StudyAttr.NARROWED not in study.user_attrs:
            study.set_user_attr(StudyAttr.NARROWED, removed)
        if cfg.sampler in ("grid", "front"):  # they sample the narrowed space
            study.sampler = make_sampler(
                cfg.sampler,
                seed=cfg.seed,
                n_trials=cfg.n_trials,
                search_space={n: list(c.values) for n, c in bound.params()},
                values_of=replayable_values(objs),
            )
    if not study.user_attrs.get(StudyAttr.ENQUEUED):
        trial_s = estimates(baseline, ft, len(task.eval_data), task.batch_size)[2]
        room = enqueue_room(cfg.n_trials, cfg.timeout, trial_s, pre_s)
        _enqueue(study, model, bound, baseline, objs, plan.n_warm if cutoff is not None else 0, room)
    return study, result, ctx, bound, pre_s


def _screen_attr(screening: Screening | None, max_drop: float | None) -> dict[str, Any] | None:
    """The screening rule as stored in the study: its settings and, under a constraint, its limit."""
    if screening is None:
        return None
    return {
        "share": screening.share,
        "slack": screening.slack,
        "margin": screening.margin,
        "calibrate": screening.calibrate,
        "limit": None if max_drop is None else round(screening.limit(max_drop), 6),
        **({"zero_step": True} if screening.zero_step else {}),
    }


def _sensitivity(
    ctx: LoopContext,
    bound: BoundSpace,
    ft: FinetuneConfig,
    model: nn.Module,
    task: Task,
    n_trials: int | None,
    full: bool,
) -> tuple[list[dict[str, Any]], float]:
    """The stored pre-pass table, or run what the budget pays for now on the executor and store it (with
    its plan and cost; stages/prepass_budget.py); and the wall seconds this run spent on it."""
    stored = ctx.study.user_attrs.get(StudyAttr.SENSITIVITY)
    if stored:
        return stored["rows"], 0.0
    t0 = time.perf_counter()
    items = choices(bound)
    sub = None if full or not ctx.baseline.correct else prepass_examples(task)
    base_accuracy = None if sub is None else subsample_accuracy(ctx.baseline, sub)
    scored = None if sub is None else len(sub)
    choice_s, calibrated_s, trial_s = estimates(ctx.baseline, ft, len(task.eval_data), task.batch_size, scored)
    budget = None if full else budget_seconds(ctx.timeout, n_trials, trial_s)
    plan = plan_prepass(items, model, budget, choice_s, calibrated_s)
    ctx.announce("pre-pass", 0, len(plan.measured), t0)

    def on_row(done: int, c: Choice1, o: Outcome) -> None:
        last = {"layer": c.layer, "field": c.field, "value": c.value, "ok": o.ok, "error": o.error}
        if o.ok:
            last["accuracy_drop"] = (base_accuracy or ctx.baseline.accuracy) - o.measurement.accuracy
        ctx.announce("pre-pass", done, len(plan.measured), t0, last)

    deadline = None if budget is None else t0 + budget
    rows, seconds = run_choices(
        ctx.ex,
        ctx.clock.wait,
        plan.measured,
        ctx.baseline,
        ctx.runtime,
        ft.bn_batches,
        ft.seed,
        on_row,
        deadline,
        sub,
        base_accuracy,
        ft.bias_correction,
    )
    ctx.eval_s += seconds
    for r in rows:
        ctx.add_cost({stage: r[f"{stage}_s"] for stage in STAGES if r.get(f"{stage}_s") is not None})
    measured = {(r["layer"], r["field"], r["value"]): r for r in rows}
    copies = [(c, rep) for c, rep in plan.copies if (rep.layer, rep.field, rep.value) in measured]
    rows += [shared_row(measured[(rep.layer, rep.field, rep.value)], c.layer) for c, rep in copies]
    wall = time.perf_counter() - t0
    info = {**plan.info, "estimated_trial_s": round(trial_s, 4), "examples": scored or len(task.eval_data)}
    if sub is not None:
        info["subsample"] = f"each choice scored on {scored} of the {len(task.eval_data)} selection examples"
    if len(measured) < len(plan.measured):  # the deadline cut it short
        info.update(stopped_at_budget(info, len(plan.measured) - len(measured), len(plan.copies) - len(copies), wall))
    ctx.study.set_user_attr(
        StudyAttr.SENSITIVITY,
        {"rows": rows, "eval_s": round(seconds, 3), "wall_s": round(wall, 3), "plan": info},
    )
    return rows, wall


def _enqueue(
    study: optuna.Study,
    model: nn.Module,
    bound: BoundSpace,
    baseline: Measurement,
    objs: Sequence[Objective],
    n_warm: int,
    n_trials: int | None,
) -> None:
    """The uniform baselines, then the warm-start policies (no more than `n_trials` leaves room for, so
    that none is left waiting when the budget ends; a search with a timeout passes half the trials it is
    expected to leave, prepass_budget.enqueue_room), once per study."""
    base = _baselines(bound)
    for params in base:
        study.enqueue_trial(params, user_attrs={TrialAttr.BASELINE_POLICY: True})
    warm = []
    if n_warm:
        rows = study.user_attrs[StudyAttr.SENSITIVITY]["rows"]
        warm = [
            (p, d)
            for p, d in warm_start_params(model, bound, rows, baseline, [o.name for o in objs], n_warm)
            if p not in base
        ]
        if n_trials is not None:
            warm = warm[: max(0, n_trials - len(base))]
        for params, description in warm:
            study.enqueue_trial(params, user_attrs={TrialAttr.WARM_START: description})
    study.set_user_attr(StudyAttr.ENQUEUED, {"baselines": len(base), "warm_start": len(warm)})


def _baseline(study: optuna.Study, ex: Executor, clock: WaitClock, runtime: str) -> tuple[Measurement, float]:
    """The untouched model's Measurement, measured by the executor once and kept in the study."""
    stored = study.user_attrs.get(StudyAttr.BASELINE)
    if stored:
        return Measurement.from_dict(stored), 0.0
    ex.submit(BASELINE_KEY, Policy(), FinetuneConfig(steps=0), runtime=runtime)
    outcomes: list[Outcome] = []
    while not outcomes:
        outcomes = clock.wait(ex)
    o = outcomes[0]
    if not o.ok:
        raise ConfigError(f"measuring the untouched model failed, so nothing can be compared: {o.error}")
    study.set_user_attr(StudyAttr.BASELINE, o.measurement.to_dict())
    return o.measurement, o.seconds


def _input_shapes(x: Any) -> Any:
    """What a study's description records of the example input: its shape, or each named input's."""
    if is_mapping(x):
        return {k: list(v.shape) for k, v in x.items()}
    return list(x.shape)
