"""No command destroys what it reads: a study database, a recipe, another application's file, any
input by any path or link; read-only commands leave a foreign or empty SQLite file untouched."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from autoshrink.cli import main


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def study_copy(searched, tmp_path) -> Path:
    """A private copy of the searched study's database (tests here may try to destroy it)."""
    db = tmp_path / "tiny.db"
    src, dst = sqlite3.connect(searched.storage[len("sqlite:///") :]), sqlite3.connect(db)
    src.backup(dst)  # the committed state, whatever the journal mode
    src.close()
    dst.close()
    return db


def _one_line(capsys, *parts: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("autoshrink: error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, err


def test_export_and_report_never_overwrite_the_study_database(study_copy, tmp_path, capsys) -> None:
    before = _digest(study_copy)
    url = f"sqlite:///{study_copy}"
    assert main(["export", "tiny", "--storage", url, "--trial", "0", "-o", str(study_copy)]) == 2
    _one_line(capsys, f"-o {study_copy}: that is the study database {study_copy}; writing there would destroy it")
    assert main(["report", "tiny", "--storage", url, "-o", str(study_copy)]) == 2
    _one_line(capsys, f"that is the study database {study_copy}; writing there would destroy it. Fix: name a new file.")
    link = tmp_path / "innocent.yaml"
    link.symlink_to(study_copy)
    assert main(["export", "tiny", "--storage", url, "--trial", "0", "-o", str(link)]) == 2
    _one_line(capsys, f"-o {link}: that is the study database {study_copy} (through a link)")
    other = tmp_path / "other.db"
    shutil.copy(study_copy, other)  # another study's database: still never overwritten
    assert main(["export", "tiny", "--storage", url, "--trial", "0", "-o", str(other)]) == 2
    _one_line(capsys, f"-o {other}: an SQLite database (a study's storage?), which autoshrink never overwrites")
    assert _digest(study_copy) == before == _digest(other)


def test_outputs_replace_only_files_of_their_own_kind(study_copy, tmp_path, capsys) -> None:
    url = f"sqlite:///{study_copy}"
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert main(["export", "tiny", "--storage", url, "--trial", "0", "-o", str(notes)]) == 2
    _one_line(
        capsys,
        f"-o {notes}: exists and is not an autoshrink recipe; autoshrink replaces only a file of the "
        "kind it writes there. Fix: name a new file, or remove that one first.",
    )
    assert main(["report", "tiny", "--storage", url, "-o", str(notes)]) == 2
    _one_line(capsys, "exists and is not an autoshrink report")
    assert notes.read_text() == "my notes\n"
    recipe = tmp_path / "r.yaml"
    assert main(["export", "tiny", "--storage", url, "--trial", "0", "-o", str(recipe)]) == 0
    assert main(["export", "tiny", "--storage", url, "--trial", "1", "-o", str(recipe)]) == 0  # re-export: fine
    assert "trial: 1" in recipe.read_text()
    assert main(["report", "tiny", "--storage", url, "-o", str(recipe)]) == 2  # a recipe is not a report
    _one_line(capsys, "exists and is not an autoshrink report")
    page = tmp_path / "r.html"
    assert main(["report", "tiny", "--storage", url, "-o", str(page)]) == 0
    assert main(["report", "tiny", "--storage", url, "-o", str(page)]) == 0  # re-written in place
    assert main(["export", "tiny", "--storage", url, "--trial", "0", "-o", str(tmp_path / "no" / "r.yaml")]) == 2
    _one_line(capsys, f"the folder {tmp_path / 'no'} does not exist; create it first.")


def test_apply_never_writes_over_its_recipe(searched, recipe, tmp_path, capsys) -> None:
    path = tmp_path / "r.yaml"
    recipe.save(path)
    before = _digest(path)
    base = [
        "apply",
        str(path),
        "--model",
        "tests.recipe.models:tiny",
        "--model-args",
        f'{{"weights": "{searched.weights}"}}',
    ]
    assert main(base + ["--out", str(path)]) == 2
    _one_line(capsys, f"--out {path}: that is the recipe {path}; writing there would destroy it")
    hard = tmp_path / "hard.ashz"
    os.link(path, hard)  # the same file by another name
    assert main(base + ["--out", str(hard)]) == 2
    _one_line(capsys, f"--out {hard}: that is the recipe {path}")
    assert main(base + ["--out", str(tmp_path / "m.ashz"), "--onnx", str(path)]) == 2
    _one_line(capsys, f"--onnx {path}: that is the recipe {path}")
    assert main(base + ["--out", str(tmp_path / "m.ashz"), "--onnx", str(tmp_path / "m.ashz")]) == 2
    _one_line(capsys, f"--onnx {tmp_path / 'm.ashz'}: that is --out {tmp_path / 'm.ashz'}; writing there")
    assert _digest(path) == before and not (tmp_path / "m.ashz").exists()


@pytest.mark.parametrize(
    "content", [b"", b"plain text, not a database\n", "foreign"], ids=["empty", "not-sqlite", "foreign-sqlite"]
)
def test_read_only_commands_leave_other_files_untouched(tmp_path, capsys, content) -> None:
    db = tmp_path / "app.db"
    if content == "foreign":
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE customers (name TEXT)")
        con.commit()
        con.close()
        expected = (
            "is an SQLite database but not an Optuna study storage (no alembic_version, studies, trials, "
            "version_info tables); nothing was changed"
        )
    else:
        db.write_bytes(content)
        expected = "is an empty file, not a study database" if not content else "is not an SQLite database"
    before = _digest(db)
    for argv in (
        ["export", "x", "--storage", f"sqlite:///{db}", "--trial", "0", "-o", str(tmp_path / "r.yaml")],
        ["report", "x", "--storage", f"sqlite:///{db}", "-o", str(tmp_path / "r.html")],
    ):
        assert main(argv) == 2
        _one_line(capsys, expected)
    assert _digest(db) == before and sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]
