"""Hostile recipes, storages and arguments through `autoshrink apply / export / report / dashboard`
and argument parsing: one line, exit 2, nothing written, no input changed."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from .harness import refused_by_cli

RECIPE = (Path(__file__).parents[1] / "recipe" / "fixtures" / "format1.recipe.yaml").read_text()
MODEL = ["--model", "tests.hostile.factories:tiny"]


def _unsigned(text: str) -> str:
    """The recipe with its checksum line removed (what a hand edit must do)."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("checksum:"))


RECIPES = [  # id, recipe file content, the message
    ("edited-signed", RECIPE.replace("bits: 4", "bits: 2"), "checksum mismatch"),
    ("bad-bits", _unsigned(RECIPE).replace("bits: 4", "bits: 9"), "bits"),
    (
        "future-format",
        _unsigned(RECIPE).replace("autoshrink-recipe/1", "autoshrink-recipe/9"),
        "written by a newer autoshrink",
    ),
    ("not-a-recipe", "name: a study config\nmodel: x:y\n", "not an autoshrink recipe"),
    ("duplicate-key", _unsigned(RECIPE) + "seed: 3\n", "key 'seed' appears twice"),
    ("binary", b"\x00\x01\x02\x03", "study"),
    ("too-large", "# " + "x" * (1 << 20) + "\n" + RECIPE, "over the 1,048,576-byte limit"),
    (
        "alias-bomb",
        "a: &a [1, 2]\n" + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg")),
        "expands to more than",
    ),
    ("python-tag", "format: !!python/object/apply:os.system ['touch pwned']\n", "tag refused"),
    ("latin1", b"format: caf\xe9\n", "not UTF-8 text"),
    (
        "shape-huge",
        _unsigned(RECIPE).replace("shape: [1, 1, 8, 8]", "shape: [100000, 100000, 8, 8]"),
        "example_input.shape: got [100000, 100000, 8, 8]; expected at most 8 dimensions (integers >= 1) of at "
        "most 67,108,864 elements in all",
    ),
    (
        "shape-zero",
        _unsigned(RECIPE).replace("shape: [1, 1, 8, 8]", "shape: [0, 1, 8, 8]"),
        "example_input.shape: got [0, 1, 8, 8]",
    ),
    (
        "shape-misfit",
        _unsigned(RECIPE).replace("shape: [1, 1, 8, 8]", "shape: [1, 3, 5, 5]"),
        "example_input: the model cannot run zeros of the recorded shape [1, 3, 5, 5] (float32): RuntimeError: ",
    ),
]


@pytest.mark.parametrize("content, message", [c[1:] for c in RECIPES], ids=[c[0] for c in RECIPES])
def test_apply_refuses_a_bad_recipe_and_writes_nothing(tmp_path, content, message) -> None:
    path = tmp_path / "r.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    if message == "study":
        message = "r.yaml: "
    refused_by_cli(["apply", "r.yaml", *MODEL, "--out", "m.ashz"], tmp_path, message)
    assert not (tmp_path / "pwned").exists()


def _sqlite(path: Path, table: str = "customers") -> None:
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE {table} (x TEXT)")
    con.commit()
    con.close()


APPLY = [  # id, extra arguments (after the recipe and --model), the message; r.yaml is a valid recipe
    ("out-is-recipe", ["--out", "r.yaml"], "--out r.yaml: that is the recipe r.yaml; writing there would destroy it"),
    ("out-is-sqlite", ["--out", "app.db"], "--out app.db: an SQLite database"),
    ("out-is-notes", ["--out", "notes.txt"], "--out notes.txt: exists and is not a packed model (.ashz)"),
    ("out-is-folder", ["--out", "sub"], "--out sub: a folder"),
    ("out-folder-missing", ["--out", "nowhere/m.ashz"], "the folder nowhere does not exist"),
    ("onnx-is-out", ["--out", "m.ashz", "--onnx", "m.ashz"], "--onnx m.ashz: that is --out m.ashz"),
    ("onnx-is-recipe", ["--out", "m.ashz", "--onnx", "r.yaml"], "--onnx r.yaml: that is the recipe r.yaml"),
    ("model-args-json", ["--out", "m.ashz", "--model-args", "{bad"], "--model-args: not valid JSON"),
    ("model-args-list", ["--out", "m.ashz", "--model-args", "[1]"], "--model-args: got '[1]'; use a JSON object"),
    (
        "model-args-unknown",
        ["--out", "m.ashz", "--model-args", '{"depth": 3}'],
        "--model-args: got an unexpected keyword argument 'depth'",
    ),
    (
        "task-is-model",
        ["--out", "m.ashz", "--task", "tests.hostile.factories:tiny"],
        "returned Tiny, not an autoshrink.Task",
    ),
    (
        "task-raises",
        ["--out", "m.ashz", "--task", "tests.hostile.factories:raises"],
        "tests.hostile.factories:raises() raised ValueError",
    ),
    ("task-missing", ["--out", "m.ashz", "--task", "nope.nope:task"], "cannot import 'nope.nope'"),
]


