from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoshrink.cli import main
from autoshrink.errors import ConfigError
from autoshrink.search.study_config import load_entry_point, load_study_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp_quantize"])
def test_shipped_study_configs_are_valid(name: str) -> None:
    cfg = load_study_config(ROOT / "studies" / f"{name}.yaml")
    assert cfg.name == name and callable(load_entry_point(cfg.model, "model", cfg.source))
    assert callable(load_entry_point(cfg.task, "task", cfg.source))


@pytest.mark.parametrize(
    "body, message",
    [
        ("name: x\ntask: autoshrink.zoo:digits_task\n", "model: missing"),
        ("name: x\nmodel: a:b\ntask: c:d\ntrials: 4\n", "unknown key 'trials'"),
        ("name: x\nmodel: a:b\ntask: c:d\nn_trials: many\n", "n_trials: got 'many'; use an integer >= 1"),
        ("name: x\nmodel: a:b\ntask: c:d\nmodel_args: [1]\n", "model_args: got [1]"),
    ],
)
def test_config_errors(tmp_path, body: str, message: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_study_config(p)


def test_entry_point_errors(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nmodel: no_such_pkg.mod:f\ntask: autoshrink.zoo:nothing\n")
    cfg = load_study_config(p)
    with pytest.raises(ConfigError, match=r"c.yaml:2: model: cannot import 'no_such_pkg.mod'"):
        load_entry_point(cfg.model, "model", cfg.source)
    with pytest.raises(ConfigError, match=r"c.yaml:3: task: 'autoshrink.zoo' has no attribute 'nothing'"):
        load_entry_point(cfg.task, "task", cfg.source)
    with pytest.raises(ConfigError, match="use 'package.module:callable'"):
        load_entry_point("autoshrink.zoo.digits_task", "task", cfg.source)


def _config(tmp_path: Path) -> Path:
    (tmp_path / "space.yaml").write_text("defaults: {bits: [32, 8, 4]}\nfinetune: {steps: 3}\n")
    p = tmp_path / "study.yaml"
    p.write_text(
        textwrap.dedent(f"""
        name: clitest
        model: autoshrink.zoo:digits_model
        model_args: {{kind: mlp, steps: 200}}
        task: autoshrink.zoo:digits_task
        task_args: {{device: cpu}}
        space: space.yaml
        objectives: [accuracy, size]
        n_trials: 5
        sensitivity: full
        storage: sqlite:///{tmp_path}/clitest.db
    """)
    )
    return p


def test_cli_search_prints_front_and_resumes(tmp_path, capsys) -> None:
    cfg = _config(tmp_path)
    assert main(["search", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "[pre-pass   6/6]" in out and "[trials   5/5]" in out and "Pareto front" in out and "engine overhead" in out
    assert main(["search", str(cfg), "--n-trials", "7", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["study"] == "clitest" and len(data["pareto"]) >= 1 and data["baseline"]["macs"] == 50432
    import optuna

    assert len(optuna.load_study(study_name="clitest", storage=f"sqlite:///{tmp_path}/clitest.db").trials) == 7


def test_cli_search_bad_config_is_one_line_exit_2(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmodel: a:b\ntask: c:d\nsampler: annealing\n")
    proc = subprocess.run([sys.executable, "-m", "autoshrink.cli", "search", str(p)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("autoshrink: error:")


def test_cli_sensitivity_measures_then_reads_the_stored_table(tmp_path, capsys) -> None:
    cfg = _config(tmp_path)
    assert main(["sensitivity", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "sensitivity of 'clitest' (measured now" in out and "baseline accuracy" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("choice"))
    assert header.split()[1:] == ["8", "bits", "4", "bits"]
    assert [line.split()[0] for line in lines if line.startswith("fc")] == ["fc1", "fc2", "fc3"]
    assert not (tmp_path / "clitest.db").exists()  # measuring alone writes nothing
    assert main(["search", str(cfg), "--quiet", "--refine-top", "1", "--refine-steps", "4"]) == 0
    capsys.readouterr()
    assert main(["sensitivity", str(cfg), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"].startswith("stored in study 'clitest'") and len(data["rows"]) == 6
    assert {(r["layer"], r["field"], r["value"]) for r in data["rows"]} == {
        (f"fc{i}", "bits", b) for i in (1, 2, 3) for b in (8.0, 4.0)
    }
    import optuna

    trials = optuna.load_study(study_name="clitest", storage=f"sqlite:///{tmp_path}/clitest.db").trials
    assert sum(1 for t in trials if t.user_attrs.get("stage") == "refined") == 1
