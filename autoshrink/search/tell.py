"""Writing to the study from the loop: tell outcomes (COMPLETE, FAIL, screened out, skipped), the warm-start
twin verdict, re-queue on interruption, and a result for a trial another driver re-queued."""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna

from ..errors import ConfigError
from ..executors import Outcome
from ..measure import Measurement
from ..techniques.apply import CompressionWarning
from .context import LoopContext
from .stages.latency_limit import relative_excess
from .study.schema import TrialAttr
from .study.storage import requeue_attrs


class StudyWarning(CompressionWarning):
    """Something about the shared study a user should know (printed as one line by the CLI)."""


def lease_lost(number: int) -> None:
    """Another driver finished `number` while this one evaluated it: this driver's lease was taken for a
    dead one's (its database connection dropped). The trial was re-queued there; this result is dropped."""
    warnings.warn(
        f"trial {number}: another driver failed and re-queued it while this one evaluated it (this "
        "driver's lease on the storage was lost, e.g. its database connection dropped); this result is "
        "dropped and the re-queued trial runs again.",
        StudyWarning,
        stacklevel=2,
    )


def twin_verdict(study: optuna.Study, baseline: Measurement) -> tuple[bool, int] | None:
    """(the distill setting that recovered better, its allocation) from the first warm-start
    allocation whose two twins both finished in full with different accuracies; None before."""
    twins: dict[int, dict[bool, float]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        what, m = t.user_attrs.get(TrialAttr.WARM_START), t.user_attrs.get(TrialAttr.MEASUREMENT)
        if isinstance(what, dict) and "allocation" in what and m and t.user_attrs.get(TrialAttr.REFINED_FROM) is None:
            twins.setdefault(int(what["allocation"]), {})[bool(t.user_attrs[TrialAttr.POLICY].get("distill"))] = m[
                "accuracy"
            ]
    for allocation in sorted(twins):
        acc = twins[allocation]
        if len(acc) == 2 and acc[True] != acc[False]:
            return acc[True] > acc[False], allocation
    return None


def skip_candidate(ctx: LoopContext, trial: optuna.trial.Trial, why: str) -> None:
    """A candidate not run (predicted over the latency limit, or a losing warm-start twin): told PRUNED
    unevaluated, `why` kept as "skipped"; it counts towards n_trials."""
    trial.set_user_attr(TrialAttr.SKIPPED, why)
    ctx.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    ctx.done += 1


def skip_twin(ctx: LoopContext, trial: optuna.trial.Trial, verdict: tuple[bool, int]) -> None:
    """A warm-start twin whose distill setting lost on an earlier allocation: told PRUNED unevaluated."""
    winner, allocation = verdict
    skip_candidate(
        ctx,
        trial,
        f"not run: on warm-start allocation {allocation} distill={winner} recovered "
        f"better than distill={not winner} in the full fine-tune",
    )


def promoted_pairs(
    study: optuna.Study, baseline: Measurement, rung: str = TrialAttr.SCREEN
) -> dict[bool, list[tuple[float, float]]]:
    """(drop at `rung` -- the screen, or the zero-step rung -- and full drop) of the study's candidates
    with both, by their distill setting, in trial order."""
    out: dict[bool, list[tuple[float, float]]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        early, full = t.user_attrs.get(rung), t.user_attrs.get(TrialAttr.MEASUREMENT)
        if early and full and t.user_attrs.get(TrialAttr.REFINED_FROM) is None:
            distill = bool(t.user_attrs.get(TrialAttr.POLICY, {}).get("distill", False))
            out.setdefault(distill, []).append(
                (baseline.accuracy - early["measurement"]["accuracy"], baseline.accuracy - full["accuracy"])
            )
    return out


def tell_screened_out(ctx: LoopContext, trial: optuna.trial.Trial, o: Outcome) -> None:
    """A candidate the screen (or the zero-step rung) stopped: PRUNED, with its measurement kept as
    "screen" (or "zero_step")."""
    trial.set_user_attr(TrialAttr.EVAL, {"seconds": round(o.seconds, 4), "worker": o.worker, "attempts": o.attempts})
    frozen = ctx.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    if frozen.state != optuna.trial.TrialState.PRUNED:
        raise ConfigError(f"trial {trial.number}: Optuna did not accept the PRUNED state ({frozen.state.name}).")


def tell_outcome(ctx: LoopContext, trial: optuna.trial.Trial, o: Outcome) -> bool:
    """Tell the study one evaluation: COMPLETE with its values (and the constraint), or FAIL with the reason."""
    study = ctx.study
    # few writes per trial: each user attribute is one storage transaction
    trial.set_user_attr(TrialAttr.EVAL, {"seconds": round(o.seconds, 4), "worker": o.worker, "attempts": o.attempts})
    if not o.ok:
        trial.set_user_attr(TrialAttr.FAILURE, o.error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False
    m = o.measurement
    values = ctx.values(m)
    if not all(math.isfinite(v) for v in values):
        trial.set_user_attr(TrialAttr.FAILURE, f"non-finite objective values {values}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False
    trial.set_user_attr(TrialAttr.MEASUREMENT, m.to_dict())
    if o.held_out is not None:
        trial.set_user_attr(TrialAttr.HELD_OUT, o.held_out.to_dict())
    if ctx.max_drop is not None:
        trial.set_constraint("accuracy_drop", (ctx.baseline.accuracy - m.accuracy) - ctx.max_drop)
    if ctx.max_latency is not None:
        trial.set_constraint("latency", relative_excess(m.latency_ms, ctx.max_latency))
    frozen = study.tell(trial, values)
    if frozen.state != optuna.trial.TrialState.COMPLETE:  # Optuna fails a bad tell silently
        raise ConfigError(f"trial {trial.number}: Optuna did not accept values {values} (state {frozen.state.name}).")
    return True


def abandon(study: optuna.Study, ex: Any, pending: dict[int, optuna.trial.Trial]) -> None:
    """Interrupted (Ctrl-C or an error): fail pending trials and queue their parameters again."""
    ex.cancel()
    for number, trial in pending.items():
        try:
            trial.set_user_attr(TrialAttr.FAILURE, "the search was interrupted while this trial was pending; re-queued")
            trial.set_user_attr(TrialAttr.CRASHED, True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(trial.params, user_attrs=requeue_attrs(trial, number))
        except Exception:  # noqa: BLE001 - best effort while unwinding; resume re-queues RUNNING trials anyway
            continue