@pytest.mark.parametrize("extra, message", [c[1:] for c in APPLY], ids=[c[0] for c in APPLY])
def test_apply_argument_errors(tmp_path, extra, message) -> None:
    (tmp_path / "r.yaml").write_text(RECIPE)
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "sub").mkdir()
    _sqlite(tmp_path / "app.db")
    refused_by_cli(["apply", "r.yaml", *MODEL, *extra], tmp_path, message)


def test_apply_to_another_model_writes_nothing(tmp_path) -> None:
    (tmp_path / "r.yaml").write_text(RECIPE)
    refused_by_cli(
        ["apply", "r.yaml", "--model", "tests.recipe.models:Mixed", "--out", "m.ashz"],
        tmp_path,
        "the model does not match the recipe's fingerprint",
    )


def test_apply_of_an_int8_recipe_to_a_model_without_linear_layers_writes_nothing(tmp_path) -> None:
    (tmp_path / "r.yaml").write_text(_unsigned(RECIPE).replace("runtime: float", "runtime: int8-dynamic"))
    refused_by_cli(
        ["apply", "r.yaml", "--model", "tests.hostile.factories:conv_only", "--no-strict", "--out", "m.ashz"],
        tmp_path,
        "r.yaml: metrics.runtime is 'int8-dynamic', whose int8 kernels run nn.Linear layers, and Sequential has "
        "none: its figures could not be reproduced. Fix: export the recipe again from a study of this model (its "
        "runtime is float).",
    )


def test_apply_with_a_task_that_does_not_fit_writes_nothing(tmp_path) -> None:
    (tmp_path / "r.yaml").write_text(RECIPE)
    refused_by_cli(
        ["apply", "r.yaml", *MODEL, "--task", "tests.hostile.factories:float_labels_task", "--out", "m.ashz"],
        tmp_path,
        "Task.train_data: labels are torch.float32, but the accuracy metric compares them with class indices",
    )


def test_apply_of_a_fifo_recipe_does_not_block(tmp_path) -> None:
    os.mkfifo(tmp_path / "r.yaml")
    refused_by_cli(["apply", "r.yaml", *MODEL, "--out", "m.ashz"], tmp_path, "r.yaml: not a regular file", seconds=5)


STORAGES = [  # id, how the storage file is made, the message
    ("missing", None, "no such file"),
    ("empty", b"", "is an empty file, not a study database; nothing was changed"),
    ("text", b"just text\n", "is not an SQLite database; nothing was changed"),
    ("foreign-sqlite", "sqlite", "is an SQLite database but not an Optuna study storage"),
    ("damaged", "damaged", "s.db is a damaged SQLite database (*** in database main *** On tree page"),
]


