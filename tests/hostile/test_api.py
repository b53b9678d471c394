"""Hostile values through the Python API and hostile .ashz files: one AutoshrinkError each, naming the
value and the fix, and no file created (a refused search leaves no studies/ folder or database)."""

from __future__ import annotations

import math

import pytest
import torch

import autoshrink as ash
from autoshrink.errors import AutoshrinkError, ConfigError, PackError, PolicyError, TaskError
from autoshrink.measure.packing import framing

from . import factories
from .harness import refused_by_api

SPACE = "defaults:\n  bits: [32, 8]\n"


def _search(tmp_path, make_task=factories.task, **kwargs):
    space = ash.load_space(_space_file(tmp_path))
    return lambda: ash.search(factories.tiny(), make_task(), space, **{"n_trials": 2, "finetune_steps": 2, **kwargs})


def _space_file(tmp_path):
    path = tmp_path.parent / f"{tmp_path.name}-space.yaml"  # outside the watched folder
    path.write_text(SPACE)
    return path


SEARCH = [  # id, keyword arguments or a task factory, the error type, the message
    ("seed-negative", {"seed": -1}, ConfigError, "search: seed=-1; use an integer in [0, 2^32)"),
    (
        "objectives-none",
        {"objectives": None},
        ConfigError,
        "search: objectives=None; use a list of objective names from accuracy, size, latency, macs.",
    ),
    ("seed-bool", {"seed": True}, ConfigError, "search: seed=True"),
    ("sampler-unknown", {"sampler": "nope"}, ConfigError, "sampler"),
    (
        "executor-unknown",
        {"executor": "nope"},
        ConfigError,
        "search: executor='nope'; use 'local', 'ray' or an executor object.",
    ),
    ("name-slash", {"study_name": "a/b"}, ConfigError, "study_name='a/b'"),
    ("name-dots", {"study_name": ".."}, ConfigError, "study_name='..'"),
    ("n-trials-zero", {"n_trials": 0}, ConfigError, "n_trials"),
    ("no-budget", {"n_trials": None}, ConfigError, "give n_trials and/or timeout"),
    ("timeout-negative", {"timeout": -1}, ConfigError, "timeout=-1; use seconds > 0"),
    ("drop-nan", {"max_accuracy_drop": math.nan}, ConfigError, "max_accuracy_drop=nan"),
    ("drop-too-big", {"max_accuracy_drop": 1.5}, ConfigError, "max_accuracy_drop=1.5"),
    ("runtime-unknown", {"runtime": "tensorrt"}, ConfigError, "tensorrt"),
    ("cutoff-zero", {"narrow_cutoff": 0}, ConfigError, "narrow_cutoff=0"),
    ("wrong-shape", factories.wrong_shape_task, TaskError, "Task.example_input: the model cannot run it"),
    ("empty-batch", factories.empty_batch_task, TaskError, "holds no example"),
    ("labels", factories.labels_out_of_range_task, TaskError, "labels span 0..12, but the model outputs 10 classes"),
    (
        "uint8-images",
        factories.uint8_images_task,
        TaskError,
        "Task.example_input: the model cannot run it (shape [1, 1, 8, 8], torch.uint8): RuntimeError: ",
    ),
    ("uint8-fix", factories.uint8_images_task, TaskError, "e.g. x.float() / 255 for torch.uint8 images)."),
    (
        "mixed-dtypes",
        factories.mixed_dtype_task,
        TaskError,
        "Task.train_data: inputs are torch.float64 but example_input is torch.float32; give both as the "
        "model's input dtype.",
    ),
    (
        "data-shape",
        factories.wrong_shape_data_task,
        TaskError,
        "Task.eval_data: the model cannot run its first batch (shape [8, 1, 5, 5], torch.float32; example_input "
        "shape [1, 1, 8, 8], torch.float32): RuntimeError: ",
    ),
    (
        "float-labels",
        factories.float_labels_task,
        TaskError,
        "Task.train_data: labels are torch.float32, but the accuracy metric compares them with class indices; "
        "give integer class ids (e.g. y.long()).",
    ),
    (
        "mse-class-ids",
        factories.mse_on_class_ids_task,
        TaskError,
        "Task.train_data: the loss 'mse' needs targets shaped as the model's outputs; got outputs shape [8, 10], "
        "torch.float32 and targets shape [8], torch.float32. Fix: targets of shape [8, 10], or "
        "loss='cross_entropy' for class ids.",
    ),
    (
        "ce-float-targets",
        factories.cross_entropy_on_floats_task,
        TaskError,
        "Task.train_data: the loss 'cross_entropy' cannot take the model's outputs (shape [8, 10], torch.float32) "
        "and the targets (shape [8], torch.float32): RuntimeError: ",
    ),
    ("ce-fix", factories.cross_entropy_on_floats_task, TaskError, "Fix: targets as int64 class ids (y.long())"),
    (
        "nan-inputs",
        factories.nan_inputs_task,
        TaskError,
        "Task.train_data: the loss of the untouched model on its first batch is nan; check the data for NaN or "
        "inf values.",
    ),
    (
        "test-labels",
        factories.test_labels_out_of_range_task,
        TaskError,
        "Task.test_data: labels span 0..10, but the model outputs 10 classes",
    ),
    (
        "no-targets",
        factories.no_targets_task,
        TaskError,
        "Task.train_data: each example must be an (input, target) pair; return (x, y) from __getitem__.",
    ),
    (
        "unreadable-data",
        factories.unreadable_data_task,
        TaskError,
        "Task.eval_data: reading its first batch raised FileNotFoundError: images/0.png; fix the dataset.",
    ),
]


