"""The pre-pass a budget can pay for: everything, repeated layers shared, the aggressive values first, or none."""

from __future__ import annotations

import pytest
from torch import nn

import autoshrink as ash
from autoshrink.measure import Measurement
from autoshrink.search.stages.prepass_budget import (
    budget_seconds,
    enqueue_room,
    estimates,
    expected_trials,
    group_key,
    plan_prepass,
    shared_row,
    stopped_at_budget,
)
from autoshrink.search.stages.sensitivity import choices
from autoshrink.search.stages.warmstart import _bound
from autoshrink.space import bind
from autoshrink.train import FinetuneConfig
from autoshrink.zoo import digits_task

from .conftest import FAST


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


@pytest.fixture
def items(tmp_path):
    (tmp_path / "s.yaml").write_text("defaults:\n  bits: [32, 8, 4, 2]\n")
    model = Blocks()
    return model, choices(bind(ash.load_space(tmp_path / "s.yaml"), model))


def keys(cs):
    return [(c.layer, int(c.value)) for c in cs]


def test_a_budget_that_pays_for_everything_measures_everything(items) -> None:
    model, cs = items
    assert len(cs) == 7 * 3
    plan = plan_prepass(cs, model, 21.0, 1.0, 1.0)
    assert plan.measured == cs and plan.copies == [] and plan.skipped == []
    assert plan_prepass(cs, model, None, 1.0, 1.0).measured == cs  # no budget: unbounded


def test_repeated_layers_share_and_the_aggressive_values_go_first(items) -> None:
    model, cs = items
    plan = plan_prepass(cs, model, 9.0, 1.0, 1.0)  # the 3 groups (blocks.#.0, blocks.#.2, head) x 3 widths
    assert keys(plan.measured) == [
        ("blocks.0.0", 2), ("blocks.0.2", 2), ("head", 2),
        ("blocks.0.0", 4), ("blocks.0.2", 4), ("head", 4),
        ("blocks.0.0", 8), ("blocks.0.2", 8), ("head", 8),
    ]  # fmt: skip
    assert len(plan.copies) == 12 and plan.skipped == []
    assert {(c.layer, rep.layer) for c, rep in plan.copies} == {
        ("blocks.1.0", "blocks.0.0"), ("blocks.2.0", "blocks.0.0"),
        ("blocks.1.2", "blocks.0.2"), ("blocks.2.2", "blocks.0.2"),
    }  # fmt: skip
    assert group_key("layer1.conv1", nn.Conv2d(16, 16, 3)) == group_key("layer3.conv1", nn.Conv2d(16, 16, 3))
    assert group_key("layer1.conv1", nn.Conv2d(16, 16, 3)) != group_key("layer1.conv2", nn.Conv2d(16, 16, 3))
    plan = plan_prepass(cs, model, 4.0, 1.0, 1.0)
    assert keys(plan.measured) == [("blocks.0.0", 2), ("blocks.0.2", 2), ("head", 2), ("blocks.0.0", 4)]
    assert len(plan.copies) == 4 + 2 and len(plan.skipped) == 5 + 2 + 4
    assert plan.info["measured"] == 4 and "6 shared from a repeated layer, 11 skipped" in plan.info["why"]
    plan = plan_prepass(cs, model, 2.5, 1.0, 1.0)  # not one choice per group: nothing
    assert plan.measured == [] and len(plan.skipped) == 21 and plan.info["why"].endswith("pre-pass skipped")