def _damaged_study(path: Path) -> None:
    """An Optuna study file with one b-tree page overwritten: what a crash mid-copy or a bad disk leaves."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="x")
    study.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=3)
    data = bytearray(path.read_bytes())
    data[4096 * 3 + 8 : 4096 * 3 + 200] = b"\xa5" * 192
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("command", ["export", "report"])
@pytest.mark.parametrize("made, message", [c[1:] for c in STORAGES], ids=[c[0] for c in STORAGES])
def test_read_only_commands_on_a_wrong_storage(tmp_path, command, made, message) -> None:
    if made == "sqlite":
        _sqlite(tmp_path / "s.db")
    elif made == "damaged":
        _damaged_study(tmp_path / "s.db")
    elif made is not None:
        (tmp_path / "s.db").write_bytes(made)
    out = ["--trial", "0", "-o", "r.yaml"] if command == "export" else ["-o", "r.html"]
    refused_by_cli([command, "x", "--storage", "sqlite:///s.db", *out], tmp_path, message)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "x", "--storage", "nope://x", "--trial", "0", "-o", "r.yaml"], "storage nope://x: cannot open it"),
        (
            ["export", "x", "--storage", "sqlite:///s.db", "--trial", "0", "--minimize", "size", "-o", "r.yaml"],
            "--minimize goes with --max-accuracy-drop",
        ),
        (["export", "x", "--trial", "0"], "the following arguments are required: -o/--output"),
        (["export", "x", "--trial", "zero", "-o", "r.yaml"], "argument --trial: invalid int value: 'zero'"),
        (["apply", "r.yaml", "--model", "a:b"], "the following arguments are required: --out"),
        (["search", "study.yaml", "--n-trials", "many"], "argument --n-trials: invalid int value: 'many'"),
        (["search", "study.yaml", "--executor", "mpi"], "argument --executor: invalid choice: 'mpi'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (
            [],
            "autoshrink: error: no command given; use one of demo, search, sensitivity, export, apply, walkthrough, "
            "dashboard, report (`autoshrink --help` says what each does; `autoshrink demo` is a first run).\n",
        ),
        (["dashboard", "s.db", "--port", "70000"], "--port 70000: not a TCP port"),
        (["report", "x", "--storage", "sqlite:///:memory:", "-o", "r.html"], "in-memory SQLite storage holds no study"),
    ],
)
def test_argument_and_storage_errors_are_one_line(tmp_path, argv, message) -> None:
    refused_by_cli(argv, tmp_path, message)


@pytest.mark.parametrize(
    "made, message",
    [
        ("sqlite", "is another application's SQLite database (tables customers); a search never adds Optuna's tables"),
        (b"notes\n", "exists and is not an SQLite database; a search never writes into another file"),
    ],
    ids=["foreign-sqlite", "text-file"],
)
def test_search_never_writes_into_a_foreign_file(tmp_path, made, message) -> None:
    if made == "sqlite":
        _sqlite(tmp_path / "app.db")
    else:
        (tmp_path / "app.db").write_bytes(made)
    (tmp_path / "study.yaml").write_text(
        "name: hostile\nmodel: tests.hostile.factories:tiny\n"
        "task: tests.hostile.factories:task\nn_trials: 2\nstorage: sqlite:///app.db\n"
    )
    refused_by_cli(["search", "study.yaml"], tmp_path, message)


def _study_config(tmp_path: Path, storage: str) -> None:
    (tmp_path / "study.yaml").write_text(
        "name: hostile\nmodel: tests.hostile.factories:tiny\n"
        f"task: tests.hostile.factories:task\nn_trials: 2\nstorage: {storage}\n"
    )


@pytest.mark.parametrize(
    "storage, message",
    [
        (
            "sqlite:///nowhere/s.db",
            "storage 'sqlite:///nowhere/s.db': the folder nowhere does not exist; create it (mkdir -p nowhere) or "
            "name a .db file in an existing folder.",
        ),
        (
            "sqlite:///no/where/at/all/s.db",
            "storage 'sqlite:///no/where/at/all/s.db': the folder no/where/at/all does not exist; create it "
            "(mkdir -p no/where/at/all)",
        ),
        (
            "sqlite:///notes.txt/s.db",
            "storage 'sqlite:///notes.txt/s.db': notes.txt is a file, not a folder; name a .db file in a folder.",
        ),
        ("sqlite:///notes.txt/deeper/s.db", "notes.txt is a file, not a folder"),
    ],
    ids=["folder-missing", "deep-folder-missing", "folder-is-file", "under-a-file"],
)
def test_search_refuses_a_storage_folder_that_is_not_there(tmp_path, storage, message) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    _study_config(tmp_path, storage)
    refused_by_cli(["search", "study.yaml"], tmp_path, message)


def test_search_creates_only_the_default_studies_folder(tmp_path, monkeypatch) -> None:
    from autoshrink.errors import ConfigError
    from autoshrink.search.study.storage import check_storage, make_storage

    monkeypatch.chdir(tmp_path)
    check_storage("sqlite:///studies/x.db")  # the default: created when the study is opened
    make_storage("sqlite:///studies/x.db")
    assert (tmp_path / "studies").is_dir()
    with pytest.raises(ConfigError, match="the folder studies/sub does not exist"):
        check_storage("sqlite:///studies/sub/x.db")


def test_search_refuses_a_damaged_study_and_never_writes_into_it(tmp_path) -> None:
    _damaged_study(tmp_path / "s.db")
    _study_config(tmp_path, "sqlite:///s.db")
    refused_by_cli(
        ["search", "study.yaml"],
        tmp_path,
        "storage sqlite:///s.db: s.db is a damaged SQLite database (*** in database main *** On tree page 4 cell 0: "
        "Offset 42405 out of range 4084..4092); nothing was changed. Fix: restore it from a backup (or `sqlite3 s.db "
        ".recover | sqlite3 recovered.db` and pass recovered.db), or name a new .db file.",
    )