@pytest.mark.parametrize("given, kind, message", [c[1:] for c in SEARCH], ids=[c[0] for c in SEARCH])
def test_search_refuses_before_creating_anything(tmp_path, given, kind, message) -> None:
    call = _search(tmp_path, make_task=given) if callable(given) else _search(tmp_path, **given)
    refused_by_api(call, tmp_path, kind, message)
    assert not (tmp_path / "studies").exists()


def test_search_with_a_space_that_is_not_one(tmp_path) -> None:
    refused_by_api(
        lambda: ash.search(factories.tiny(), factories.task(), {"defaults": {}}, n_trials=1),
        tmp_path,
        ConfigError,
        "space must be a SearchSpace, a built-in space's name or a YAML path (ash.load_space), got dict",
    )


@pytest.mark.parametrize(
    "make, kind, message",
    [
        (lambda: ash.LayerPolicy(bits=9), PolicyError, "bits"),
        (lambda: ash.LayerPolicy(sparsity=math.nan), PolicyError, "sparsity"),
        (lambda: ash.LayerPolicy(sparsity=1.0), PolicyError, "sparsity"),
        (lambda: ash.LayerPolicy(rank=0), PolicyError, "rank"),
        (lambda: ash.LayerPolicy(bits=4, codebook="lloyd"), PolicyError, "codebook"),
        (lambda: ash.Task(train_data=None, eval_data=None, example_input=None), TaskError, "Task.train_data"),
        (
            lambda: ash.Task(
                train_data=(torch.zeros(3, 2), torch.zeros(2)),
                eval_data=(torch.zeros(1, 2), torch.zeros(1)),
                example_input=torch.zeros(1, 2),
            ),
            TaskError,
            "X has 3 rows but y has 2",
        ),
        (
            lambda: ash.Task(
                train_data=(torch.zeros(1, 2), torch.zeros(1)),
                eval_data=(torch.zeros(1, 2), torch.zeros(1)),
                example_input=[1, 2],
            ),
            TaskError,
            "Task.example_input",
        ),
        (lambda: ash.FinetuneConfig(steps=-1), ConfigError, "steps"),
        (lambda: ash.RayExecutor(cpus_per_actor=math.nan), ConfigError, "RayExecutor.cpus_per_actor: got nan"),
        (lambda: ash.RayExecutor(gpus_per_actor=math.inf), ConfigError, "RayExecutor.gpus_per_actor: got inf"),
        (lambda: ash.RayExecutor(actors=0), ConfigError, "RayExecutor.actors: got 0"),
    ],
    ids=[
        "bits-9",
        "sparsity-nan",
        "sparsity-one",
        "rank-zero",
        "codebook-unknown",
        "task-none",
        "task-rows",
        "task-example-list",
        "finetune-steps",
        "ray-cpus-nan",
        "ray-gpus-inf",
        "ray-actors-zero",
    ],
)
def test_api_values_are_one_error(tmp_path, make, kind, message) -> None:
    refused_by_api(make, tmp_path, kind, message)


def _good_file(tmp_path) -> bytes:
    path = tmp_path.parent / f"{tmp_path.name}-good.ashz"
    ash.save_packed(factories.tiny(), path)
    return path.read_bytes()