def test_the_budget_is_a_share_of_the_timeout_or_of_the_trials() -> None:
    assert budget_seconds(None, None, 5.0) is None
    assert budget_seconds(100.0, None, 5.0) == 25.0
    assert budget_seconds(None, 6, 5.0) == pytest.approx(10.0)  # a quarter of the whole: a third of 30 s
    assert budget_seconds(100.0, 6, 5.0) == pytest.approx(10.0)
    m = Measurement(
        accuracy=0.9, size_bytes=1, latency_ms=1.0, macs=1, device="cpu", threads=1, batch_size=1, runtime="float",
        cost={"apply": 0.1, "calibrate": 0.0, "finetune": 0.0, "evaluate": 0.5, "pack": 2.0, "latency": 0.4},
    )  # fmt: skip
    choice, calibrated, trial = estimates(m, FinetuneConfig(steps=10), 1000, 64)
    assert choice == pytest.approx(1.0) and calibrated == pytest.approx(1.0 + 0.5 * 512 / 1000)
    assert trial == pytest.approx(1.0 + 10 * 3 * 0.5 / 1000 * 64)
    assert expected_trials(None, 100.0, 4.0, 20.0) == 20 and expected_trials(7, 100.0, 4.0, 20.0) == 7
    # baselines and warm start: n_trials without a timeout; with one, half of what it leaves (<= n_trials)
    assert enqueue_room(40, None, 4.0, 20.0) == 40 and enqueue_room(None, None, 4.0, 20.0) is None
    assert enqueue_room(40, 900.0, 14.64, 407.4) == 16 and enqueue_room(40, 900.0, 15.5, 111.0) == 20
    assert enqueue_room(None, 100.0, 4.0, 20.0) == 10


def test_a_skipped_choice_is_bounded_by_the_mildest_more_aggressive_one() -> None:
    rows = {
        ("fc", "bits", 2.0): {"accuracy_drop": 0.30},
        ("fc", "bits", 4.0): {"accuracy_drop": 0.05},
        ("fc", "sparsity", 0.9): {"accuracy_drop": 0.2},
    }
    assert _bound(rows, "fc", "bits", 6.0) == 0.05 and _bound(rows, "fc", "bits", 3.0) == 0.30
    assert _bound(rows, "fc", "sparsity", 0.5) == 0.2 and _bound(rows, "fc", "sparsity", 0.95) is None
    assert _bound(rows, "other", "bits", 8.0) is None
    copied = shared_row({"layer": "a", "field": "bits", "value": 4.0, "layer_latency_ms": {"a": 1.0}}, "b")
    assert copied == {"layer": "b", "field": "bits", "value": 4.0, "shared_from": "a"}


def short_search(model, tmp_path, space: str, n_trials: int) -> ash.SearchResult:
    (tmp_path / "s.yaml").write_text(space)
    return ash.search(
        model,
        digits_task(device="cpu"),
        ash.load_space(tmp_path / "s.yaml"),
        n_trials=n_trials,
        finetune_steps=0,
        storage=f"sqlite:///{tmp_path}/p.db",
        study_name="p",
        latency=FAST,
        runtime="float",
        objectives=("accuracy", "size"),
        progress=False,
    )


def test_a_short_search_records_its_prepass_plan(tiny_model, tmp_path) -> None:
    r = short_search(
        tiny_model, tmp_path, "defaults:\n  bits: [32, 8, 6, 5, 4, 3, 2]\n  sparsity: [0.0, 0.5, 0.9]\n", 3
    )
    stored = r.study.user_attrs["sensitivity"]
    plan = stored["plan"]
    assert plan["choices"] == 2 * (6 + 2) and plan["measured"] + plan["shared"] + plan["skipped"] == plan["choices"]
    assert plan["measured"] < plan["choices"] and len(stored["rows"]) == plan["measured"] + plan["shared"]
    assert plan["budget_s"] == pytest.approx(1 / 3 * 3 * plan["estimated_trial_s"], abs=2e-3)
    from autoshrink.report.stages import prepass_plan_note

    assert prepass_plan_note(r).startswith('<p id="prepass-plan">Pre-pass: ')


