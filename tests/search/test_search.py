from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import optuna
import pytest

import autoshrink as ash
from autoshrink.errors import ConfigError
from autoshrink.executors import LocalExecutor
from autoshrink.search import hypervolume, non_dominated
from autoshrink.zoo import digits_task

from .conftest import FAST


def run(model, space, tmp_path, name="s", **kw):
    kw.setdefault("n_trials", 10)
    kw.setdefault("sensitivity", "full")  # these tests are about the stages, not the pre-pass budget
    return ash.search(
        model,
        digits_task(device="cpu"),
        space,
        storage=f"sqlite:///{tmp_path}/{name}.db",
        study_name=name,
        latency=FAST,
        **kw,
    )


def test_front_is_non_empty_and_truly_non_dominated(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, objectives=("accuracy", "size"), n_trials=14)
    assert len(r.study.trials) == 14 and r.baseline.size_bytes > 0
    front = r.pareto
    assert len(front) >= 1
    done = r.trials[r.trials.state == "COMPLETE"]
    for _, p in front.iterrows():  # no completed trial dominates a front point
        better = done[
            (done.accuracy >= p.accuracy)
            & (done.size_bytes <= p.size_bytes)
            & ((done.accuracy > p.accuracy) | (done.size_bytes < p.size_bytes))
        ]
        assert better.empty, f"trial {p.trial} is dominated by {list(better.trial)}"
    for _, t in done.iterrows():  # every completed trial off the front is dominated by one on it
        if t.trial not in set(front.trial):
            assert ((front.accuracy >= t.accuracy) & (front.size_bytes <= t.size_bytes)).any()
    assert set(front.columns) >= {
        "trial",
        "accuracy",
        "size_bytes",
        "latency_ms",
        "macs",
        "compression",
        "speedup",
        "policy",
    }
    assert r.study.metric_names == ["accuracy", "size_bytes"]
    assert [d.name for d in r.study.directions] == ["MAXIMIZE", "MINIMIZE"]


def test_baselines_are_the_first_trials(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, n_trials=5)
    policies = [ash.Policy.from_dict(t.user_attrs["policy"]) for t in r.study.trials[:3]]
    L = ash.LayerPolicy
    assert policies == [
        ash.Policy(),
        ash.Policy(layers={"fc1": L(bits=8), "fc2": L(bits=8)}),
        ash.Policy(layers={"fc1": L(sparsity=0.5), "fc2": L(sparsity=0.5)}),
    ]
    first = r.study.trials[0].user_attrs["measurement"]
    assert first["size_bytes"] == r.baseline.size_bytes and first["accuracy"] == r.baseline.accuracy
    assert r.study.trials[0].params == {
        "fc1.sparsity": 0.0,
        "fc1.bits": 32,
        "fc2.sparsity": 0.0,
        "fc2.bits": 32,
        "distill": False,
    }


def test_trial_attributes_hold_measurement_and_breakdown(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, n_trials=4)
    attrs = r.study.trials[1].user_attrs
    m = attrs["measurement"]
    assert list(r.study.trials[1].values) == [m["accuracy"], m["size_bytes"], m["latency_ms"]]
    assert m["runtime"] in ("float", "int8-dynamic") and m["device"] == "cpu"
    assert [layer["name"] for layer in m["layers"]] == ["fc1.weight", "fc2.weight"]
    assert m["layers"][0]["bits"] == 8 and attrs["eval"]["seconds"] > 0 and attrs["eval"]["worker"] == "local"
    assert attrs["policy"] == {
        "layers": {
            "fc1": {"sparsity": 0.0, "structured": False, "bits": 8, "rank": 1.0},
            "fc2": {"sparsity": 0.0, "structured": False, "bits": 8, "rank": 1.0},
        },
        "distill": False,
    }


class FailingExecutor(LocalExecutor):
    """Makes trial 4's evaluation fail for real (a policy naming a layer the model lacks)."""

    def submit(self, key, policy, finetune=None, **kw):
        if key == 4:
            policy = ash.Policy(layers={"no_such_layer": ash.LayerPolicy(bits=8)})
        super().submit(key, policy, finetune, **kw)


