"""The report's cost chart: each search stage's evaluation seconds, split by where they went."""

from __future__ import annotations

import optuna

from autoshrink.measure import Measurement
from autoshrink.report.costs import cost_by_stage, cost_figure
from autoshrink.report.figures import trial_frame
from autoshrink.search import SearchResult
from autoshrink.search.objectives import resolve

BASE = Measurement(accuracy=0.9, size_bytes=1000, latency_ms=1.0, macs=100, device="cpu", threads=1, batch_size=1)
POLICY = {"layers": {}, "distill": False}


def _cost(apply: float, finetune: float, pack: float) -> dict[str, float]:
    return {"apply": apply, "calibrate": 0.0, "finetune": finetune, "evaluate": 0.5, "pack": pack, "latency": 0.25}


def test_seconds_by_stage_from_the_trials_and_the_pre_pass() -> None:
    objs = resolve(("accuracy", "size"))
    study = optuna.create_study(directions=[o.direction for o in objs])
    rows = [
        {"layer": "fc1", "field": "bits", "value": 4, "apply_s": 0.5, "calibrate_s": 0.0, "finetune_s": 0.0,
         "evaluate_s": 1.0, "pack_s": 0.25, "latency_s": 0.5},
        {"layer": "fc2", "field": "bits", "value": 4, "apply_s": 0.5, "calibrate_s": 0.0, "finetune_s": 0.0,
         "evaluate_s": 1.0, "pack_s": 0.25, "latency_s": 0.5},
    ]  # fmt: skip
    study.set_user_attr("sensitivity", {"rows": rows, "eval_s": 5.5, "wall_s": 6.0})
    trials = [  # (stage attribute, state, full measurement cost, screening measurement cost)
        (None, "COMPLETE", _cost(1.0, 4.0, 0.5), None),
        ("warm-start", "COMPLETE", _cost(1.0, 8.0, 0.5), _cost(1.0, 2.0, 0.5)),
        (None, "PRUNED", None, _cost(1.0, 2.0, 0.5)),
    ]
    for stage, state, full, screen in trials:
        attrs = {"policy": POLICY, "eval": {"seconds": 1.0}}
        if stage:
            attrs["warm_start"] = {"allocation": 0}
        if full:
            attrs["measurement"] = {**BASE.to_dict(), "accuracy": 0.89, "size_bytes": 500, "cost": full}
        if screen:
            m = {**BASE.to_dict(), "cost": screen}
            attrs["screen"] = {"seconds": 1.0, "decision": "promoted" if full else "stopped", "measurement": m}
        st = optuna.trial.TrialState[state]
        study.add_trial(
            optuna.trial.create_trial(
                state=st, values=[0.89, 500] if full else None, user_attrs={**attrs, "stage": stage or "search"}
            )
        )
    result = SearchResult(study=study, baseline=BASE, objectives=objs)
    frame = trial_frame(result)
    costs = cost_by_stage(result, frame)
    assert costs == {
        "pre-pass": {"apply": 1.0, "calibrate": 0.0, "finetune": 0.0, "evaluate": 2.0, "pack": 0.5, "latency": 1.0},
        "warm-start": {"apply": 2.0, "calibrate": 0.0, "finetune": 10.0, "evaluate": 1.0, "pack": 1.0, "latency": 0.5},
        "search": {"apply": 2.0, "calibrate": 0.0, "finetune": 6.0, "evaluate": 1.0, "pack": 1.0, "latency": 0.5},
    }
    assert list(frame.loc[frame.trial == 1, "eval_s"]) == [2.0]  # the screening evaluation and the full one
    assert list(frame.loc[frame.trial == 2, "eval_s"]) == [1.0]  # screened out: its evaluation was the screen's
    fig = cost_figure(result, frame)
    bars = {bar.name: list(bar.x) for bar in fig.data}
    assert list(fig.data[0].y) == ["pre-pass", "warm-start", "search"]
    assert bars["finetune"] == [0.0, 10.0, 6.0] and bars["pack"] == [0.5, 1.0, 1.0]


def test_no_chart_without_a_recorded_split() -> None:
    objs = resolve(("accuracy", "size"))
    study = optuna.create_study(directions=[o.direction for o in objs])
    m = BASE.to_dict()
    del m["cost"]  # a study written before cost splits existed
    study.add_trial(optuna.trial.create_trial(values=[0.9, 1000], user_attrs={"measurement": m, "policy": POLICY}))
    result = SearchResult(study=study, baseline=BASE, objectives=objs)
    frame = trial_frame(result)
    assert cost_by_stage(result, frame) == {} and cost_figure(result, frame) is None
    assert frame["apply_s"].isna().all()
    assert frame["eval_s"].isna().all()
