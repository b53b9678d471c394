"""Refine stage: the best feasible or near-feasible candidates get a long recovery fine-tune.

Sources: the front of completed trials within `max_accuracy_drop` (1 pp without one) + the slack
(`refine_slack`: REFINE_SLACK, or POST_TRAINING_REFINE_SLACK after a post-training search, and
POST_TRAINING_REFIT_SLACK there for a candidate whose removed heads / neurons were refitted), plus
screened-out trials within REFINE_SCREEN_FACTOR times the screen's limit (fidelity.py), taken from each
non-accuracy objective's ranking in turn (the smallest, the fastest, the next smallest, ...; ties: higher
accuracy), so the refine reaches every end of the front, and where candidates remove parameters physically
(heads, FFN neurons, channels, low-rank factors), a last ranking in the turn: the fewest parameters left
among all of them, on the front or not (with int8 kernels the smallest and the fastest points are low
bit-widths, so the front's ends may hold no structural point); the first k policies (distill twins count
once) re-run with `steps` steps and gradual pruning (`refine_config`). Where the space searches distillation
each is refined with both settings, as the short fine-tune cannot tell which recovers better in the long one
(`distill=True/False` forces one). Results are trials of the same study (`refined_from`, `finetune`, `stage:
refined`), outside n_trials; a policy with a completed refined trial is not refined again. Each is also
scored on the task's test_data in the same evaluation (TrialAttr.HELD_OUT), so the held-out stage need not
repeat its fine-tune; no decision reads that score.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna

from ...errors import ConfigError
from ...executors import Job, make_executor
from ...measure import Measurement
from ...policy import Policy
from ...recipe.fingerprint import fingerprint
from ...train import FinetuneConfig
from ..context import LoopContext, Session, WaitClock, submit_policy
from ..objectives import Objective
from ..pareto import non_dominated
from ..study.leases import open_locks
from ..study.schema import DRIVER_ATTR, StudyAttr, TrialAttr
from ..tell import tell_outcome
from .held_out import run_held_out
from .latency_limit import over_limit

REFINE_SLACK = 0.02
# after a post-training search a candidate's drop is measured before any fine-tune, and removing heads,
# neurons or channels costs far more then than after one (MiniLM, half of every block's heads and FFN
# neurons: 8.6 pp post-training, 1.0 pp after the refine's 200 steps), so the refine looks further out
POST_TRAINING_REFINE_SLACK = 0.10
# where those heads and neurons were refitted (BlockPolicy.refit) a post-training drop overstates less:
# MiniLM's structural candidates lose 0.42-0.46 x as much refitted (half of every block's heads and
# neurons: 7.6 -> 3.2 pp), while the refine's 200 steps end where they end without one (1.3 vs 1.1 pp,
# mean of 3 seeds), so the 10 pp window shrinks in proportion; the wider one only admits what does not recover
POST_TRAINING_REFIT_SLACK = 0.05
# screened-out near misses: a screened drop up to this many times the screen's limit (1.0 pp -> 1.5 pp
# for max_accuracy_drop 0.5 pp): a near miss at the screen can still end within the constraint once refined
REFINE_SCREEN_FACTOR = 1.5
REFINE_STEP_FACTOR = 5  # default refine steps: this many times the search's fine-tune steps
POST_TRAINING_REFINE_STEPS = 200  # default refine steps of a post-training search (0 fine-tune steps)


def refine_steps(search_steps: int) -> int:
    """The refine stage's default fine-tune steps: REFINE_STEP_FACTOR x the search's, or
    POST_TRAINING_REFINE_STEPS after a post-training search (whose candidates were never fine-tuned)."""
    return REFINE_STEP_FACTOR * search_steps if search_steps > 0 else POST_TRAINING_REFINE_STEPS


def refine_slack(search_steps: int, refitted: bool = False) -> float:
    """How far past the accuracy constraint a candidate may be to be refined, by default:
    POST_TRAINING_REFINE_SLACK after a post-training search (0 fine-tune steps), or
    POST_TRAINING_REFIT_SLACK for a candidate whose removed heads / neurons were refitted; else REFINE_SLACK."""
    if search_steps > 0:
        return REFINE_SLACK
    return POST_TRAINING_REFIT_SLACK if refitted else POST_TRAINING_REFINE_SLACK


def refitted(policy: Mapping[str, Any]) -> bool:
    """Whether a policy dict removes heads or neurons, all of them with `refit`."""
    blocks = [b for b in (policy.get("blocks") or {}).values() if b.get("heads") or b.get("neurons")]
    return bool(blocks) and all(b.get("refit") for b in blocks)


REFINE_DEFAULTS: dict[str, Any] = {"schedule": "gradual"}


def for_policy(cfg: FinetuneConfig, policy: Policy) -> FinetuneConfig:
    """The refine fine-tune of one policy: one-shot where a layer's choice is calibrated (GPTQ codes, a
    Wanda or SparseGPT mask are set once from calibration data; a gradual schedule would re-choose them
    by magnitude), else `cfg`."""
    if cfg.schedule == "gradual" and any(lp.calibrated for lp in policy.layers.values()):
        return FinetuneConfig.from_dict({**cfg.to_dict(), "schedule": "oneshot"})
    return cfg


def refine_config(base: FinetuneConfig, steps: int, overrides: Mapping[str, Any] | None = None) -> FinetuneConfig:
    """The refine fine-tune: the study's settings with `steps`, gradual pruning, then `overrides`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"refine: steps={steps!r}; use a positive integer (e.g. 5x the search's fine-tune steps).")
    return FinetuneConfig.from_dict({**base.to_dict(), **REFINE_DEFAULTS, "steps": steps, **dict(overrides or {})})