def test_the_prepass_stops_at_its_budget(tiny_model, tmp_path, monkeypatch) -> None:
    """Estimates that let the plan measure everything, a budget already spent: the pre-pass measures
    the choice it started and cancels the rest, which count as skipped."""
    import importlib

    setup = importlib.import_module("autoshrink.search.setup")

    monkeypatch.setattr(setup, "estimates", lambda *a: (0.0, 0.0, 1.0))
    monkeypatch.setattr(setup, "budget_seconds", lambda *a: 1e-9)
    r = short_search(tiny_model, tmp_path, "defaults:\n  bits: [32, 8, 4]\n", 2)
    stored = r.study.user_attrs["sensitivity"]
    plan = stored["plan"]
    assert [(row["layer"], row["value"]) for row in stored["rows"]] == [("fc1", 8)]  # the first planned choice
    assert (plan["choices"], plan["measured"], plan["shared"], plan["stopped"]) == (4, 1, 0, 3)
    assert plan["skipped"] == 3 and plan["why"].startswith("it stopped at its budget (0.0 s) after ")
    assert len(r.study.trials) == 2  # the search goes on with what was measured


def test_a_stopped_plan_counts_the_unmeasured_as_skipped() -> None:
    info = {"budget_s": 2.0, "measured": 10, "shared": 4, "skipped": 2, "why": "some shared"}
    assert stopped_at_budget(info, 6, 3, 2.5) == {
        "measured": 4,
        "shared": 1,
        "skipped": 11,
        "stopped": 6,
        "why": "some shared; it stopped at its budget (2.0 s) after 2.5 s with 6 planned choices not measured "
        "(the estimates were low)",
    }


def test_a_subsample_is_a_fixed_sorted_draw_and_keeps_the_fast_path() -> None:
    import torch
    from torch.utils.data import TensorDataset

    from autoshrink.task import subsample_indices, subset

    idx = subsample_indices(10, 4, seed=0)
    assert idx == subsample_indices(10, 4, seed=0) and list(idx) == sorted(set(idx)) and len(idx) == 4
    assert subsample_indices(10, 4, seed=1) != idx
    data = TensorDataset(torch.arange(10) * 10, torch.arange(10))
    part = subset(data, idx)
    assert isinstance(part, TensorDataset) and part.tensors[1].tolist() == list(idx)


def test_a_large_selection_split_is_subsampled_in_the_prepass(tiny_model, tmp_path, monkeypatch) -> None:
    """With the subsample threshold lowered to the digits task's size: every row is scored on the same
    100 examples and its drop is against the untouched model on those; trials score the whole split."""
    import importlib

    from autoshrink.measure.paired import unpack_correct
    from autoshrink.search.stages.sensitivity import Choice1

    budget = importlib.import_module("autoshrink.search.stages.prepass_budget")
    monkeypatch.setattr(budget, "SUBSAMPLE_FROM", 200)
    monkeypatch.setattr(budget, "PREPASS_EXAMPLES", 100)
    monkeypatch.setattr(importlib.import_module("autoshrink.search.setup"), "budget_seconds", lambda *a: None)
    task = digits_task(device="cpu")
    r = short_search(tiny_model, tmp_path, "defaults:\n  bits: [32, 4, 2]\n", 2)
    plan = r.study.user_attrs["sensitivity"]["plan"]
    n = len(task.eval_data)
    assert plan["examples"] == 100
    assert plan["subsample"] == f"each choice scored on 100 of the {n} selection examples"
    idx = budget.subsample_indices(n, 100)
    base = float(unpack_correct(r.baseline.correct, r.baseline.examples)[list(idx)].mean())
    rows = r.study.user_attrs["sensitivity"]["rows"]
    assert len(rows) == 4
    for row in rows:
        small = ash.apply_policy(tiny_model, Choice1.from_row(row).policy())
        m = ash.measure(small, task, runtime="float", latency=FAST, examples=idx)
        assert (m.examples, row["accuracy"]) == (100, m.accuracy)
        assert row["accuracy_drop"] == base - m.accuracy
    trials = [t.user_attrs["measurement"] for t in r.study.trials if "measurement" in t.user_attrs]
    assert len(trials) == 2 and all(m["examples"] == n for m in trials)
    from autoshrink.report.stages import prepass_plan_note

    assert "(each choice scored on 100 of the" in prepass_plan_note(r)