def test_a_failing_evaluation_is_recorded_and_the_search_goes_on(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, n_trials=8, executor=FailingExecutor())
    states = [t.state for t in r.study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and states[4] == optuna.trial.TrialState.FAIL
    assert states.count(optuna.trial.TrialState.COMPLETE) == 7
    reason = r.study.trials[4].user_attrs["failure"]
    # trial 4 is screened first (a short fine-tune), which is where it fails
    assert reason.startswith(
        "screening fine-tune: PolicyError: policy names 1 layer(s) the model does not have: 'no_such_layer'"
    )


def test_constraint_excludes_infeasible_points_from_the_front(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, n_trials=14, objectives=("accuracy", "size"), max_accuracy_drop=0.01)
    drops = r.trials.dropna(subset=["accuracy"]).accuracy_drop
    assert (drops > 0.01).any(), "the test needs some infeasible trials"
    assert (r.pareto.accuracy_drop <= 0.01 + 1e-12).all() and len(r.pareto) >= 1
    t = next(t for t in r.study.trials if t.state.name == "COMPLETE" and r.baseline.accuracy - t.values[0] > 0.01)
    assert t.system_attrs["constraints:accuracy_drop"] > 0
    best = r.best(max_accuracy_drop=0.01, minimize="size")
    feasible = r.trials[(r.trials.state == "COMPLETE") & (r.trials.accuracy_drop <= 0.01)]
    assert best.measurement.size_bytes == feasible.size_bytes.min()


def test_same_seed_same_trials(tiny_model, tiny_space, tmp_path) -> None:
    a = run(tiny_model, tiny_space, tmp_path, name="a", n_trials=10, seed=3)
    b = run(tiny_model, tiny_space, tmp_path, name="b", n_trials=10, seed=3)
    c = run(tiny_model, tiny_space, tmp_path, name="c", n_trials=10, seed=4)
    params = lambda r: [t.params for t in r.study.trials]  # noqa: E731
    assert params(a) == params(b) and params(a) != params(c)

    def measured(r):  # the full measurement, or the screen's for a candidate the screen stopped
        return [
            (
                t.state.name,
                (t.user_attrs.get("measurement") or t.user_attrs["screen"]["measurement"])["accuracy"],
                (t.user_attrs.get("measurement") or t.user_attrs["screen"]["measurement"])["size_bytes"],
            )
            for t in r.study.trials
        ]

    assert measured(a) == measured(b)
    exact = ("layer", "field", "value", "accuracy", "size_bytes", "macs_saved")  # not the timings
    rows = lambda r: [{k: row[k] for k in exact} for row in r.study.user_attrs["sensitivity"]["rows"]]  # noqa: E731
    assert rows(a) == rows(b)


KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    import autoshrink as ash
    from autoshrink.executors import LocalExecutor
    from autoshrink.zoo import digits_task
    sys.path.insert(0, {root!r})
    from tests.search.conftest import Tiny, FAST

    class DieOnFifth(LocalExecutor):
        def wait(self, timeout=None):
            key = self._pending[0][0]
            if key == 4:
                os._exit(17)  # the driver dies while trial 4 is RUNNING
            return super().wait(timeout)

    torch.manual_seed(0)
    model = Tiny()
    model.load_state_dict(torch.load({weights!r}))
    ash.search(model, digits_task(device="cpu"), ash.load_space({space!r}), n_trials=8,
               storage={storage!r}, study_name="k", latency=FAST, executor=DieOnFifth())
""")


def test_killed_search_resumes_keeps_completed_trials_and_reaches_n_trials(tiny_model, tiny_space, tmp_path) -> None:
    from pathlib import Path

    import torch

    weights = str(tmp_path / "w.pt")
    torch.save(tiny_model.state_dict(), weights)
    storage = f"sqlite:///{tmp_path}/k.db"
    script = KILL_SCRIPT.format(
        root=str(Path(__file__).resolve().parents[2]),
        weights=weights,
        space=str(tiny_space.source.name),
        storage=storage,
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]
    study = optuna.load_study(study_name="k", storage=storage)
    before = {t.number: (t.params, t.values) for t in study.trials if t.state.name == "COMPLETE"}
    assert sorted(before) == [0, 1, 2, 3] and study.trials[4].state.name == "RUNNING"
    killed_params = study.trials[4].params

    r = ash.search(
        tiny_model, digits_task(device="cpu"), tiny_space, n_trials=8, storage=storage, study_name="k", latency=FAST
    )
    trials = r.study.trials
    assert {t.number: (t.params, t.values) for t in trials if t.number in before} == before
    assert trials[4].state.name == "FAIL" and trials[4].user_attrs["crashed"] is True
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 4)
    assert retry.params == killed_params and retry.state.name == "COMPLETE"
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]  # PRUNED: stopped by the screen
    assert len(finished) == 8 and len(trials) == 9


def test_resume_with_other_objectives_or_space_fails_clearly(tiny_model, tiny_space, tmp_path) -> None:
    run(tiny_model, tiny_space, tmp_path, name="r", n_trials=3)
    with pytest.raises(
        ConfigError,
        match=r"created with objectives \['accuracy', 'size', 'latency'\], not "
        r"\['accuracy', 'size'\]",
    ):
        run(tiny_model, tiny_space, tmp_path, name="r", n_trials=4, objectives=("accuracy", "size"))
    with pytest.raises(ConfigError, match="different search setup.*changed: finetune"):
        run(tiny_model, tiny_space, tmp_path, name="r", n_trials=4, finetune_steps=50)
    r = run(tiny_model, tiny_space, tmp_path, name="r", n_trials=5)  # same settings resume
    assert len(r.study.trials) == 5


def test_bad_arguments(tiny_model, tiny_space, tmp_path) -> None:
    for kw, msg in [
        ({"objectives": ("accuracy", "speed")}, "search: objectives=('accuracy', 'speed'); objectives: got 'speed'"),
        ({"sampler": "cmaes"}, "search: sampler='cmaes'; use one of front"),
        ({"n_trials": 0}, "search: n_trials=0; use an integer >= 1"),
        ({"n_trials": None}, "search: give n_trials and/or timeout"),
        ({"max_accuracy_drop": 2}, "search: max_accuracy_drop=2; use a fraction in [0, 1)"),
        ({"executor": "dask"}, "search: executor='dask'; use 'local', 'ray'"),
        ({"n_trails": 3}, "search: unknown setting 'n_trails' (did you mean 'n_trials'?)"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            run(tiny_model, tiny_space, tmp_path, **kw)


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "gp"])
def test_every_sampler_runs(tiny_model, tiny_space, tmp_path, sampler: str) -> None:
    r = run(tiny_model, tiny_space, tmp_path, name=sampler, n_trials=6, sampler=sampler)
    assert sum(t.state.name == "COMPLETE" for t in r.study.trials) == 6


def test_timeout_stops_asking(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, n_trials=None, timeout=1.5)
    assert 1 <= len(r.study.trials) < 200 and r.timing["wall_s"] < 30


def test_hypervolume_matches_a_hand_computed_case() -> None:
    pts = np.array([[0.01, 0.2], [0.03, 0.1], [0.04, 0.5], [0.2, 0.05]])
    ref = np.array([0.05, 1.1])
    # non-dominated inside the reference: (0.01, 0.2) and (0.03, 0.1); (0.04, 0.5) is dominated
    expected = (0.03 - 0.01) * (1.1 - 0.2) + (0.05 - 0.03) * (1.1 - 0.1)
    assert hypervolume(pts, ref) == pytest.approx(expected)
    assert list(non_dominated(pts)) == [True, True, False, True]
    assert hypervolume(np.array([[0.02]]), np.array([0.05])) == pytest.approx(0.03)
    assert hypervolume(np.zeros((0, 2)), ref) == 0.0


def test_timing_accounts_for_the_driver(tiny_model, tiny_space, tmp_path) -> None:
    r = run(tiny_model, tiny_space, tmp_path, n_trials=6)
    t = r.timing
    assert 0 < t["overhead_fraction"] < 1 and t["overhead_s"] == pytest.approx(t["wall_s"] - t["wait_s"])
    assert t["wait_s"] == pytest.approx(t["eval_s"], rel=0.05)  # local: waiting is evaluating


def test_load_result_restores_the_constraint(tiny_model, tiny_space, tmp_path) -> None:
    from autoshrink.search import load_result

    r = run(tiny_model, tiny_space, tmp_path, n_trials=8, max_accuracy_drop=0.01)
    loaded = load_result("s", f"sqlite:///{tmp_path}/s.db")
    assert loaded.max_accuracy_drop == 0.01
    assert list(loaded.pareto.trial) == list(r.pareto.trial) and loaded.hypervolume() == r.hypervolume()


def test_structured_is_not_searched_where_it_cannot_apply(tiny_model, tmp_path) -> None:
    p = tmp_path / "st.yaml"
    p.write_text("defaults: {sparsity: [0.0, 0.5], structured: [false, true]}\nfinetune: {steps: 2}\n")
    r = run(tiny_model, ash.load_space(p), tmp_path, n_trials=4, sensitivity=False)
    names = set(r.study.trials[-1].params)
    assert "fc1.structured" in names and "fc2.structured" not in names  # fc2 is the classifier
    assert "output" in r.study.user_attrs["structured_excluded"]["fc2"]
