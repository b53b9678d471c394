"""Honest numbers: the search decides on eval_data only; the final front and the baseline are scored once
on the held-out test_data; drops carry a paired interval; best(confidence=) uses it."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch.utils.data import Dataset

import autoshrink as ash
from autoshrink.errors import ConfigError, TaskError
from autoshrink.evaluate import evaluate_held_out
from autoshrink.measure import Measurement
from autoshrink.measure.paired import pack_correct, paired_drop, unpack_correct
from autoshrink.recipe import InputSpec, fingerprint
from autoshrink.search import SearchResult
from autoshrink.search.objectives import resolve
from autoshrink.search.study.schema import held_out_key
from autoshrink.split import held_out_indices
from autoshrink.zoo import digits_task

from .conftest import FAST


class Counting(Dataset):
    """(x, y) pairs that count how often any example is read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.reads = x, y, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i], self.y[i]


def test_no_search_decision_reads_the_test_split(tiny_model, tiny_space, tmp_path) -> None:
    base = digits_task(device="cpu")
    x, y = base.eval_data.tensors
    held = Counting(x[:100], y[:100])
    task = ash.Task(
        train_data=base.train_data,
        eval_data=(x[100:], y[100:]),
        test_data=held,
        example_input=base.example_input,
        device="cpu",
    )
    seen = []
    r = ash.search(
        tiny_model,
        task,
        tiny_space,
        n_trials=8,
        refine_top=1,
        refine_steps=6,
        storage=f"sqlite:///{tmp_path}/h.db",
        study_name="h",
        latency=FAST,
        max_accuracy_drop=0.05,
        progress=lambda p: seen.append((p.stage, held.reads)),
    )
    deciding = {reads for stage, reads in seen if stage not in ("held-out", "refine", "refined")}
    assert len(seen) >= 8 and deciding == {0}  # nothing read while the search decided
    assert [stage for stage, _ in seen][-1] == "held-out"
    front = list(r.pareto.trial)
    refined = [t.number for t in r.study.trials if t.user_attrs.get("refined_from") is not None]
    assert len(refined) == 2 and all("held_out" in r.study.trials[n].user_attrs for n in refined)
    # a refine trial is scored on test_data in its own evaluation (read by the held-out stage only); the
    # held-out stage replays the other front points and the baseline
    replayed = [n for n in front if n not in refined]
    assert front and held.reads == 100 * (len(refined) + len(replayed) + 1)
    assert r.timing["held_out_points"] == len(front) + 1
    rows = r.pareto.set_index("trial")
    base_held = r.held_out(None)
    for n in front:
        held_n = r.held_out(n)
        assert rows.loc[n, "test_examples"] == 100 and rows.loc[n, "test_accuracy"] == held_n.accuracy
        assert rows.loc[n, "test_drop"] == base_held.accuracy - held_n.accuracy
        assert rows.loc[n, "replayed"]  # the replay on eval_data gave the trial's own accuracy
        assert rows.loc[n, "test_drop_low"] <= rows.loc[n, "test_drop"] <= rows.loc[n, "test_drop_high"]
    recipe = r.best(max_accuracy_drop=0.05)
    assert recipe.metrics.test_accuracy == r.held_out(recipe.trial).accuracy
    assert recipe.baseline.test_accuracy == base_held.accuracy and recipe.metrics.test_examples == 100
    again = ash.Recipe.from_dict(recipe.to_dict())
    assert again.metrics.test_accuracy == recipe.metrics.test_accuracy and again.metrics.examples == 260
    # resuming scores only points not scored before
    before = held.reads
    ash.search(
        tiny_model,
        task,
        tiny_space,
        n_trials=8,
        storage=f"sqlite:///{tmp_path}/h.db",
        study_name="h",
        latency=FAST,
        max_accuracy_drop=0.05,
    )
    assert held.reads == before
    # a refine trial's own test score is the one a replay gives
    for n in refined:
        u = r.study.trials[n].user_attrs
        again = evaluate_held_out(
            tiny_model,
            task,
            ash.Policy.from_dict(u["policy"]),
            finetune_config=ash.FinetuneConfig.from_dict(u["finetune"]),
            runtime=u["measurement"]["runtime"],
        )
        assert again.to_dict() == u["held_out"]


def test_the_paired_interval_is_the_hand_computation() -> None:
    base = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    cand = np.array([1, 0, 1, 1, 1, 0, 0, 1, 1, 1], dtype=bool)
    d = paired_drop(base, cand)
    # b = 2 (right before, wrong after), c = 1; drop (2 - 1) / 10; variance (3 - 1 / 10) / 100
    assert (d.worse, d.better, d.n, d.drop) == (2, 1, 10, 0.1)
    assert d.low == pytest.approx(-0.23376983956033184, abs=1e-15)
    assert d.high == pytest.approx(0.4337698395603319, abs=1e-15)
    assert unpack_correct(pack_correct(cand), 10).tolist() == cand.tolist()


def _study(drops: list[int], n: int = 100) -> SearchResult:
    """A study whose trial i got `drops[i]` more examples wrong than the baseline (out of n), nothing else
    different; sizes decrease with i, so best() prefers later trials."""
    base_ok = np.ones(n, dtype=bool)
    baseline = Measurement(
        accuracy=1.0, size_bytes=1000, latency_ms=1.0, macs=10, device="cpu", threads=1, batch_size=1,
        examples=n, correct=pack_correct(base_ok),
    )  # fmt: skip
    objs = resolve(("accuracy", "size"))
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("fingerprint", fingerprint(torch.nn.Linear(2, 2)).to_dict())  # what recipes need
    study.set_user_attr("example_input", InputSpec.of(torch.zeros(1, 2)).to_dict())
    study.set_user_attr("finetune", ash.FinetuneConfig().to_dict())
    for i, k in enumerate(drops):
        ok = base_ok.copy()
        ok[:k] = False
        m = Measurement(
            accuracy=1 - k / n, size_bytes=900 - 100 * i, latency_ms=1.0, macs=10, device="cpu", threads=1,
            batch_size=1, examples=n, correct=pack_correct(ok),
        )  # fmt: skip
        study.add_trial(
            optuna.trial.create_trial(
                values=[m.accuracy, m.size_bytes],
                user_attrs={"measurement": m.to_dict(), "policy": {"layers": {}, "distill": False}},
            )
        )
    return SearchResult(study=study, baseline=baseline, objectives=objs)


