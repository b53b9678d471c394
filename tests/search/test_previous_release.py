"""A study written by the previous release (0.1.0, before the search/ restructure and the schema
module: fixtures/release-0.1.db, 6 trials of the tiny digits MLP, max_accuracy_drop 0.05) still
loads, exports, reports and resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import autoshrink as ash
from autoshrink.cli import main
from autoshrink.search import load_result
from autoshrink.zoo import digits_task

from .conftest import FAST

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.db"
SPACE = (
    "defaults:\n  sparsity: [0.0, 0.5, 0.8, 0.95]\n  bits: [32, 8, 4, 2]\n"
    "distill: [false, true]\nfinetune: {steps: 5}\n"
)


def _copy(tmp_path: Path) -> str:
    shutil.copy(FIXTURE, tmp_path / "old.db")
    return f"sqlite:///{tmp_path / 'old.db'}"


def test_it_loads_and_exports_as_written(tmp_path, capsys) -> None:
    url = _copy(tmp_path)
    r = load_result("old", url)
    assert len(r.study.trials) == 6 and r.max_accuracy_drop == 0.05
    assert list(r.pareto.trial) == [1, 5] and list(r.pareto.size_bytes) == [2840, 2083]
    # written before per-example records and held-out splits: no intervals, no held-out figures, as before
    assert r.pareto[["drop_low", "drop_high", "test_accuracy", "test_drop"]].isna().all().all()
    assert r.held_out(None) is None
    assert (
        main(
            ["export", "old", "--storage", url, "--max-accuracy-drop", "0.05", "-o", str(tmp_path / "r.yaml"), "--json"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    recipe = ash.Recipe.load(tmp_path / "r.yaml")
    assert recipe.trial == 5 and recipe.metrics.size_bytes == 2083 and out["trial"] == 5
    assert main(["report", "old", "--storage", url, "-o", str(tmp_path / "old.html")]) == 0
    page = (tmp_path / "old.html").read_text()
    assert page.count("<html") == 1 and "old" in page
    assert "not recorded (a study measured before per-example records)" in page


def test_it_resumes(tiny_model, tmp_path) -> None:
    url = _copy(tmp_path)
    (tmp_path / "tiny.yaml").write_text(SPACE)
    before = load_result("old", url)
    baseline = before.baseline
    old = [(t.number, t.state.name, t.params) for t in before.study.trials]
    r = ash.search(
        tiny_model,
        digits_task(device="cpu"),
        ash.load_space(tmp_path / "tiny.yaml"),
        n_trials=8,
        storage=url,
        study_name="old",
        latency=FAST,
        seed=0,
        max_accuracy_drop=0.05,
    )
    finished = [t for t in r.study.trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
    assert len(finished) == 8 and r.baseline == baseline  # the stored baseline, not a new measurement
    assert [(t.number, t.state.name, t.params) for t in r.study.trials[:6]] == old
