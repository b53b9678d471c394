"""Refine stage and the study's runtime: trials of their own, bitwise recipes, kept on resume."""

from __future__ import annotations

import optuna
import pytest

import autoshrink as ash
from autoshrink.errors import ConfigError
from autoshrink.search import load_result
from autoshrink.search.stages.refine import refine_candidates
from autoshrink.zoo import digits_task
from tests.conftest import state_equal

from .conftest import FAST


def run(model, space, tmp_path, name="r", **kw):
    kw.setdefault("n_trials", 8)
    return ash.search(
        model,
        digits_task(device="cpu"),
        space,
        storage=f"sqlite:///{tmp_path}/{name}.db",
        study_name=name,
        latency=FAST,
        **kw,
    )


def test_refined_trials_are_trials_of_their_own_and_replay_bitwise(tiny_model, tiny_space, tmp_path) -> None:
    # NSGA-II's draws give two distinct refine candidates among 8 trials here
    r = run(
        tiny_model,
        tiny_space,
        tmp_path,
        objectives=("accuracy", "size"),
        max_accuracy_drop=0.1,
        refine_top=2,
        refine_steps=12,
        runtime="float",
        sampler="nsga2",
    )
    trials = r.study.trials
    refined = [t for t in trials if t.user_attrs.get("refined_from") is not None]
    # two policies, each with the source's distillation choice, then the other (the space searches it)
    assert len(refined) == 4 and [t.number for t in refined] == [8, 9, 10, 11]
    assert (
        refined[0].user_attrs["refined_from"]
        == refined[1].user_attrs["refined_from"]
        != refined[2].user_attrs["refined_from"]
        == refined[3].user_attrs["refined_from"]
    )
    assert sum(1 for t in trials if t.user_attrs.get("refined_from") is None) == 8  # n_trials: candidates only
    for i, t in enumerate(refined):
        src = trials[t.user_attrs["refined_from"]]
        assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["stage"] == "refined"
        assert t.user_attrs["finetune"]["steps"] == 12 and t.user_attrs["finetune"]["schedule"] == "gradual"
        own = src.user_attrs["policy"]
        assert t.user_attrs["policy"] == (own if i % 2 == 0 else {**own, "distill": not own["distill"]})
        assert t.params == {**src.params, "distill": t.user_attrs["policy"]["distill"]}
    df = r.trials
    assert list(df[df.trial.isin([8, 9, 10, 11])].stage) == ["refined"] * 4
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
    r = run(
        tiny_model, tiny_space, tmp_path, name="c", objectives=("accuracy", "size"), n_trials=12, max_accuracy_drop=0.01
    )
    base = r.baseline
    picked = refine_candidates(r.study, base, r.objectives, 0.01, k=3, slack=0.02)
    done = [t for t in r.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    near = [t for t in done if base.accuracy - t.values[0] <= 0.03 + 1e-12 and t.user_attrs["policy"]["layers"]]
    sizes = [t.values[1] for t in picked]
    assert sizes == sorted(sizes) and len(picked) == min(3, len(picked)) and picked
    for t in picked:  # near-feasible and non-dominated among the near-feasible
        assert t in near
        assert not any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in near)
    assert sizes[0] == min(t.values[1] for t in near)


def test_result_refine_after_loading_from_storage(tiny_model, tiny_space, tmp_path) -> None:
    r = run(
        tiny_model,
        tiny_space,
        tmp_path,
        name="late",
        objectives=("accuracy", "size"),
        n_trials=7,
        max_accuracy_drop=0.1,
    )  # 3 baselines + 2 warm-start allocations x (with, without the teacher)
    assert len(r.study.trials) == 7 and all(t.state.is_finished() for t in r.study.trials)
    loaded = load_result("late", f"sqlite:///{tmp_path}/late.db")
    with pytest.raises(ConfigError, match="pass model= and task="):
        loaded.refine(1)
    rows = loaded.refine(trials=[1], steps=6, model=tiny_model, task=digits_task(device="cpu"), distill=False)
    assert list(rows.trial) == [7] and list(rows.refined_from) == [1] and list(rows.finetune_steps) == [6]
    assert r.study.trials[7].user_attrs["policy"]["distill"] is False  # forced off
    again = r.refine(1, steps=6)  # the search's own model, task and executor; trial 1 already refined
    assert list(again.trial) == [8, 9] and set(again.refined_from) == {int(again.refined_from[0])} != {1}
    assert [r.study.trials[n].user_attrs["policy"]["distill"] for n in (8, 9)] in ([True, False], [False, True])
    with pytest.raises(ConfigError, match=r"refine: distill='yes'; use True, False or None"):
        r.refine(1, distill="yes")
    with pytest.raises(ConfigError, match=r"refine: trial 99 is not in the study \(0\.\.9\)"):
        loaded.refine(trials=[99], model=tiny_model, task=digits_task(device="cpu"))
    with pytest.raises(ConfigError, match=r"refine: no completed, not yet refined trial is within -40\.00 pp"):
        r.refine(1, slack=-0.5)


