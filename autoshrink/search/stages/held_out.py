"""Held-out stage: once the search (and its refine stage) has decided, the baseline and every point of
the final feasible front are scored once on the task's test_data -- the figures a user can ship on.

No decision reads these scores. Each point is replayed by the executor (the same policy, fine-tune and
runtime as its trial, so the same model on the same machine) and scored on test_data and, as a replay
check, on eval_data again -- except a refine trial, whose own evaluation scored the model it measured
(TrialAttr.HELD_OUT: a replay would repeat its long fine-tune). Scores are study attributes
("held_out:<trial>", "held_out:baseline"): finished trials are read-only in Optuna. A point scored
before (a resume) is not scored again.
"""

from __future__ import annotations

import time

from ...executors import Outcome
from ...policy import Policy
from ...train import FinetuneConfig
from ..context import LoopContext, collect
from ..front import feasible_front
from ..study.schema import StudyAttr, TrialAttr, held_out_key

BASELINE_KEY = -1


def run_held_out(ctx: LoopContext, max_latency: float | None) -> tuple[int, float]:
    """Score what is not yet scored; (points scored in this run, kept refine scores included; wall seconds)."""
    study = ctx.study
    kept = 0
    attrs = study.user_attrs
    todo: dict[int, tuple[Policy, FinetuneConfig, str]] = {}
    if held_out_key(None) not in attrs:
        todo[BASELINE_KEY] = (Policy(), FinetuneConfig(steps=0), ctx.baseline.runtime)
    study_ft = attrs[StudyAttr.FINETUNE]
    for t in feasible_front(study, ctx.baseline, ctx.objectives, ctx.max_drop, max_latency):
        if held_out_key(t.number) in attrs:
            continue
        u = t.user_attrs
        if TrialAttr.HELD_OUT in u:
            study.set_user_attr(held_out_key(t.number), u[TrialAttr.HELD_OUT])
            kept += 1
            continue
        ft = FinetuneConfig.from_dict(u.get(TrialAttr.FINETUNE) or study_ft)
        todo[t.number] = (Policy.from_dict(u[TrialAttr.POLICY]), ft, u[TrialAttr.MEASUREMENT]["runtime"])
    if not todo and not kept:
        return 0, 0.0
    t0 = time.perf_counter()
    total = kept + len(todo)
    ctx.announce("held-out", kept, total, t0)
    for key, (policy, ft, runtime) in todo.items():
        ctx.ex.submit(key, policy, ft, runtime=runtime, held_out=True)

    def on_each(done: int, o: Outcome) -> None:
        ctx.announce("held-out", kept + done, total, t0, {"trial": o.key, "ok": o.ok, "error": o.error})

    for key, o in collect(ctx, dict(todo), on_each).items():
        name = held_out_key(None if key == BASELINE_KEY else key)
        if o.held_out is not None:
            study.set_user_attr(name, o.held_out.to_dict())
        else:  # recorded, never hidden: the report says which point has no held-out score and why
            study.set_user_attr(name, {"failure": o.error})
    return total, time.perf_counter() - t0
