"""Hostile study configs through `autoshrink search`: refused before any folder, database or study
attribute exists."""

from __future__ import annotations

import sys

import pytest

from .harness import refused_by_cli

GOOD = {
    "name": "hostile",
    "model": "tests.hostile.factories:tiny",
    "task": "tests.hostile.factories:task",
    "n_trials": "2",
}


def _config(**changes: str | None) -> str:
    fields = {**GOOD, **changes}
    return "".join(f"{k}: {v}\n" for k, v in fields.items() if v is not None)


CASES = [  # id, config text, the message
    ("missing-name", _config(name=None), "name: missing; a study config needs name, model, task"),
    ("unknown-key", _config(n_trails="2"), "unknown key 'n_trails'"),
    ("model-not-entry-point", _config(model="tests.hostile.factories.tiny"), "use 'package.module:callable'"),
    ("model-empty-attr", _config(model="'tests.hostile.factories:'"), "use 'package.module:callable'"),
    ("model-module-missing", _config(model="no_such_pkg.models:net"), "cannot import 'no_such_pkg.models'"),
    (
        "model-attr-missing",
        _config(model="tests.hostile.factories:nope"),
        "model: 'tests.hostile.factories' has no attribute 'nope'; its callables: Tiny, conv_only, "
        "cross_entropy_on_floats_task, empty_batch_task, exits, float_labels_task, labels_out_of_range_task, "
        "mixed_dtype_task, mse_on_class_ids_task, nan_inputs_task, no_targets_task, raises, ... (20 in all).",
    ),
    (
        "model-attr-typo",
        _config(model="tests.hostile.factories:tinny"),
        "model: 'tests.hostile.factories' has no attribute 'tinny'; did you mean 'tests.hostile.factories:tiny' or "
        "'tests.hostile.factories:Tiny'?\n",
    ),
    (
        "model-nested-attr",
        _config(model="tests.hostile.factories:Tiny.buld"),
        "model: 'tests.hostile.factories:Tiny' has no attribute 'buld'; its callables: add_module, apply, ",
    ),
    (
        "model-not-callable",
        _config(model="tests.hostile.factories:NOT_CALLABLE"),
        "model: 'tests.hostile.factories:NOT_CALLABLE' is 3, not callable; name a function or class that returns "
        "the model.",
    ),
    ("objectives-number", _config(objectives="3"), "objectives: got 3; use a list of objective names from"),
    ("objectives-nested", _config(objectives="[[accuracy, size]]"), "objectives: got [['accuracy', 'size']]; use"),
    (
        "space-number",
        _config(space="5"),
        "space: got 5; use a built-in space's name (default, lowrank_only, post_training, prune_only, "
        "quantize_only, structured, transformer) or the path of a space YAML, e.g. space: spaces/mine.yaml.\n",
    ),
    ("space-nested", _config(space="[[a]]"), "space: got [['a']]; use a built-in space's name"),
    ("description-list", _config(description="[a, b]"), "description: got ['a', 'b']; use one line of text"),
    (
        "factory-raises",
        _config(model="tests.hostile.factories:raises", model_args="{kind: mlp}"),
        "tests.hostile.factories:raises(kind='mlp') raised ValueError: no model of kind 'mlp'",
    ),
    (
        "factory-exits",
        _config(model="tests.hostile.factories:exits"),
        "tests.hostile.factories:exits() raised SystemExit: 4",
    ),
    ("factory-wrong-type", _config(model="tests.hostile.factories:returns_int"), "returned int, not a torch.nn.Module"),
    ("task-wrong-type", _config(task="tests.hostile.factories:tiny"), "returned Tiny, not an autoshrink.Task"),
    ("model-args-unknown", _config(model_args="{depth: 3}"), "model_args: got an unexpected keyword argument 'depth'"),
    ("model-args-list", _config(model_args="[1, 2]"), "expected a mapping of keyword arguments"),
    ("n-trials-text", _config(n_trials="ten"), "n_trials: got 'ten'; use an integer >= 1 (at most 4,294,967,296)."),
    ("n-trials-huge", _config(n_trials="9" * 400), "...; use an integer >= 1 (at most 4,294,967,296)."),
    ("timeout-inf", _config(timeout=".inf"), "timeout: got inf; use seconds > 0."),
    ("n-trials-zero", _config(n_trials="0"), "n_trials"),
    ("n-trials-float", _config(n_trials="2.5"), "n_trials: got 2.5; use an integer >= 1"),
    ("seed-negative", _config(seed="-1"), "seed: got -1; use an integer in [0, 2^32)."),
    ("sampler-unknown", _config(sampler="nope"), "sampler: got 'nope'; use one of front, nsga2, tpe, gp, random, grid"),
    ("executor-unknown", _config(executor="nope"), "executor: got 'nope'; use 'local', 'ray'"),
    ("name-path", _config(name="'../escape'"), "name: got '../escape'; use 1-128 letters"),
    ("name-empty-ish", _config(name="'-x'"), "name: got '-x'; use 1-128 letters"),
    (
        "runtime-unknown",
        _config(runtime="tensorrt"),
        "runtime: got 'tensorrt'; use auto, float, int8, int8-full, onnxruntime, onnxruntime-static, cuda-graph, "
        "cuda-int8.",
    ),
    ("timeout-bool", _config(timeout="true"), "timeout: got True; use seconds > 0."),
    (
        "drop-too-big",
        _config(max_accuracy_drop="2"),
        "max_accuracy_drop: got 2; use a fraction in [0, 1) (0.01 = 1 pp).",
    ),
    (
        "example-input-shape",
        _config(task="tests.hostile.factories:wrong_shape_task"),
        "Task.example_input: the model cannot run it (shape [1, 3, 5, 5], torch.float32)",
    ),
    (
        "example-input-empty",
        _config(task="tests.hostile.factories:empty_batch_task"),
        "Task.example_input: shape [0, 1, 8, 8] holds no example",
    ),
    (
        "labels-out-of-range",
        _config(task="tests.hostile.factories:labels_out_of_range_task"),
        "Task.train_data: labels span 0..12, but the model outputs 10 classes",
    ),
    ("space-missing", _config(space="nowhere.yaml"), "nowhere.yaml"),
    (
        "storage-garbage",
        _config(storage="'nope://x'"),
        "storage 'nope://x': not an SQLite, PostgreSQL or MySQL URL; autoshrink search needs one of them",
    ),
    (
        "storage-in-memory",
        _config(storage="'sqlite:///:memory:'"),
        "storage 'sqlite:///:memory:': an in-memory SQLite storage is lost when the search ends; name a .db file",
    ),
    ("duplicate-keys", _config() + "seed: 1\nseed: 2\n", "key 'seed' appears twice"),
    ("model-args-int-key", _config(model_args="{1: 2}"), "model_args: got an unexpected keyword argument '1'"),
    ("task-args-list", _config(task_args="[1]"), "task_args: got [1]; expected a mapping of keyword arguments."),
    (
        "executor-args-local",
        _config(executor_args="{actors: 2}"),
        "executor_args: actors: settings of the Ray executor, but executor is 'local'; set executor: ray or remove",
    ),
    (
        "executor-args-unknown",
        _config(executor="ray", executor_args="{bogus: 1}"),
        "executor_args.bogus: unknown key 'bogus'; allowed are address, working_dir, py_modules, actors.",
    ),
    ("executor-actors-zero", _config(executor="ray", executor_args="{actors: 0}"), "executor_args.actors: got 0"),
    ("holdout-two", _config(holdout="2"), "holdout: got 2; use the share of the task's eval_data to hold out"),
    ("holdout-nan", _config(holdout=".nan"), "holdout: got nan; use the share"),
    ("finetune-steps-negative", _config(finetune_steps="-1"), "finetune_steps: got -1; use an integer >= 0"),
    ("max-latency-negative", _config(max_latency_ms="-1"), "max_latency_ms: got -1; use a latency in milliseconds > 0"),
    ("sampler-number", _config(sampler="5"), "sampler: got 5; use one of front, nsga2, tpe, gp, random, grid"),
    ("narrow-cutoff-two", _config(narrow_cutoff="2"), "narrow_cutoff: got 2; use a drop in (0, 1] (0.1 = 10 pp)"),
    ("objectives-empty", _config(objectives="[]"), "objectives: empty; give at least one of accuracy, size"),
    ("objectives-twice", _config(objectives="[size, size]"), "objectives: 'size' is given twice."),
    ("latency-warmup", _config(latency="{warmup: -1}"), "latency.warmup: use a number >= 0"),
    ("refine-top-fraction", _config(refine_top="1.5"), "refine_top: got 1.5; use an integer >= 0"),
    ("screen-share-two", _config(screen="{share: 2}"), "screen share=2; use a fraction of the steps in (0, 1)"),
    ("storage-number", _config(storage="7"), "storage: got 7; use an Optuna storage URL, e.g. sqlite:///studies"),
    ("seed-fraction", _config(seed="1.5"), "seed: got 1.5; use an integer in [0, 2^32)."),
    ("runtime-int9", _config(runtime="int9"), "runtime: got 'int9'; use auto, float, int8, int8-full, onnxruntime"),
    ("root-list", "- name\n- model\n", "a study config is a mapping"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_search_refuses_before_any_side_effect(tmp_path, text, message) -> None:
    (tmp_path / "study.yaml").write_text(text)
    refused_by_cli(["search", "study.yaml"], tmp_path, message)


@pytest.mark.parametrize(
    "source, message",
    [
        ("def net(:\n", "importing 'user_models_syntax' raised SyntaxError"),
        ("raise SystemExit(3)\n", "importing 'user_models_exit' raised SystemExit: 3"),
    ],
)
def test_a_broken_user_module_is_one_line(tmp_path, monkeypatch, source, message) -> None:
    name = "user_models_syntax" if "def" in source else "user_models_exit"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    (tmp_path / "study.yaml").write_text(_config(model=f"{name}:net"))
    refused_by_cli(["search", "study.yaml"], tmp_path, message)


@pytest.mark.parametrize(
    "content", [b"\xff\xfe" + "name: x\n".encode("utf-16-le"), b"\x00\x01\x02binary"], ids=["utf16", "binary"]
)
def test_search_of_a_config_that_is_not_text(tmp_path, content) -> None:
    (tmp_path / "study.yaml").write_bytes(content)
    refused_by_cli(["search", "study.yaml"], tmp_path, "study.yaml: ")


def test_search_of_a_folder_or_missing_config(tmp_path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    refused_by_cli(["search", "dir.yaml"], tmp_path, "dir.yaml: not a regular file")
    refused_by_cli(["search", "gone.yaml"], tmp_path, "gone.yaml: no such file")