def test_the_study_runtime_is_decided_once_and_kept_on_resume(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, name="rt", n_trials=4, runtime="int8")
    assert r.study.user_attrs["runtime"] == {"runtime": "int8", "decided_by": "the user"}
    runtimes = {
        t.user_attrs["measurement"]["runtime"] for t in r.study.trials if t.state == optuna.trial.TrialState.COMPLETE
    }
    quantized = [
        t
        for t in r.study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and any(lp["bits"] <= 8 for lp in t.user_attrs["policy"]["layers"].values())
    ]
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


def test_refine_candidates_count_distillation_twins_once() -> None:
    from autoshrink.measure import Measurement
    from autoshrink.search.objectives import OBJECTIVES

    base = Measurement(accuracy=0.9, size_bytes=1000, latency_ms=1.0, macs=100, device="cpu", threads=1, batch_size=1)
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"distill": optuna.distributions.CategoricalDistribution((False, True))}

    def add(acc: float, size: int, sparsity: float, distill: bool) -> None:
        policy = ash.Policy(layers={"fc1": ash.LayerPolicy(sparsity=sparsity)}, distill=distill).to_dict()
        study.add_trial(
            optuna.trial.create_trial(
                values=[acc, size],
                params={"distill": distill},
                distributions=dist,
                user_attrs={"policy": policy, "measurement": {"accuracy": acc}},
            )
        )

    add(0.890, 100, 0.9, True)  # 0: twins of one policy, both on the front (the packer's bytes differ a little)
    add(0.895, 101, 0.9, False)  # 1
    add(0.899, 300, 0.5, True)  # 2: another policy
    add(0.850, 50, 0.95, True)  # 3: beyond max drop + slack
    objs = [OBJECTIVES["accuracy"], OBJECTIVES["size"]]
    picked = refine_candidates(study, base, objs, 0.01, k=2, slack=0.02)
    assert [t.number for t in picked] == [0, 2]  # the twin 1 is the same policy as 0: not a second candidate


def test_refine_takes_screened_out_near_misses_within_the_screened_limit() -> None:
    from autoshrink.measure import Measurement
    from autoshrink.search.objectives import OBJECTIVES
    from autoshrink.search.stages.refine import screened_refine_limit

    base = Measurement(accuracy=0.9, size_bytes=1000, latency_ms=1.0, macs=100, device="cpu", threads=1, batch_size=1)
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"distill": optuna.distributions.CategoricalDistribution((False, True))}

    def policy(sparsity: float, distill: bool = False) -> dict:
        return ash.Policy(layers={"fc1": ash.LayerPolicy(sparsity=sparsity)}, distill=distill).to_dict()

    def screened_out(acc: float, size: int, sparsity: float) -> None:
        m = Measurement(
            accuracy=acc, size_bytes=size, latency_ms=1.0, macs=100, device="cpu", threads=1, batch_size=1
        ).to_dict()
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.PRUNED,
                params={"distill": False},
                distributions=dist,
                user_attrs={"policy": policy(sparsity), "screen": {"measurement": m}},
            )
        )

    study.add_trial(
        optuna.trial.create_trial(
            values=[0.898, 300],
            params={"distill": False},
            distributions=dist,
            user_attrs={"policy": policy(0.5), "measurement": {"accuracy": 0.898}},
        )
    )
    screened_out(0.887, 80, 0.95)  # 1: screened 1.3 pp: within 1.5 x the 1.0 pp screen limit
    screened_out(0.880, 40, 0.98)  # 2: screened 2.0 pp: beyond it
    objs = [OBJECTIVES["accuracy"], OBJECTIVES["size"]]
    limit = screened_refine_limit({"limit": 0.01})
    assert limit == pytest.approx(0.015) and screened_refine_limit(None) is None
    assert screened_refine_limit({"limit": None}) is None
    assert [t.number for t in refine_candidates(study, base, objs, 0.005, k=3, screened_limit=limit)] == [1, 0]
    assert [t.number for t in refine_candidates(study, base, objs, 0.005, k=3)] == [0]  # no screened limit: none


