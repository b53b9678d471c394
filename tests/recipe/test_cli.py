from __future__ import annotations

import dataclasses
import json
import re

import pytest

import autoshrink as ash
from autoshrink.cli import main
from autoshrink.errors import ConfigError
from autoshrink.search import load_result


def test_export_by_trial_and_by_accuracy_drop(searched, tmp_path, capsys) -> None:
    out = tmp_path / "t3.yaml"
    assert main(["export", "tiny", "--storage", searched.storage, "--trial", "3", "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: study 'tiny' trial 3: accuracy ")
    assert ash.Recipe.load(out) == searched.result.recipe(3)

    out = tmp_path / "best.yaml"
    assert (
        main(
            [
                "export",
                "tiny",
                "--storage",
                searched.storage,
                "--max-accuracy-drop",
                "0.05",
                "--minimize",
                "size",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    best = searched.result.best(max_accuracy_drop=0.05, minimize="size")
    assert ash.Recipe.load(out) == best
    assert f"trial {best.trial}: " in capsys.readouterr().out


def test_export_from_a_study_config(searched, tmp_path) -> None:
    cfg = tmp_path / "study.yaml"
    cfg.write_text(
        f"name: tiny\nmodel: tests.recipe.models:tiny\ntask: autoshrink.zoo:digits_task\nstorage: {searched.storage}\n"
    )
    out = tmp_path / "r.yaml"
    assert main(["export", str(cfg), "--max-accuracy-drop", "0.05", "-o", str(out)]) == 0
    assert ash.Recipe.load(out).trial == searched.result.best(max_accuracy_drop=0.05).trial


def test_load_result_reads_the_study_without_the_model(searched) -> None:
    r = load_result("tiny", searched.storage)
    assert r.baseline == searched.result.baseline and r.storage == searched.storage
    assert r.pareto.trial.tolist() == searched.result.pareto.trial.tolist()
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"storage {searched.storage!r} holds no study 'tinny'; the "
            "studies there: 'tiny'. Fix: use one of those names"
        ),
    ):
        load_result("tinny", searched.storage)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tinny", "--trial", "0"], "holds no study 'tinny'; the studies there: 'tiny'"),
        (["tiny", "--trial", "99"], "trial 99: the study has trials 0..9"),
        (["tiny", "--max-accuracy-drop", "-1"], "best: max_accuracy_drop=-1.0; use a fraction >= 0"),
        (["tiny", "--trial", "1", "--minimize", "size"], "--minimize goes with --max-accuracy-drop"),
    ],
)
def test_export_errors_are_one_line_exit_2(searched, tmp_path, capsys, argv, message) -> None:
    assert main(["export", *argv, "--storage", searched.storage, "-o", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autoshrink: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r.yaml").exists()


def test_export_of_a_missing_storage(tmp_path, capsys) -> None:
    assert main(["export", "nothing", "--storage", f"sqlite:///{tmp_path}/no.db", "--trial", "0", "-o", "r.yaml"]) == 2
    assert f"storage sqlite:///{tmp_path}/no.db: no such file {tmp_path}/no.db" in capsys.readouterr().err
    assert not (tmp_path / "no.db").exists()


def test_apply_writes_the_packed_model_whose_size_is_printed(searched, recipe, tmp_path, capsys) -> None:
    path = tmp_path / "r.yaml"
    recipe.save(path)
    model_args = json.dumps({"weights": searched.weights})
    out = tmp_path / "with_task.ashz"
    assert (
        main(
            [
                "apply",
                str(path),
                "--model",
                "tests.recipe.models:tiny",
                "--model-args",
                model_args,
                "--task",
                "autoshrink.zoo:digits_task",
                "--task-args",
                '{"device": "cpu"}',
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["measured"]["size_bytes"] == data["file_bytes"] == out.stat().st_size
    assert data["finetuned"] is True and 0 < data["measured"]["accuracy"] <= 1 and data["trial"] == recipe.trial
    assert set(data["recorded"]) == {"accuracy", "size_bytes", "latency_ms", "macs"}

    out = tmp_path / "no_task.ashz"
    assert (
        main(["apply", str(path), "--model", "tests.recipe.models:tiny", "--model-args", model_args, "--out", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    size = out.stat().st_size
    assert re.search(rf"^size_bytes +{recipe.metrics.size_bytes} +{size}$", text, flags=re.M), text
    assert re.search(r"^accuracy +[\d.]+% +-$", text, flags=re.M) and re.search(r"^macs +2368 +2368$", text, flags=re.M)
    assert f"wrote {out} ({size} bytes)" in text
    assert "no --task: no fine-tune, traced with zeros of shape [1, 1, 8, 8]" in text
    assert size == ash.measure(ash.load_packed(out), ash.zoo.digits_task(device="cpu")).size_bytes


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model-args", "{bad"], "--model-args: not valid JSON"),
        (["--model-args", "[1]"], "--model-args: got '[1]'; use a JSON object"),
        (
            ["--task", "tests.recipe.models:tiny"],
            "--task: tests.recipe.models:tiny returned Tiny, not an autoshrink.Task",
        ),
    ],
)
def test_apply_argument_errors_are_one_line_exit_2(searched, recipe, tmp_path, capsys, extra, message) -> None:
    path = tmp_path / "r.yaml"
    recipe.save(path)
    argv = ["apply", str(path), "--model", "tests.recipe.models:tiny", "--out", str(tmp_path / "m.ashz")]
    if extra[0] == "--task":
        weights = json.dumps({"weights": searched.weights})
        argv += ["--model-args", weights, "--task-args", weights]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["export", "apply"])
def test_help(command, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and f"usage: autoshrink {command}" in capsys.readouterr().out


def test_a_storage_password_is_never_written(searched) -> None:
    result = dataclasses.replace(searched.result, storage="postgresql://bob:hunter2@db:5432/studies")
    assert result.recipe(3).source.storage == "postgresql://bob:***@db:5432/studies"


def test_export_json(searched, tmp_path, capsys) -> None:
    out = tmp_path / "t2.yaml"
    assert main(["export", "tiny", "--storage", searched.storage, "--trial", "2", "-o", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    recipe = searched.result.recipe(2)
    assert data["trial"] == 2 and data["recipe"] == str(out) and data["study"] == "tiny"
    assert data["metrics"]["size_bytes"] == recipe.metrics.size_bytes
    assert data["policy"] == recipe.policy.to_dict()


def test_apply_also_writes_onnx_that_onnx_runtime_runs(searched, recipe, tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    import numpy as np
    import torch

    from autoshrink.export import ort_session, run_session

    path = tmp_path / "r.yaml"
    recipe.save(path)
    model_args = json.dumps({"weights": searched.weights})
    out, onnx_path = tmp_path / "m.ashz", tmp_path / "m.onnx"
    assert (
        main(
            [
                "apply",
                str(path),
                "--model",
                "tests.recipe.models:tiny",
                "--model-args",
                model_args,
                "--out",
                str(out),
                "--onnx",
                str(onnx_path),
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["onnx"]["path"] == str(onnx_path) and data["onnx"]["bytes"] == onnx_path.stat().st_size
    assert data["onnx"]["activations"] == "dynamic"
    small = ash.load_packed(out)
    x = ash.zoo.digits_task(device="cpu").eval_data.tensors[0][:200]
    with torch.no_grad():
        ref = small(x).numpy()
    got = run_session(ort_session(onnx_path), [x])[0]  # the documented tolerance of dynamic int8 activations
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 0.05 * (1 + np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98
    # --onnx onto the recipe or the .ashz is refused before anything is written
    assert (
        main(
            [
                "apply",
                str(path),
                "--model",
                "tests.recipe.models:tiny",
                "--model-args",
                model_args,
                "--out",
                str(tmp_path / "n.ashz"),
                "--onnx",
                str(path),
            ]
        )
        == 2
    )
    assert "--onnx" in capsys.readouterr().err and not (tmp_path / "n.ashz").exists()
    # static activations are calibrated on the task's training batches: without --task, one message
    assert (
        main(
            [
                "apply",
                str(path),
                "--model",
                "tests.recipe.models:tiny",
                "--model-args",
                model_args,
                "--out",
                str(tmp_path / "s.ashz"),
                "--onnx",
                str(tmp_path / "s.onnx"),
                "--onnx-activations",
                "static",
            ]
        )
        == 2
    )
    assert "--onnx-activations static calibrates" in capsys.readouterr().err
    assert not (tmp_path / "s.ashz").exists() and not (tmp_path / "s.onnx").exists()
    assert ash.Recipe.load(path) == recipe
