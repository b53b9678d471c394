"""Refine stage and the study's runtime: trials of their own, bitwise recipes, kept on resume."""
from __future__ import annotations

import optuna
import pytest

import autoshrink as ash
from autoshrink.errors import ConfigError
from autoshrink.search import load_result
from autoshrink.search.refine import refine_candidates
from autoshrink.zoo import digits_task
from tests.conftest import state_equal

from .conftest import FAST


def run(model, space, tmp_path, name="r", **kw):
    kw.setdefault("n_trials", 8)
    return ash.search(model, digits_task(device="cpu"), space, storage=f"sqlite:///{tmp_path}/{name}.db",
                      study_name=name, latency=FAST, **kw)


def test_refined_trials_are_trials_of_their_own_and_replay_bitwise(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, objectives=("accuracy", "size"), max_accuracy_drop=0.1,
            refine_top=2, refine_steps=12, runtime="float")
    trials = r.study.trials
    refined = [t for t in trials if t.user_attrs.get("refined_from") is not None]
    assert len(refined) == 2 and [t.number for t in refined] == [8, 9]
    assert sum(1 for t in trials if t.user_attrs.get("refined_from") is None) == 8  # n_trials: candidates only
    for t in refined:
        src = trials[t.user_attrs["refined_from"]]
        assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["stage"] == "refined"
        assert t.user_attrs["finetune"]["steps"] == 12 and t.user_attrs["finetune"]["schedule"] == "gradual"
        assert t.user_attrs["policy"] == src.user_attrs["policy"]  # the source's policy, distillation choice too
        assert t.params == src.params
    df = r.trials
    assert list(df[df.trial.isin([8, 9])].stage) == ["refined", "refined"]
    # the recipe of a refined trial carries the refine fine-tune and replays it bitwise
    task = digits_task(device="cpu")
    recipe = r.recipe(9)
    assert recipe.finetune.steps == 12 and recipe.finetune.schedule == "gradual"
    assert recipe.policy == ash.Policy.from_dict(r.study.trials[9].user_attrs["policy"])
    small = ash.apply_recipe(tiny_model, recipe, task=task)
    again = ash.apply_recipe(tiny_model, recipe, task=task)
    assert state_equal(small, again)
    m = ash.measure(small, task, latency=FAST)  # the recipe's runtime, remembered by apply_recipe
    assert m.size_bytes == recipe.metrics.size_bytes and m.accuracy == recipe.metrics.accuracy


def test_refine_candidates_are_the_near_feasible_front_most_compressed_first(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, name="c", objectives=("accuracy", "size"), n_trials=12,
            max_accuracy_drop=0.01)
    base = r.baseline
    picked = refine_candidates(r.study, base, r.objectives, 0.01, k=3, slack=0.02)
    done = [t for t in r.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    near = [t for t in done if base.accuracy - t.values[0] <= 0.03 + 1e-12 and t.user_attrs["policy"]["layers"]]
    sizes = [t.values[1] for t in picked]
    assert sizes == sorted(sizes) and len(picked) == min(3, len(picked)) and picked
    for t in picked:  # near-feasible and non-dominated among the near-feasible
        assert t in near
        assert not any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
                       for o in near)
    assert sizes[0] == min(t.values[1] for t in near)


def test_result_refine_after_loading_from_storage(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, name="late", objectives=("accuracy", "size"), n_trials=6,
            max_accuracy_drop=0.1)
    loaded = load_result("late", f"sqlite:///{tmp_path}/late.db")
    with pytest.raises(ConfigError, match="pass model= and task="):
        loaded.refine(1)
    rows = loaded.refine(trials=[1], steps=6, model=tiny_model, task=digits_task(device="cpu"))
    assert list(rows.trial) == [6] and list(rows.refined_from) == [1] and list(rows.finetune_steps) == [6]
    again = r.refine(1, steps=6)  # the search's own model, task and executor; trial 1 already refined
    assert len(again) == 1 and int(again.refined_from[0]) in range(6) and int(again.trial[0]) == 7
    with pytest.raises(ConfigError, match=r"refine: trial 99 is not in the study \(0\.\.7\)"):
        loaded.refine(trials=[99], model=tiny_model, task=digits_task(device="cpu"))
    with pytest.raises(ConfigError, match=r"refine: no completed, not yet refined trial is within -40\.00 pp"):
        r.refine(1, slack=-0.5)


def test_the_study_runtime_is_decided_once_and_kept_on_resume(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, name="rt", n_trials=4, runtime="int8")
    assert r.study.user_attrs["runtime"] == {"runtime": "int8", "decided_by": "the user"}
    runtimes = {t.user_attrs["measurement"]["runtime"] for t in r.study.trials
                if t.state == optuna.trial.TrialState.COMPLETE}
    quantized = [t for t in r.study.trials if t.state == optuna.trial.TrialState.COMPLETE
                 and any(lp["bits"] <= 8 for lp in t.user_attrs["policy"]["layers"].values())]
    assert all(t.user_attrs["measurement"]["runtime"] == "int8-dynamic" for t in quantized)
    assert runtimes <= {"int8-dynamic", "float"}
    again = run(tiny_model, tiny_space, tmp_path, name="rt", n_trials=6)  # runtime="auto": the stored one wins
    assert again.study.user_attrs["runtime"]["runtime"] == "int8"
    with pytest.raises(ConfigError, match="measures on runtime 'int8'.*resume it with runtime='int8' or 'auto'"):
        run(tiny_model, tiny_space, tmp_path, name="rt", n_trials=7, runtime="float")
    auto = run(tiny_model, tiny_space, tmp_path, name="auto", n_trials=3)
    decided = auto.study.user_attrs["runtime"]
    assert decided["runtime"] in ("float", "int8") and decided["decided_by"].startswith("auto: every Linear at 8 bits")


def test_trials_say_how_they_came_to_be(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, name="st", n_trials=6)
    stages = [t.user_attrs["stage"] for t in r.study.trials]
    assert stages[:3] == ["baseline"] * 3 and set(stages[3:]) <= {"search", "warm-start"}
