"""ash.search: check the request, set up (or resume) the study and run its stages. The driver owns the
study; executors evaluate.

Stages, in order (search/stages/): the study's runtime, the untouched baseline, the sensitivity
pre-pass and the narrowed space, the uniform baselines and the warm start enqueued (setup.py), the
ask/tell loop with multi-fidelity screening (loop.py), then the optional refine stage. Every stage
submits its work through the executor and records what it did in the study.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from sqlalchemy.exc import SQLAlchemyError
from torch import nn

from ..errors import ConfigError
from ..executors import make_executor
from ..space import SearchSpace, load_space
from ..task import Task, require_model_and_task
from ..task_check import check_task
from . import display
from .config import SearchConfig, check_names
from .context import Progress
from .loop import run_loop
from .plan import Plan, plan
from .result import SearchResult
from .setup import setup
from .stages.held_out import run_held_out
from .stages.refine import refine_candidates, refine_slack, run_refine, screened_refine_limit
from .study.leases import open_locks
from .study.schema import StudyAttr
from .study.storage import check_storage, counted, storage_failure
from .tell import StudyWarning

__all__ = ["search"]


def search(
    model: nn.Module,
    task: Task,
    space: SearchSpace | str,
    config: SearchConfig | None = None,
    *,
    progress: Callable[[Progress], None] | bool | None = None,
    **settings: Any,
) -> SearchResult:
    """Search per-layer compression policies for `model` on `task`; return the SearchResult.

    `config` (an ash.SearchConfig) holds every setting; keyword `settings` override it (the same
    names: `ash.search(model, task, space, n_trials=20)`). The Optuna study (storage default
    sqlite:///studies/<study_name>.db) keeps every trial; the same storage and study_name resume it.
    `progress`: None (default) shows a progress bar per stage where a person watches (a terminal or a
    notebook), True always, False never; a callable gets every Progress instead (search/display.py).
    docs/search.md describes the stages.
    """
    t_start = time.perf_counter()
    require_model_and_task(model, task, "search")
    if isinstance(space, (str, os.PathLike)):
        space = load_space(space)  # a built-in name ("default", "transformer", ...) or a YAML file
    if not isinstance(space, SearchSpace):
        raise ConfigError(
            f"search: space must be a SearchSpace, a built-in space's name or a YAML path (ash.load_space), "
            f"got {type(space).__name__}."
        )
    if config is not None and not isinstance(config, SearchConfig):
        raise ConfigError(
            f"search: config must be an ash.SearchConfig, got {type(config).__name__}; pass settings "
            "as SearchConfig(...) or as keywords."
        )
    shown = display.resolve(progress, "search")
    check_names(settings, "search")
    cfg = (config or SearchConfig()).replace(**settings)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _run(model, task, space, cfg, shown, t_start)
    finally:
        display.close(shown)
        optuna.logging.set_verbosity(verbosity)


def _run(
    model: nn.Module,
    task: Task,
    space: SearchSpace,
    cfg: SearchConfig,
    progress: Callable[[Progress], None] | None,
    t_start: float,
) -> SearchResult:
    ex = make_executor(cfg.executor)  # an unknown executor is refused before anything is created
    getattr(ex, "check", lambda: None)()  # e.g. a Ray head that does not answer (executors may omit it)
    check_task(model, task)
    p = plan(model, task, space, cfg)
    check_storage(p.storage)  # from here on the study may be created
    try:
        return _stages(model, task, cfg, p, ex, progress, t_start)
    except (OSError, SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        failure = storage_failure(exc, p.storage)
        if failure is None:
            raise
        raise failure from exc


def _stages(
    model: nn.Module,
    task: Task,
    cfg: SearchConfig,
    p: Plan,
    ex: Any,
    progress: Callable[[Progress], None] | None,
    t_start: float,
) -> SearchResult:
    with open_locks(p.storage, p.study_name) as locks:  # this driver's lease; the study's mutex
        try:

            def waiting() -> None:
                warnings.warn(
                    f"study {p.study_name!r}: another driver is setting it up (or claiming a trial); "
                    "waiting for it, then this one joins",
                    StudyWarning,
                    stacklevel=4,
                )

            with locks.mutex(on_wait=waiting):  # set-up is once per study: others wait, then find it stored
                study, result, ctx, bound, pre_s = setup(model, task, cfg, p, locks, ex, progress, t_start)
            tally = run_loop(ctx, bound, cfg.n_trials, counted(study), p.screening, p.finetune)
            if p.refine is not None:
                sources = refine_candidates(
                    study,
                    result.baseline,
                    p.objectives,
                    cfg.max_accuracy_drop,
                    cfg.refine_top,
                    cfg.refine_slack if cfg.refine_slack is not None else refine_slack(p.finetune.steps),
                    screened_limit=screened_refine_limit(study.user_attrs[StudyAttr.SCREEN]),
                    max_latency=cfg.max_latency_ms,
                    skip_refined=False,
                    refit_slack=None if cfg.refine_slack is not None else refine_slack(p.finetune.steps, refitted=True),
                )
                run_refine(ctx, sources, p.refine)
            held = run_held_out(ctx, cfg.max_latency_ms) if task.test_data is not None else (0, 0.0)
        finally:
            ex.shutdown()
    wall = time.perf_counter() - t_start
    clock = ctx.clock
    # overhead: driver wall time not spent waiting for evaluations (study I/O, sampling, executor
    # start-up and dispatch); eval_s sums the workers' evaluation time (> wall with parallel workers);
    # study_s: the loop's study calls (claims under the mutex, sampling, attributes, tells); dispatch_s:
    # the executor's submitting and collecting (Ray); cost: the evaluations' seconds by stage
    # (measure/cost.py), this run's baseline, pre-pass, trials and refine summed
    busy = wall - clock.waited
    result.timing = {
        "wall_s": wall,
        "eval_s": ctx.eval_s,
        "wait_s": clock.waited,
        "overhead_s": busy,
        "overhead_fraction": busy / wall if wall else 0.0,
        "study_s": ctx.study_s,
        "dispatch_s": getattr(ex, "dispatch_s", 0.0),
        "sensitivity_s": pre_s,
        "cost": {stage: round(seconds, 4) for stage, seconds in ctx.cost.items()},
        "held_out_points": held[0],
        "held_out_s": held[1],
        "screening": tally.summary(),
    }
    study.set_user_attr(
        StudyAttr.LAST_RUN, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.timing.items()}
    )
    return result
