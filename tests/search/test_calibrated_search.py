"""A post-training search over calibrated choices: searchable in YAML, never fine-tuned, replayed bitwise."""

from __future__ import annotations

import optuna
import pytest
import torch

import autoshrink as ash
from autoshrink.recipe import measure_recipe
from autoshrink.zoo import digits_task

from .conftest import FAST

SPACE = """
defaults:
  sparsity: [0.0, 0.5]
  criterion: [magnitude, wanda, sparsegpt]
  bits: [32, 4, 3]
  rounding: [nearest, gptq]
  group_size: [0, 16]
finetune: {steps: 0}
"""


@pytest.fixture(scope="module")
def searched(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibrated")
    (tmp / "space.yaml").write_text(SPACE)
    optimizers = []
    original = torch.optim.Optimizer.__init__

    def counting(self, *a, **k):
        optimizers.append(type(self).__name__)
        original(self, *a, **k)

    torch.optim.Optimizer.__init__ = counting
    try:
        result = ash.search(
            tiny_model,
            digits_task(device="cpu"),
            ash.load_space(tmp / "space.yaml"),
            n_trials=10,
            refine_top=0,
            storage=f"sqlite:///{tmp}/c.db",
            study_name="c",
            latency=FAST,
            objectives=("accuracy", "size"),
            runtime="float",
            seed=0,
            sensitivity="full",
        )
    finally:
        torch.optim.Optimizer.__init__ = original
    return result, optimizers


def test_a_zero_step_search_never_builds_an_optimizer(searched) -> None:
    result, optimizers = searched
    assert optimizers == []
    states = [t.state for t in result.study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 10


def test_calibrated_fields_are_searched_and_the_prepass_uses_the_best_variant(searched) -> None:
    result, _ = searched
    names = set().union(*(t.params for t in result.study.trials))
    assert {"fc1.rounding", "fc1.group_size", "fc1.criterion", "fc2.bits"} <= names
    rows = result.study.user_attrs["sensitivity"]["rows"]
    bits_rows = [r for r in rows if r["field"] == "bits"]
    assert {(r["rounding"], r["group_size"]) for r in bits_rows} == {("gptq", 16)}
    assert {r["criterion"] for r in rows if r["field"] == "sparsity"} == {"sparsegpt"}
    policies = [t.user_attrs["policy"]["layers"] for t in result.study.trials if t.state.name == "COMPLETE"]
    assert any(lp.get("rounding") == "gptq" for p in policies for lp in p.values())


def test_every_calibrated_trial_replays_bitwise(searched, tiny_model) -> None:
    result, _ = searched
    task = digits_task(device="cpu")
    done = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    calibrated = 0
    for t in done:
        recipe = result.recipe(t.number)
        calibrated += any(lp.calibrated for lp in recipe.policy.layers.values())
        small = ash.apply_recipe(tiny_model, recipe, task=task)
        again = ash.apply_recipe(tiny_model, recipe, task=task)
        assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), again.state_dict().values()))
        m = measure_recipe(small, recipe, task, latency=FAST)
        recorded = t.user_attrs["measurement"]
        assert (m.accuracy, m.size_bytes) == (recorded["accuracy"], recorded["size_bytes"]), t.number
    assert calibrated >= 3


def test_refining_a_calibrated_point_fine_tunes_it_one_shot(searched) -> None:
    result, _ = searched
    calibrated = [
        t.number
        for t in result.study.trials
        if t.state.name == "COMPLETE"
        and any(ash.LayerPolicy.from_dict(lp).calibrated for lp in t.user_attrs["policy"]["layers"].values())
    ]
    refined = result.refine(trials=calibrated[:1], steps=5, progress=False)
    new = result.study.trials[-1]
    assert new.state.name == "COMPLETE" and new.user_attrs["refined_from"] == calibrated[0]
    assert new.user_attrs["finetune"]["steps"] == 5 and new.user_attrs["finetune"]["schedule"] == "oneshot"
    assert list(refined.trial) == [new.number]  # refine returns the new trials' rows


def test_a_fine_tuned_search_runs_calibrated_choices_one_shot(tiny_model, tmp_path) -> None:
    """Under the default gradual schedule a calibrated policy is fine-tuned one-shot (its trial's own
    finetune), screened and fully, never failed; its recipe replays what the search measured; a
    second refine of the same point with the same settings is not run again."""
    (tmp_path / "space.yaml").write_text(
        "defaults:\n  bits: [32, 4]\n  rounding: [nearest, gptq]\n  sparsity: [0.0, 0.5]\nfinetune: {steps: 4}\n"
    )
    task = digits_task(device="cpu")
    r = ash.search(
        tiny_model,
        task,
        ash.load_space(tmp_path / "space.yaml"),
        n_trials=8,
        storage=f"sqlite:///{tmp_path}/g.db",
        study_name="g",
        latency=FAST,
        objectives=("accuracy", "size"),
        runtime="float",
        seed=0,
        sensitivity=False,
        screen=0.5,
        progress=False,
    )
    assert [t.state.name for t in r.study.trials].count("FAIL") == 0
    own = [t for t in r.study.trials if "finetune" in t.user_attrs]
    calibrated = [
        t
        for t in r.study.trials
        if any(ash.LayerPolicy.from_dict(lp).calibrated for lp in t.user_attrs["policy"]["layers"].values())
    ]
    assert own == calibrated and len(own) >= 1
    assert all(t.user_attrs["finetune"]["schedule"] == "oneshot" for t in own)
    assert all(t.user_attrs["screen"]["steps"] == 2 for t in own if "screen" in t.user_attrs)
    done = next(t for t in own if t.state.name == "COMPLETE")
    recipe = r.recipe(done.number)
    assert recipe.finetune.schedule == "oneshot"
    small = ash.apply_recipe(tiny_model, recipe, task=task)
    m = measure_recipe(small, recipe, task, latency=FAST)
    assert (m.accuracy, m.size_bytes) == (
        done.user_attrs["measurement"]["accuracy"],
        done.user_attrs["measurement"]["size_bytes"],
    )
    first = r.refine(trials=[done.number], steps=3, progress=False)
    again = r.refine(trials=[done.number], steps=3, progress=False)
    assert len(first) == 1 and len(again) == 0