def test_the_runtime_probe_times_only(tiny_model, monkeypatch) -> None:
    """runtime='auto' decides on latencies alone: no accuracy pass and no packing for the probe."""
    import importlib

    import torch

    from autoshrink.executors.base import Job, Request, run_job
    from autoshrink.search.stages.runtime import PROBE_KEY, probe_policy
    from autoshrink.train import FinetuneConfig

    def forbidden(*a, **k):
        raise AssertionError("the probe must not score or pack")

    measure_module = importlib.import_module("autoshrink.measure.measure")
    monkeypatch.setattr(measure_module, "score", forbidden)
    monkeypatch.setattr(measure_module, "packed_size", forbidden)
    task = digits_task(device="cpu")
    job = Job(tiny_model, task, FinetuneConfig(steps=50), latency=FAST)
    o = run_job(job, PROBE_KEY, Request(probe_policy(tiny_model), probe=True))
    assert o.ok and o.error is None and o.measurement is None and o.held_out is None
    from autoshrink.measure.runtime import int8_available, int8_full_available

    cpu = torch.device("cpu")
    int8 = "int8-full" if int8_full_available(cpu) else "int8-dynamic"  # 8-bit inputs where exact here
    expected = {"float", int8} if int8_available(cpu) else {"float"}
    assert set(o.timing.latency_by_runtime) == expected and o.timing.batch_size == task.deploy_batch
    assert o.timing.fastest == min(o.timing.latency_by_runtime, key=o.timing.latency_by_runtime.get)
    assert o.timing.device == "cpu"


def test_refine_candidates_take_each_objective_in_turn_and_look_further_after_post_training() -> None:
    from autoshrink.measure import Measurement
    from autoshrink.search.objectives import OBJECTIVES
    from autoshrink.search.stages.refine import POST_TRAINING_REFINE_SLACK, REFINE_SLACK, refine_slack

    base = Measurement(accuracy=0.9, size_bytes=1000, latency_ms=10.0, macs=100, device="cpu", threads=1, batch_size=1)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])

    def add(acc: float, size: int, ms: float, sparsity: float) -> None:
        policy = ash.Policy(layers={"fc1": ash.LayerPolicy(sparsity=sparsity)}).to_dict()
        study.add_trial(
            optuna.trial.create_trial(
                values=[acc, size, ms],
                user_attrs={"policy": policy, "measurement": {"accuracy": acc, "latency_ms": ms}},
            )
        )

    add(0.895, 100, 9.0, 0.1)  # 0: the smallest, slow
    add(0.894, 200, 5.0, 0.2)  # 1: the fastest within 1 + 2 pp
    add(0.893, 150, 8.0, 0.3)  # 2: second smallest
    add(0.896, 300, 6.0, 0.4)  # 3: second fastest (and the most accurate)
    add(0.840, 400, 2.0, 0.5)  # 4: 6 pp down: only after a post-training search
    objs = [OBJECTIVES["accuracy"], OBJECTIVES["size"], OBJECTIVES["latency"]]
    assert [t.number for t in refine_candidates(study, base, objs, 0.01, k=3, slack=0.02)] == [0, 1, 2]
    assert [t.number for t in refine_candidates(study, base, objs, 0.01, k=5, slack=0.02)] == [0, 1, 2, 3]
    assert [t.number for t in refine_candidates(study, base, objs, 0.01, k=2, slack=0.10)] == [0, 4]
    assert [t.number for t in refine_candidates(study, base, objs[:2], 0.01, k=2, slack=0.02)] == [
        0,
        3,
    ]  # 2 is dominated there
    assert (refine_slack(200), refine_slack(0)) == (REFINE_SLACK, POST_TRAINING_REFINE_SLACK) == (0.02, 0.10)