def layers_key(policy: Mapping[str, Any]) -> str:
    """A policy's per-layer (and per-block) choices without its distillation choice: twins share it."""
    if policy.get("blocks"):
        return json.dumps({"layers": policy.get("layers", {}), "blocks": policy["blocks"]}, sort_keys=True)
    return json.dumps(policy.get("layers", {}), sort_keys=True)


def refined_sources(study: optuna.Study) -> set[str]:
    """The policies (layers_key) that already have a completed refined trial."""
    return {
        layers_key(t.user_attrs[TrialAttr.POLICY])
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get(TrialAttr.REFINED_FROM) is not None and TrialAttr.POLICY in t.user_attrs
    }


def screened_refine_limit(screen: Mapping[str, Any] | None) -> float | None:
    """The largest screened drop a screened-out trial may have to be refined, from the study's stored
    screening rule ("screen" user attribute); None without a screen or a constraint."""
    limit = (screen or {}).get("limit")
    return None if limit is None else REFINE_SCREEN_FACTOR * limit


def refine_candidates(
    study: optuna.Study,
    baseline: Measurement,
    objectives: Sequence[Objective],
    max_drop: float | None,
    k: int,
    slack: float = REFINE_SLACK,
    screened_limit: float | None = None,
    max_latency: float | None = None,
    skip_refined: bool = True,
    refit_slack: float | None = None,
) -> list[optuna.trial.FrozenTrial]:
    """The k trials the refine stage takes (see the module docstring for the rule). `screened_limit`:
    the largest screened drop of a screened-out (PRUNED) trial that may be taken (None: none is);
    `max_latency`: a search's latency limit -- a trial measured over it is not taken (refining keeps
    the layers, so it would stay over). `skip_refined`: leave out policies that already have a completed
    refined trial (False: rank them too -- the search's refine stage then skips what is done, so a
    resume or a second driver refines the same k). `refit_slack`: the slack of a candidate whose removed
    heads / neurons were refitted (`refitted`; None: `slack`)."""
    limit = (0.01 if max_drop is None else max_drop) + slack
    refit_limit = limit if refit_slack is None else (0.01 if max_drop is None else max_drop) + refit_slack
    done = refined_sources(study) if skip_refined else set()
    near: list[tuple[optuna.trial.FrozenTrial, list[float]]] = []
    params: dict[int, int] = {}  # parameters left after physical removal (heads, neurons, channels)
    for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ):
        if (
            TrialAttr.POLICY not in t.user_attrs
            or t.user_attrs.get(TrialAttr.REFINED_FROM) is not None
            or layers_key(t.user_attrs[TrialAttr.POLICY]) in done
            or not Policy.from_dict(t.user_attrs[TrialAttr.POLICY]).changes_model
        ):
            continue
        if t.state == optuna.trial.TrialState.COMPLETE and TrialAttr.MEASUREMENT in t.user_attrs:
            if max_latency is not None and over_limit(t.user_attrs[TrialAttr.MEASUREMENT]["latency_ms"], max_latency):
                continue
            within = refit_limit if refitted(t.user_attrs[TrialAttr.POLICY]) else limit
            if baseline.accuracy - t.user_attrs[TrialAttr.MEASUREMENT]["accuracy"] <= within + 1e-12:
                near.append((t, list(t.values)))
                params[t.number] = int(t.user_attrs[TrialAttr.MEASUREMENT].get("params") or 0)
        elif screened_limit is not None and "measurement" in (t.user_attrs.get(TrialAttr.SCREEN) or {}):
            m = Measurement.from_dict(t.user_attrs[TrialAttr.SCREEN]["measurement"])
            if baseline.accuracy - m.accuracy <= screened_limit + 1e-12 and not over_limit(m.latency_ms, max_latency):
                near.append((t, [o.value(m) for o in objectives]))
                params[t.number] = m.params
    if not near:
        return []
    points = np.array([[o.normalized(v, baseline) for o, v in zip(objectives, vals)] for _, vals in near], dtype=float)
    front = [tv for tv, keep in zip(near, non_dominated(points)) if keep]
    acc = next((i for i, o in enumerate(objectives) if o.maximize), None)
    costs = [i for i, o in enumerate(objectives) if not o.maximize] or [None]

    def ranking(i: int | None) -> list[optuna.trial.FrozenTrial]:
        def key(tv: tuple[optuna.trial.FrozenTrial, list[float]]) -> tuple[float, float, int]:
            vals = tv[1]
            return (vals[i] if i is not None else 0.0, -vals[acc] if acc is not None else 0.0, tv[0].number)

        return [t for t, _ in sorted(front, key=key)]

    rankings = [ranking(i) for i in costs]
    removed = [tv for tv in near if 0 < params[tv[0].number] < baseline.params]
    if removed:  # the fewest parameters left, off the front too: what the rankings above may never reach
        by_params = sorted(removed, key=lambda tv: (params[tv[0].number], -tv[1][acc] if acc is not None else 0.0))
        rankings.append([t for t, _ in by_params])
    picked: dict[str, optuna.trial.FrozenTrial] = {}
    for rank in range(max(map(len, rankings))):  # each ranking's next in turn; twins: the first taken stands for both
        for order in rankings:
            if len(picked) < k and rank < len(order):
                picked.setdefault(layers_key(order[rank].user_attrs[TrialAttr.POLICY]), order[rank])
    return list(picked.values())[:k]


