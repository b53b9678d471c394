"""The ask/tell loop: ask the sampler, hand policies to the executor, tell the study what came back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import optuna

from ..executors import Outcome
from ..measure import Measurement
from ..policy import Policy
from ..space import BoundSpace
from ..train import FinetuneConfig
from .context import LoopContext, Progress, stage_of
from .stages.fidelity import Screening
from .stages.latency_limit import skip_margin, skip_reason
from .stages.refine import for_policy
from .study.claims import claim
from .study.schema import TrialAttr
from .tell import (
    abandon,
    lease_lost,
    promoted_pairs,
    skip_candidate,
    skip_twin,
    tell_outcome,
    tell_screened_out,
    twin_verdict,
)


@dataclass
class _Pending:
    trial: optuna.trial.Trial
    policy: Policy
    stage: str  # "zero" (the zero-step rung), "screen" or "full"
    finetune: FinetuneConfig | None = None  # the trial's own full fine-tune (None: the study's)


def _own_finetune(full: FinetuneConfig | None, policy: Policy) -> FinetuneConfig | None:
    """The trial's own fine-tune where it differs from the study's: one-shot for a policy with
    calibrated choices under a gradual schedule (they are set once from calibration data)."""
    if full is None or full.steps == 0:
        return None
    own = for_policy(full, policy)
    return None if own == full else own


@dataclass
class ScreenTally:
    """What screening did in this run: counts and evaluation seconds per fidelity."""

    promoted: int = 0
    stopped: int = 0
    screen_s: float = 0.0
    zero_promoted: int = 0
    zero_stopped: int = 0
    zero_s: float = 0.0
    full_s: list[float] = field(default_factory=list)  # full evaluations of promoted candidates

    def summary(self) -> dict[str, Any]:
        """Counts, seconds, and the full-evaluation time the stopped candidates did not spend --
        an estimate: stopped candidates times the mean full evaluation of the promoted ones."""
        mean_full = sum(self.full_s) / len(self.full_s) if self.full_s else None
        return {
            "screened": self.promoted + self.stopped,
            "promoted": self.promoted,
            "stopped": self.stopped,
            "screen_s": round(self.screen_s, 3),
            "full_s": round(sum(self.full_s), 3),
            "saved_s_estimated": None if mean_full is None else round(self.stopped * mean_full, 3),
            **(
                {
                    "zero_step": {
                        "promoted": self.zero_promoted,
                        "stopped": self.zero_stopped,
                        "seconds": round(self.zero_s, 3),
                    }
                }
                if self.zero_promoted + self.zero_stopped
                else {}
            ),
        }


def run_loop(
    ctx: LoopContext,
    bound: BoundSpace,
    n_trials: int | None,
    counted: int,
    screening: Screening | None = None,
    full: FinetuneConfig | None = None,
) -> ScreenTally:
    """Ask, evaluate and tell until `n_trials` candidates are finished in the study -- by this driver
    and any other on the same study (drivers.claim) -- or the timeout passes. With `screening`
    (fidelity.Screening) and the full fine-tune settings, candidates are screened first and only
    promoted ones fine-tuned in full (see fidelity.py)."""
    study, ex = ctx.study, ctx.ex
    pending: dict[int, _Pending] = {}
    capacity = max(1, int(getattr(ex, "capacity", 1)))
    ctx.done = counted
    ctx.target = n_trials
    tally = ScreenTally()
    screened: list[Measurement] = []
    pairs = promoted_pairs(study, ctx.baseline)  # distill -> [(screened drop, full drop)]: the screen's calibration
    screen_cfg = screening.config(full) if screening is not None and full is not None else None
    zero = screen_cfg is not None and screening.zero_step
    zero_pairs = promoted_pairs(study, ctx.baseline, TrialAttr.ZERO_STEP) if zero else {}
    if ctx.progress:  # the trials start: counts so far, the time the timeout leaves
        elapsed = time.perf_counter() - ctx.t_start
        left = None if ctx.timeout is None else max(ctx.timeout - elapsed, 0.0)
        ctx.progress(Progress(counted, 0, n_trials or 0, 0, 0, None, elapsed, left, {}, "trials"))
    try:
        while True:
            while len(pending) < capacity and (ctx.timeout is None or time.perf_counter() - ctx.t_start < ctx.timeout):
                with ctx.on_study():
                    trial = claim(study, ctx.locks, ctx.reaper, n_trials)
                    if trial is None:
                        break
                    policy = bound.sample(trial)
                    stage = stage_of(trial)
                    trial.set_user_attr(TrialAttr.POLICY, policy.to_dict())
                    trial.set_user_attr(TrialAttr.STAGE, stage)
                verdict = twin_verdict(study, ctx.baseline) if stage == "warm-start" else None
                if verdict is not None and policy.distill != verdict[0]:
                    skip_twin(ctx, trial, verdict)
                    continue
                predicted = ctx.predict_latency(trial, policy)
                why = (
                    skip_reason(predicted, ctx.max_latency, skip_margin(study))
                    if ctx.max_latency is not None and stage != "baseline"
                    else None
                )
                if why is not None:
                    skip_candidate(ctx, trial, why)
                    continue
                own = _own_finetune(full, policy)
                if own is not None:  # a calibrated choice under a gradual schedule: one-shot (refine.for_policy)
                    with ctx.on_study():
                        trial.set_user_attr(TrialAttr.FINETUNE, own.to_dict())
                if zero and stage != "baseline" and policy.changes_model:
                    ex.submit(trial.number, policy, screening.zero_step_config(own or full), runtime=ctx.runtime)
                    pending[trial.number] = _Pending(trial, policy, "zero", own)
                elif screen_cfg is not None and stage != "baseline" and policy.changes_model:
                    ex.submit(
                        trial.number, policy, screen_cfg if own is None else screening.config(own), runtime=ctx.runtime
                    )
                    pending[trial.number] = _Pending(trial, policy, "screen", own)
                else:
                    ex.submit(trial.number, policy, own, runtime=ctx.runtime)
                    pending[trial.number] = _Pending(trial, policy, "full", own)
            if not pending:
                break
            for o in ctx.clock.wait(ex):
                p = pending.pop(o.key)
                try:
                    ctx.account(o)
                    ctx.observe_latency(p.policy, o)
                    if p.stage == "zero" and o.ok:
                        tally.zero_s += o.seconds
                        promote, why = screening.promote_zero_step(
                            o.measurement, ctx.baseline, ctx.max_drop, zero_pairs.get(p.policy.distill, [])
                        )
                        p.trial.set_user_attr(
                            TrialAttr.ZERO_STEP,
                            {
                                "seconds": round(o.seconds, 4),
                                "decision": "promoted" if promote else "stopped",
                                "reason": why,
                                "measurement": o.measurement.to_dict(),
                            },
                        )
                        if promote:
                            tally.zero_promoted += 1
                            cfg = screen_cfg if p.finetune is None else screening.config(p.finetune)
                            ex.submit(o.key, p.policy, cfg, runtime=ctx.runtime)
                            pending[o.key] = _Pending(p.trial, p.policy, "screen", p.finetune)
                            continue
                        tally.zero_stopped += 1
                        with ctx.on_study():
                            tell_screened_out(ctx, p.trial, o)
                        ctx.report(o, len(pending), full=False, stage=stage_of(p.trial))
                        continue
                    if p.stage == "screen" and o.ok:
                        tally.screen_s += o.seconds
                        promote, why = screening.promote(
                            o.measurement,
                            ctx.baseline,
                            ctx.max_drop,
                            ctx.objectives,
                            screened,
                            pairs.get(p.policy.distill, []),
                        )
                        screened.append(o.measurement)
                        p.trial.set_user_attr(
                            TrialAttr.SCREEN,
                            {
                                "steps": (screen_cfg if p.finetune is None else screening.config(p.finetune)).steps,
                                "seconds": round(o.seconds, 4),
                                "decision": "promoted" if promote else "stopped",
                                "reason": why,
                                "measurement": o.measurement.to_dict(),
                            },
                        )
                        if promote:
                            tally.promoted += 1
                            ex.submit(o.key, p.policy, p.finetune, runtime=ctx.runtime)
                            pending[o.key] = _Pending(p.trial, p.policy, "full", p.finetune)
                            continue
                        tally.stopped += 1
                        with ctx.on_study():
                            tell_screened_out(ctx, p.trial, o)
                        ctx.report(o, len(pending), full=False, stage=stage_of(p.trial))
                        continue
                    else:
                        if p.stage == "zero":
                            o = Outcome(
                                o.key, None, f"zero-step evaluation: {o.error}", o.seconds, o.worker, o.attempts
                            )
                        elif p.stage == "screen":
                            o = Outcome(o.key, None, f"screening fine-tune: {o.error}", o.seconds, o.worker, o.attempts)
                        elif p.trial.user_attrs.get(TrialAttr.SCREEN):
                            tally.full_s.append(o.seconds)
                            zero_m = p.trial.user_attrs.get(TrialAttr.ZERO_STEP)
                            if o.ok and zero_m:
                                zero_pairs.setdefault(p.policy.distill, []).append(
                                    (
                                        ctx.baseline.accuracy - zero_m["measurement"]["accuracy"],
                                        ctx.baseline.accuracy - o.measurement.accuracy,
                                    )
                                )
                            if o.ok:
                                screen = Measurement.from_dict(p.trial.user_attrs[TrialAttr.SCREEN]["measurement"])
                                pairs.setdefault(p.policy.distill, []).append(
                                    (
                                        ctx.baseline.accuracy - screen.accuracy,
                                        ctx.baseline.accuracy - o.measurement.accuracy,
                                    )
                                )
                        with ctx.on_study():
                            tell_outcome(ctx, p.trial, o)
                    ctx.report(o, len(pending), stage=stage_of(p.trial))
                except optuna.exceptions.UpdateFinishedTrialError:
                    lease_lost(o.key)
    except BaseException:
        abandon(study, ex, {k: p.trial for k, p in pending.items()})
        raise
    return tally
