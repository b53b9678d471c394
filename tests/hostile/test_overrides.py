"""Hostile command-line overrides of `autoshrink search`: each is one line naming the flag, the value
and the fix, before anything is created (no studies/ folder, no database)."""

from __future__ import annotations

import pytest

from .harness import refused_by_cli

GOOD = "name: hostile\nmodel: tests.hostile.factories:tiny\ntask: tests.hostile.factories:task\nn_trials: 2\n"

FLAGS = [  # id, the flags, the message
    ("timeout-negative", ["--timeout", "-5"], "search: --timeout -5.0: use seconds > 0."),
    ("timeout-nan", ["--timeout", "nan"], "search: --timeout nan: use seconds > 0."),
    (
        "objectives-unknown",
        ["--objectives", "[accuracy, bogus]"],
        "search: --objectives ['accuracy', 'bogus']: objectives: got 'bogus'; use any of accuracy, size, latency",
    ),
    (
        "objectives-mapping",
        ["--objectives", "{a: 1}"],
        "search: --objectives {'a': 1}: use a list of objective names from accuracy, size, latency, macs.",
    ),
    (
        "objectives-empty",
        ["--objectives", "[]"],
        "search: --objectives []: objectives: empty; give at least one of accuracy, size, latency, macs.",
    ),
    ("objectives-twice", ["--objectives", "[size, size]"], "objectives: 'size' is given twice."),
    ("drop-five", ["--max-accuracy-drop", "5"], "--max-accuracy-drop 5.0: use a fraction in [0, 1) (0.01 = 1 pp)."),
    ("seed-negative", ["--seed", "-3"], "search: --seed -3: use an integer in [0, 2^32)."),
    ("refine-top-negative", ["--refine-top", "-1"], "search: --refine-top -1: use an integer >= 0"),
    ("holdout-over-one", ["--holdout", "1.5"], "holdout: Task.holdout: got 1.5; use the share of eval_data"),
    ("holdout-zero", ["--holdout", "0"], "Task.holdout: got 0.0; use the share of eval_data to hold out, in (0, 1)"),
    ("ray-actors-zero", ["--ray-actors", "0"], "search: --ray-actors 0; use a positive number of actors."),
    (
        "ray-working-dir-missing",
        ["--ray-working-dir", "missing_dir"],
        "search: --ray-working-dir: 'missing_dir' does not exist (looked for ",
    ),
    ("ray-py-module-missing", ["--ray-py-module", "nope_mod"], "search: --ray-py-module[0]: 'nope_mod' does not exist"),
    (
        "ray-address-absent",
        ["--ray-address", "127.0.0.3:1"],
        "RayExecutor.address '127.0.0.3:1': no Ray head answers at 127.0.0.3:1 (Connection refused); start it (ray "
        "start --head --port PORT) or fix the address.",
    ),
    ("ray-address-not-host-port", ["--ray-address", "nohost"], "RayExecutor.address 'nohost': not host:port"),
    ("latency-list", ["--latency", "[1]"], "search: --latency [1]: use a mapping with any of warmup, min_repeats"),
    ("screen-maybe", ["--screen", "maybe"], "search: --screen 'maybe': use true (default), false, a share"),
    (
        "runtime-gpu",
        ["--runtime", "gpu"],
        "--runtime 'gpu': use auto, float, int8, int8-full, onnxruntime, onnxruntime-static, cuda-graph, cuda-int8.",
    ),
    ("max-latency-negative", ["--max-latency-ms", "-1"], "search: --max-latency-ms -1.0: use a latency in milli"),
    ("narrow-cutoff-two", ["--narrow-cutoff", "2"], "search: --narrow-cutoff 2.0: use a drop in (0, 1] (0.1 = 10 pp)"),
    ("sensitivity-sometimes", ["--sensitivity", "sometimes"], "search: --sensitivity 'sometimes': use true"),
    ("refine-steps-negative", ["--refine-steps", "-2"], "search: --refine-steps -2: use an integer >= 1"),
    ("refine-finetune-list", ["--refine-finetune", "[1]"], "search: --refine-finetune [1]: use a mapping of fine-tune"),
    ("study-name-space", ["--study-name", "a b"], "search: --study-name 'a b': use 1-128 letters, digits"),
    ("finetune-steps-negative", ["--finetune-steps", "-1"], "search: --finetune-steps -1: use an integer >= 0"),
    ("sampler-unknown", ["--sampler", "cmaes"], "search: --sampler 'cmaes': use one of front, nsga2, tpe, gp, random"),
    (
        "postgres-absent",
        ["--storage", "postgresql://u:secretpw@127.0.0.1:1/db"],
        "storage postgresql://u:***@127.0.0.1:1/db: cannot reach the database server at 127.0.0.1:1",
    ),
]


@pytest.mark.parametrize("flags, message", [c[1:] for c in FLAGS], ids=[c[0] for c in FLAGS])
def test_a_bad_override_is_one_line_and_creates_nothing(tmp_path, flags, message) -> None:
    (tmp_path / "study.yaml").write_text(GOOD)
    err = refused_by_cli(["search", "study.yaml", *flags], tmp_path, message)
    assert "secretpw" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal where CUDA is absent")
@pytest.mark.parametrize("runtime", ["cuda-graph", "cuda-int8"])
def test_a_gpu_runtime_without_cuda_is_one_line_and_creates_nothing(tmp_path, runtime) -> None:
    (tmp_path / "study.yaml").write_text(GOOD)
    message = f"search: runtime='{runtime}' runs on an NVIDIA GPU, but torch sees no CUDA GPU on this machine"
    refused_by_cli(["search", "study.yaml", "--runtime", runtime], tmp_path, message)