def _taken(study: optuna.Study, locks: Any, cfg: FinetuneConfig) -> set[tuple[str, bool]]:
    """(layers, distill) of refined trials with the fine-tune `cfg` that completed, or are running on a
    live driver: running them again would only repeat them."""
    out = set()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    for t in study.get_trials(deepcopy=False, states=states):
        attrs = t.user_attrs
        if attrs.get(TrialAttr.REFINED_FROM) is None or TrialAttr.POLICY not in attrs:
            continue
        if attrs.get(TrialAttr.FINETUNE) != for_policy(cfg, Policy.from_dict(attrs[TrialAttr.POLICY])).to_dict():
            continue
        if t.state == optuna.trial.TrialState.RUNNING:
            who = t.user_attrs.get(DRIVER_ATTR)
            if locks is None or who is None or not locks.alive(who):
                continue
        out.add(
            (layers_key(t.user_attrs[TrialAttr.POLICY]), bool(t.user_attrs[TrialAttr.POLICY].get("distill", False)))
        )
    return out


def run_refine(
    ctx: LoopContext, sources: Sequence[optuna.trial.FrozenTrial], cfg: FinetuneConfig, distill: bool | None = None
) -> list[int]:
    """Evaluate each source's policy with the refine fine-tune as new trials; return the new numbers.
    `distill` forces distillation on or off; by default the source's own choice, then the other one
    where the space searches it (the source's params name `distill`)."""
    study = ctx.study
    trials: dict[int, optuna.trial.Trial] = {}
    variants = []
    for src in sources:
        own = Policy.from_dict(src.user_attrs[TrialAttr.POLICY])
        if distill is not None:
            choices = [distill]
        elif "distill" in src.params:
            choices = [own.distill, not own.distill]
        else:
            choices = [own.distill]
        variants += [(src, Policy(layers=own.layers, distill=c, blocks=own.blocks)) for c in choices]
    with ctx.locks.mutex() if ctx.locks is not None else contextlib.nullcontext():
        taken = _taken(study, ctx.locks, cfg)  # identical refines another driver ran or is running
        for src, policy in variants:
            if (layers_key(policy.to_dict()), policy.distill) in taken:
                continue
            params = dict(src.params)
            if "distill" in params:
                params["distill"] = policy.distill
            attrs = {
                "refined_from": src.number,
                "stage": "refined",
                "finetune": for_policy(cfg, policy).to_dict(),
                "policy": policy.to_dict(),
            }
            if ctx.locks is not None:
                attrs[DRIVER_ATTR] = ctx.locks.driver_id
            template = optuna.trial.create_trial(
                state=optuna.trial.TrialState.RUNNING, params=params, distributions=src.distributions, user_attrs=attrs
            )
            trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
            trial = optuna.trial.Trial(study, trial_id)
            trials[trial.number] = trial
    for number, trial in trials.items():
        policy = Policy.from_dict(trial.user_attrs[TrialAttr.POLICY])
        submit_policy(ctx, number, policy, for_policy(cfg, policy), score_test=True)
    pending = dict(trials)
    start = time.perf_counter()
    ctx.announce("refine", 0, len(trials), start)
    try:
        while pending:
            for o in ctx.clock.wait(ctx.ex):
                ctx.account(o)
                tell_outcome(ctx, pending.pop(o.key), o)
                done = (len(trials) - len(pending), len(trials), start)
                ctx.report(o, len(pending), counts=False, stage="refined", tally=done)
    except BaseException:
        ctx.ex.cancel()
        for trial in pending.values():  # not re-queued: the refine stage redoes sources without a refined trial
            try:
                trial.set_user_attr(TrialAttr.FAILURE, "the search was interrupted while this refine trial was pending")
                trial.set_user_attr(TrialAttr.CRASHED, True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            except Exception:  # noqa: BLE001 - best effort while unwinding
                continue
        raise
    return sorted(trials)


def refine_study(
    study: optuna.Study,
    baseline: Measurement,
    objectives: Sequence[Objective],
    *,
    max_accuracy_drop: float | None,
    max_latency_ms: float | None,
    storage: str | None,
    session: Session | None,
    k: int = 1,
    steps: int | None = None,
    trials: Sequence[int] | None = None,
    model: Any = None,
    task: Any = None,
    executor: Any = None,
    finetune: Mapping[str, Any] | None = None,
    slack: float | None = None,
    distill: bool | None = None,
    progress: Callable[[Any], None] | None = None,
) -> list[int]:
    """SearchResult.refine: the refine stage after a search, on its study; the new trials' numbers."""
    s = session
    model = model if model is not None else (s.model if s else None)
    task = task if task is not None else (s.task if s else None)
    if model is None or task is None:
        raise ConfigError(
            "refine: this result was loaded from storage; pass model= and task= (the ones the search used)."
        )
    stored = study.user_attrs.get(StudyAttr.FINGERPRINT)
    if stored and stored.get("sha256") != fingerprint(model).sha256:
        raise ConfigError(
            f"refine: the model does not match the architecture study {study.study_name!r} "
            f"searched ({stored.get('class')}). Fix: pass the model the search used."
        )
    ft = FinetuneConfig.from_dict(study.user_attrs[StudyAttr.FINETUNE])
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"refine: k={k!r}; use a positive integer.")
    cfg = refine_config(ft, steps if steps is not None else refine_steps(ft.steps), finetune)
    if distill is not None and not isinstance(distill, bool):
        raise ConfigError(f"refine: distill={distill!r}; use True, False or None (both where the space searches it).")
    if trials is not None:
        sources = []
        for n in trials:
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < len(study.trials):
                raise ConfigError(f"refine: trial {n!r} is not in the study (0..{len(study.trials) - 1}).")
            t = study.trials[n]
            screened_out = t.state == optuna.trial.TrialState.PRUNED and TrialAttr.SCREEN in t.user_attrs
            if (
                t.state != optuna.trial.TrialState.COMPLETE and not screened_out
            ) or TrialAttr.POLICY not in t.user_attrs:
                raise ConfigError(f"refine: trial {n} is {t.state.name}; pick a completed or screened-out trial.")
            if all(
                layers_key(o.user_attrs[TrialAttr.POLICY]) != layers_key(t.user_attrs[TrialAttr.POLICY])
                for o in sources
            ):
                sources.append(t)  # twins (same layers, other distillation choice) are refined once
    else:
        refit_slack = refine_slack(ft.steps, refitted=True) if slack is None else None
        slack = refine_slack(ft.steps) if slack is None else slack
        screened = screened_refine_limit(study.user_attrs.get(StudyAttr.SCREEN))
        sources = refine_candidates(
            study,
            baseline,
            objectives,
            max_accuracy_drop,
            k,
            slack,
            screened_limit=screened,
            max_latency=max_latency_ms,
            refit_slack=refit_slack,
        )
        if not sources:
            limit = (0.01 if max_accuracy_drop is None else max_accuracy_drop) + slack
            also = "" if screened is None else f" (nor a screened-out one within {screened * 100:.2f} pp screened)"
            raise ConfigError(
                f"refine: no completed, not yet refined trial is within {limit * 100:.2f} pp of the "
                f"baseline{also}, so nothing can be refined. Fix: pass trials=[...], a larger "
                "slack, or run more trials."
            )
    runtime = (study.user_attrs.get(StudyAttr.RUNTIME) or {}).get("runtime", "float")
    ex = make_executor(executor if executor is not None else (s.executor if s else "local"))
    clock = WaitClock()
    shared = open_locks(storage, study.study_name) if storage else contextlib.nullcontext(None)
    with shared as locks:  # other drivers may share the study
        ctx = LoopContext(
            study=study,
            ex=ex,
            clock=clock,
            objectives=objectives,
            baseline=baseline,
            runtime=runtime,
            max_drop=max_accuracy_drop,
            progress=progress,
            t_start=time.perf_counter(),
            locks=locks,
        )
        try:
            ex.start(Job(model=model, task=task, finetune=ft, latency=s.latency if s else None))
            numbers = run_refine(ctx, sources, cfg, distill=distill)
            if task.test_data is not None:  # the refined front's new points, scored once on test_data
                run_held_out(ctx, max_latency_ms)
        finally:
            ex.shutdown()
    return numbers