def test_refine_candidates_take_the_fewest_parameters_left_in_turn_even_off_the_front() -> None:
    from autoshrink.measure import Measurement
    from autoshrink.search.objectives import OBJECTIVES

    base = Measurement(
        accuracy=0.9, size_bytes=1000, latency_ms=10.0, macs=100, device="cpu", threads=1, batch_size=1, params=1000
    )
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])

    def add(acc: float, size: int, ms: float, params: int, sparsity: float) -> None:
        policy = ash.Policy(layers={"fc1": ash.LayerPolicy(sparsity=sparsity)}).to_dict()
        m = {"accuracy": acc, "latency_ms": ms, "params": params}
        attrs = {"policy": policy, "measurement": m}
        study.add_trial(optuna.trial.create_trial(values=[acc, size, ms], user_attrs=attrs))

    add(0.895, 100, 9.0, 1000, 0.1)  # 0: the smallest
    add(0.894, 200, 5.0, 900, 0.2)  # 1: the fastest
    add(0.893, 150, 8.0, 1000, 0.3)  # 2: second smallest
    add(0.880, 300, 9.5, 500, 0.4)  # 3: dominated by 0, the fewest parameters within 1 + 2 pp
    add(0.850, 400, 9.9, 100, 0.5)  # 4: fewer still, 5 pp down: only after a post-training search
    objs = [OBJECTIVES["accuracy"], OBJECTIVES["size"], OBJECTIVES["latency"]]
    assert [t.number for t in refine_candidates(study, base, objs, 0.01, k=3, slack=0.02)] == [0, 1, 3]
    assert [t.number for t in refine_candidates(study, base, objs, 0.01, k=4, slack=0.02)] == [0, 1, 3, 2]
    assert [t.number for t in refine_candidates(study, base, objs, 0.01, k=3, slack=0.10)] == [0, 1, 4]
    assert [t.number for t in refine_candidates(study, base, objs, 0.01, k=5, slack=0.10)] == [0, 1, 4, 2, 3]


def test_refitted_structural_candidates_get_their_own_slack() -> None:
    from autoshrink.measure import Measurement
    from autoshrink.search.objectives import OBJECTIVES
    from autoshrink.search.stages.refine import POST_TRAINING_REFIT_SLACK, refine_slack, refitted

    base = Measurement(
        accuracy=0.9, size_bytes=1000, latency_ms=10.0, macs=100, device="cpu", threads=1, batch_size=1, params=1000
    )
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])

    def add(acc: float, params: int, refit: bool | None) -> None:
        blocks = {} if refit is None else {"b0": ash.BlockPolicy(heads=params / 1000, refit=refit)}
        policy = ash.Policy(layers={"fc1": ash.LayerPolicy(bits=8)}, blocks=blocks).to_dict()
        attrs = {"policy": policy, "measurement": {"accuracy": acc, "latency_ms": 5.0, "params": params}}
        study.add_trial(optuna.trial.create_trial(values=[acc, 100, 5.0], user_attrs=attrs))

    add(0.895, 1000, None)  # 0: the smallest and fastest
    add(0.82, 400, True)  # 1: refitted, 8 pp down: beyond 1 + 5 pp
    add(0.85, 600, True)  # 2: refitted, 5 pp down
    add(0.82, 500, False)  # 3: not refitted, 8 pp down: within 1 + 10 pp
    objs = [OBJECTIVES["accuracy"], OBJECTIVES["size"], OBJECTIVES["latency"]]
    picks = lambda **kw: [t.number for t in refine_candidates(study, base, objs, 0.01, k=4, slack=0.10, **kw)]  # noqa: E731
    assert picks() == [0, 1, 3, 2]  # one slack for all: the refitted 1 has the fewest parameters
    assert picks(refit_slack=0.05) == [0, 3, 2]
    assert (refine_slack(0, refitted=True), refine_slack(200, refitted=True)) == (POST_TRAINING_REFIT_SLACK, 0.02)
    assert POST_TRAINING_REFIT_SLACK == 0.05
    assert refitted({"blocks": {"a": {"heads": 0.5, "refit": True}, "b": {"heads": 0.0, "neurons": 0.0}}})
    assert not refitted({"blocks": {"a": {"heads": 0.5, "refit": True}, "b": {"neurons": 0.25}}})
    assert not refitted({"layers": {}})


@pytest.mark.parametrize(
    ("settings", "slack", "refit_slack"),
    [
        ({"finetune_steps": 0}, 0.10, 0.05),
        ({"finetune_steps": 2}, 0.02, 0.02),
        ({"finetune_steps": 0, "refine_slack": 0.05}, 0.05, None),
    ],
)
def test_the_search_refines_within_its_slack(
    tiny_model, tiny_space, tmp_path, monkeypatch, settings, slack, refit_slack
) -> None:
    import importlib

    search_run = importlib.import_module("autoshrink.search.run")
    seen = []

    def record(study, baseline, objectives, max_drop, k, slack, **kw):
        seen.append((k, slack, kw["refit_slack"]))
        return []

    monkeypatch.setattr(search_run, "refine_candidates", record)
    run(tiny_model, tiny_space, tmp_path, n_trials=3, refine_top=2, runtime="float", **settings)
    assert seen == [(2, slack, refit_slack)]