ASHZ = [  # id, how the bytes are made from a good file, the message
    ("empty", lambda good: b"", "not an autoshrink packed model"),
    ("wrong-magic", lambda good: b"PK\x03\x04" + good[4:], "not an autoshrink packed model"),
    ("future-version", lambda good: good[:4] + b"\x09" + good[5:], "format version 9 was written by a newer"),
    ("no-version", lambda good: b"ASHZ", "no format version"),
    ("truncated", lambda good: good[: len(good) // 2], "truncated or corrupt"),
    ("trailing", lambda good: good + b"\x00" * 7, "7 bytes follow the last tensor"),
    (
        "header-not-json",
        lambda good: good[:5] + framing.varint(len(framing.deflate(b"{"))) + framing.deflate(b"{") + good[5:],
        "truncated or corrupt",
    ),
    ("huge-length", lambda good: good[:5] + framing.varint(1 << 40) + good[5:], "truncated or corrupt"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in ASHZ], ids=[c[0] for c in ASHZ])
def test_load_packed_refuses_broken_files(tmp_path, make, message) -> None:
    data = make(_good_file(tmp_path))
    path = tmp_path / "m.ashz"
    path.write_bytes(data)
    refused_by_api(lambda: ash.load_packed(path), tmp_path, PackError, message, seconds=5, megabytes=64)


@pytest.mark.parametrize(
    "target, message",
    [("/dev/zero", "not a regular file"), ("folder", "not a regular file"), ("missing.ashz", "no such file")],
)
def test_load_packed_of_what_is_not_a_file(tmp_path, target, message) -> None:
    if target == "folder":
        (tmp_path / "folder").mkdir()
    path = target if target.startswith("/") else tmp_path / target
    refused_by_api(lambda: ash.load_packed(path), tmp_path, AutoshrinkError, message, seconds=5)


def _wrong_types() -> list:
    m, t = factories.tiny(), factories.task()
    space = ash.load_space("default")
    return [
        ("load-space-none", lambda: ash.load_space(None), ConfigError, "load_space: got None"),
        ("recipe-load-none", lambda: ash.Recipe.load(None), AutoshrinkError, "got None where the path of a YAML file"),
        ("load-packed-none", lambda: ash.load_packed(None), PackError, "load_packed: got None"),
        ("measure-task-text", lambda: ash.measure(m, "task"), TaskError, "measure: task must be an autoshrink.Task"),
        (
            "search-model-text",
            lambda: ash.search("model", t, space, n_trials=1),
            ConfigError,
            "search: model must be a torch.nn.Module, got 'model'",
        ),
        ("search-task-none", lambda: ash.search(m, None, space, n_trials=1), TaskError, "search: task must be"),
        (
            "evaluate-policy-dict",
            lambda: ash.evaluate(m, t, {"fc1": 3}),
            PolicyError,
            "evaluate: policy must be an autoshrink.Policy",
        ),
        ("sensitivity-task-none", lambda: ash.sensitivity(m, None, space), TaskError, "sensitivity: task must be"),
        ("finetune-model-none", lambda: ash.finetune(None, t, steps=1), ConfigError, "finetune: model must be"),
        ("policy-huge-int", lambda: ash.LayerPolicy(sparsity=10**400), PolicyError, "sparsity: got"),
        ("finetune-lr-huge", lambda: ash.FinetuneConfig(lr=10**400), ConfigError, "finetune.lr: got"),
        (
            "evaluate-finetune-text",
            lambda: ash.evaluate(m, t, ash.Policy(), finetune_config="x"),
            ConfigError,
            "compress: finetune_config='x'; use an ash.FinetuneConfig (or None for no fine-tune).",
        ),
        (
            "measure-latency-text",
            lambda: ash.measure(m, t, latency="fast"),
            ConfigError,
            "measure: latency='fast'; use an ash.LatencyConfig or a mapping with any of warmup, min_repeats, "
            "min_seconds, max_repeats, layers.",
        ),
        (
            "measure-latency-mapping",
            lambda: ash.measure(m, t, latency={"warmup": "x"}),
            ConfigError,
            "LatencyConfig.warmup: got 'x'; use an integer >= 0.",
        ),
        (
            "apply-policy-example-list",
            lambda: ash.apply_policy(m, ash.Policy(), example_input=[1, 2]),
            PolicyError,
            "apply_policy: example_input=[1, 2]; give one input batch as a tensor",
        ),
        (
            "latency-negative",
            lambda: ash.LatencyConfig(warmup=-1),
            ConfigError,
            "LatencyConfig.warmup: got -1; use an integer >= 0.",
        ),
        (
            "latency-seconds-text",
            lambda: ash.LatencyConfig(min_seconds="1"),
            ConfigError,
            "LatencyConfig.min_seconds: got '1'; use seconds >= 0.",
        ),
        (
            "search-config-unknown",
            lambda: ash.SearchConfig(trials=5),
            ConfigError,
            "SearchConfig: unknown setting 'trials' (did you mean 'n_trials'?); the settings are objectives, ",
        ),
        (
            "save-packed-none",
            lambda: ash.save_packed(m, None),
            PackError,
            "save_packed: path=None; give the file to write, e.g. 'model.ashz'.",
        ),
    ]


@pytest.mark.parametrize("index", range(len(_wrong_types())), ids=[c[0] for c in _wrong_types()])
def test_wrong_argument_types_are_one_error(tmp_path, index) -> None:
    _, call, kind, message = _wrong_types()[index]
    refused_by_api(call, tmp_path, kind, message)
