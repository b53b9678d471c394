from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

import autoshrink as ash
from autoshrink.cli import main

# the walk-through adds ONNX Runtime columns where onnxruntime is installed and it runs on the CPU
ORT_COLUMN = importlib.util.find_spec("onnxruntime") is not None and not torch.cuda.is_available()


def test_help_for_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "demo" in capsys.readouterr().out
    for command in ("demo", "walkthrough", "search", "export", "apply"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0 and "usage: autoshrink " + command in capsys.readouterr().out


def test_walkthrough_prints_a_measured_table(capsys) -> None:
    assert main(["walkthrough", "--steps", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    rows = lines[start : lines.index("", start) if "" in lines[start:] else len(lines)]
    assert len(rows) == 10  # baseline + 9 policies
    if ORT_COLUMN:  # ORT columns: latency and speedup after the MACs
        assert "ORT ms" in lines[start - 2] and "ORT: the same model exported to ONNX" in out
        assert all(row.split()[-3].isdigit() and row.split()[-1].endswith("x") for row in rows)
    else:
        assert all(row.split()[-1].isdigit() for row in rows)  # every row ends with its measured MACs
    assert "baseline (float32, untouched)" in out and "structured 50% channels + KD" in out


def test_walkthrough_json(capsys) -> None:
    assert main(["walkthrough", "--steps", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 9 and data["baseline"]["macs"] == 1330432
    assert all(r["size_bytes"] < data["baseline"]["size_bytes"] for r in data["rows"])
    if ORT_COLUMN:
        assert all(r["onnxruntime"]["runtime"] == "onnxruntime" for r in data["rows"] + [data["baseline"]])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_user_error_is_one_line_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "autoshrink.cli", "walkthrough", "--device", "cuda"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("autoshrink: error: Task.device")
    assert "Traceback" not in proc.stderr


def _demo_args(tmp_path, *extra: str) -> list[str]:
    return ["demo", "--trials", "5", "--steps", "5", "--max-accuracy-drop", "0.05", *extra]


def test_demo_smoke_local(tmp_path, monkeypatch, capsys) -> None:
    """The main job with a tiny budget: search, front, recipe, report, next commands."""
    monkeypatch.chdir(tmp_path)
    assert main(_demo_args(tmp_path, "--executor", "local")) == 0
    out = capsys.readouterr().out
    assert (
        "[trials   5/5]" in out
        and "[pre-pass " in out
        and "Pareto front" in out
        and "chosen (smallest within 5 pp)" in out
    )
    assert "autoshrink dashboard studies/demo/demo.db" in out and "autoshrink apply studies/demo/recipe.yaml" in out
    recipe = ash.Recipe.load(tmp_path / "studies/demo/recipe.yaml")
    assert recipe.source.study == "demo" and recipe.source.trial == recipe.trial
    assert (tmp_path / "studies/demo/report.html").stat().st_size > 1_000_000  # plotly inlined
    assert (tmp_path / "studies/demo/digits_cnn-seed0.pt").exists()
    # a second run resumes the finished study instead of redoing it
    assert main(_demo_args(tmp_path, "--executor", "local", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["executor"] == "local" and data["chosen_trial"] == recipe.trial
    import optuna

    assert len(optuna.load_study(study_name="demo", storage="sqlite:///studies/demo/demo.db").trials) == 5


def test_demo_smoke_ray_subprocess(tmp_path) -> None:
    """Default executor (Ray, 2 actors) in a fresh process, as `make demo` runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "autoshrink.cli", *_demo_args(tmp_path, "--json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["executor"] in ("ray", "local")
    if data["executor"] == "local":
        assert "notice: Ray is not available" in proc.stdout + proc.stderr
    import optuna

    trials = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path}/studies/demo/demo.db").trials
    # with 2 actors the screen's threshold depends on which trials finished first: a candidate may be
    # stopped after its short screening run (PRUNED, its screened measurement kept) instead of completing
    assert len(trials) == 5
    for t in trials:
        assert t.state.name in ("COMPLETE", "PRUNED"), (t.number, t.state.name)
        assert ("measurement" in t.user_attrs) == (t.state.name == "COMPLETE")
        if t.state.name == "PRUNED":  # only sampled candidates are screened, never the uniform baselines
            assert t.user_attrs["stage"] != "baseline" and t.user_attrs["screen"]["decision"] == "stopped"
    if data["executor"] == "ray":
        assert all(t.user_attrs["eval"]["worker"].startswith("127.0.0.2:") for t in trials)


def test_compression_warnings_print_as_one_plain_line(capsys) -> None:
    from autoshrink.cli import _show_warning
    from autoshrink.techniques import CompressionWarning

    _show_warning(CompressionWarning("fc2: structured skipped: output layer"), CompressionWarning, "x.py", 3)
    assert capsys.readouterr().err == "autoshrink: warning: fc2: structured skipped: output layer\n"


def test_search_ray_address_joins_that_cluster(monkeypatch, tmp_path) -> None:
    from autoshrink.executors.ray import RayExecutor

    search_pkg = sys.modules["autoshrink.search"]  # the package (autoshrink.search is also the function's name)

    seen = {}

    def fake_search(*args, **kwargs):
        seen["executor"] = args[3].executor  # the SearchConfig the CLI built
        raise SystemExit(0)

    monkeypatch.setattr(search_pkg, "search", fake_search)
    with pytest.raises(SystemExit):
        main(["search", "studies/digits_mlp_quantize.yaml", "--ray-address", "127.0.0.2:6399", "--quiet"])
    assert isinstance(seen["executor"], RayExecutor) and seen["executor"].address == "127.0.0.2:6399"


def test_search_ray_address_with_the_local_executor_is_one_line(capsys) -> None:
    assert (
        main(["search", "studies/digits_mlp_quantize.yaml", "--ray-address", "127.0.0.2:6399", "--executor", "local"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--ray-address 127.0.0.2:6399" in err and "drop one of them" in err