def test_best_with_confidence_skips_a_point_whose_upper_bound_crosses_the_limit() -> None:
    r = _study([1, 2, 3])  # drops 1, 2 and 3 pp
    assert r.best(max_accuracy_drop=0.03).trial == 2  # the smallest within 3 pp
    # upper bounds: 1 wrong of 100 -> 0.01 + 1.96 * sqrt(0.0099) / 10 = 0.0295; 2 -> 0.0474; 3 -> 0.0634
    assert r.best(max_accuracy_drop=0.03, confidence=0.95).trial == 0
    with pytest.raises(ConfigError, match="no trial is within 1.00 pp"):
        r.best(max_accuracy_drop=0.01, confidence=0.95)  # 1 pp measured, but its interval reaches 2.95 pp
    with pytest.raises(ConfigError, match=r"best: confidence=1.5; use a probability in \(0, 1\)"):
        r.best(max_accuracy_drop=0.03, confidence=1.5)
    rows = r.trials.set_index("trial")
    assert rows.loc[0, "drop_high"] == pytest.approx(0.01 + 1.959963984540054 * (0.0099**0.5) / 10)


def test_the_holdout_split_is_deterministic_and_stratified() -> None:
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 3 + [3] * 1)
    x = torch.arange(len(y), dtype=torch.float32).reshape(-1, 1)
    a = ash.Task(train_data=(x, y), eval_data=(x, y), example_input=x[:1], holdout=0.5)
    b = ash.Task(train_data=(x, y), eval_data=(x, y), example_input=x[:1], holdout=0.5)
    assert torch.equal(a.test_data.tensors[0], b.test_data.tensors[0])
    held = a.test_data.tensors[1]
    # per class round(0.5 * n), at least 1 and at most n - 1 where n >= 2; a single example stays selected
    assert [int((held == c).sum()) for c in range(4)] == [5, 4, 2, 0]  # round() halves to even: 3.5 -> 4
    kept = a.eval_data.tensors[0].flatten().tolist() + a.test_data.tensors[0].flatten().tolist()
    assert sorted(kept) == list(range(len(y)))
    assert a.split_record() == {"holdout": 0.5, "selection": 10, "held_out": 11, "stratified": True}
    keep, out, stratified = held_out_indices(torch.utils.data.TensorDataset(x, y.float()), 0.5)
    assert (len(keep), len(out), stratified) == (11, 10, False)  # float targets: no strata, round(10.5) = 10
    with pytest.raises(TaskError, match="Task.holdout: test_data is given too"):
        ash.Task(train_data=(x, y), eval_data=(x, y), test_data=(x, y), example_input=x[:1], holdout=0.5)
    with pytest.raises(TaskError, match=r"Task.holdout: got 1.0; use the share of eval_data to hold out, in \(0, 1\)"):
        ash.Task(train_data=(x, y), eval_data=(x, y), example_input=x[:1], holdout=1.0)


def test_a_task_without_a_held_out_split_reads_as_before(tiny_model, tiny_space, tmp_path) -> None:
    r = ash.search(
        tiny_model,
        digits_task(device="cpu"),
        tiny_space,
        n_trials=3,
        storage=f"sqlite:///{tmp_path}/n.db",
        study_name="n",
        latency=FAST,
    )
    assert r.timing["held_out_points"] == 0 and held_out_key(None) not in r.study.user_attrs
    assert r.pareto["test_accuracy"].isna().all() and r.pareto["drop_high"].notna().all()
    assert "split" not in r.study.user_attrs["signature"]


def test_the_cli_holds_out_scores_and_exports_both_splits(tmp_path, capsys) -> None:
    from autoshrink.cli import main

    cfg = tmp_path / "h.yaml"
    cfg.write_text(
        "name: hcli\nmodel: autoshrink.zoo:digits_model\nmodel_args: {kind: mlp}\ntask: autoshrink.zoo:digits_task\n"
        f"space: quantize_only\nobjectives: [accuracy, size]\nn_trials: 4\nfinetune_steps: 5\nholdout: 0.5\n"
        f"storage: sqlite:///{tmp_path}/h.db\nmax_accuracy_drop: 0.02\n"
    )
    assert main(["search", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test_acc" in out and "test_95%" in out and "drop_95%" in out
    assert "selection split 180 examples (1 = 0.556 pp); held-out split 180 examples (1 = 0.556 pp)" in out
    assert (
        main(
            ["export", str(cfg), "--max-accuracy-drop", "0.02", "--confidence", "0.95", "-o", str(tmp_path / "r.yaml")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "selection split: drop " in out and "held-out split: drop " in out and "over 180 examples" in out
    recipe = ash.Recipe.load(tmp_path / "r.yaml")
    assert recipe.metrics.examples == 180 and recipe.metrics.test_examples == 180
    assert recipe.baseline.test_accuracy is not None
    assert main(["search", str(cfg), "--holdout", "1.5", "--quiet"]) == 2
    assert "Task.holdout: got 1.5; use the share of eval_data to hold out" in capsys.readouterr().err
