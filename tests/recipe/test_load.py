from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import autoshrink as ash
from autoshrink.cli import main
from autoshrink.errors import RecipeError

from .conftest import ROOT


def written(recipe: ash.Recipe, tmp_path: Path, edit=None, *, keep_checksum: bool = False) -> Path:
    """The recipe saved to r.yaml, then `edit(text) -> text` applied (checksum line dropped unless kept)."""
    p = tmp_path / "r.yaml"
    recipe.save(p)
    text = p.read_text()
    if edit:
        text = edit(text)
        if not keep_checksum:
            text = re.sub(r"(?m)^checksum: .*\n", "", text)
    p.write_text(text)
    return p


def line_of(path: Path, start: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(start))


def sub(old: str, new: str):
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


CASES = [  # (edit, keep checksum, expected message; {line:<prefix>} is the line starting with <prefix>)
    (sub("metrics:\n", "metrics: [\n"), True, r"{path}:\d+: not valid YAML \("),
    (
        sub("size_bytes: ", "size_bytes: 1"),
        True,
        r"{path}:{line:checksum}: checksum: the recipe was modified after it was written \(checksum mismatch\). Fix: "
        r"if the edit is intended, delete the checksum line to accept hand edits",
    ),
    (
        sub("format: autoshrink-recipe/2", "format: autoshrink-recipe/3"),
        True,
        r"{path}:{line:format}: format: written by a newer autoshrink \(format autoshrink-recipe/3\); this one "
        r"reads autoshrink-recipe/2. Fix: upgrade autoshrink.",
    ),
    (
        sub("format: autoshrink-recipe/2\n", ""),
        True,
        r"{path}: format: not an autoshrink recipe \(no 'format' field; expected 'format: autoshrink-recipe/2'\)",
    ),
    (lambda t: "- just\n- a list\n", True, r"{path}: format: not an autoshrink recipe"),
    (
        sub("format: autoshrink-recipe/2", "format: onnx"),
        True,
        r"{path}:{line:format}: format: not an autoshrink recipe \(format 'onnx'",
    ),
    (
        lambda t: re.sub(r"(?m)^policy:\n(  .*\n)+", "", t),
        False,
        r"{path}: policy: missing; a recipe needs format, autoshrink_version, .*, model. Fix: re-export",
    ),
    (
        lambda t: re.sub(
            r"(?m)^    fc1: \{sparsity: 0.5, structured: false, bits: 4",
            "    fc1: {sparsity: 0.5, structured: false, bits: 12",
            t,
        ),
        False,
        r"{path}:{line:fc1:}: policy.layers.fc1.bits: got 12; allowed are 2..8",
    ),
    (
        sub("    fc1: {sparsity: 0.5", "    fc1: {sparsity: 1.5"),
        False,
        r"{path}:{line:fc1:}: policy.layers.fc1.sparsity: got 1.5; it must be a number in \[0, 1\)",
    ),
    (
        sub("    fc1: {sparsity", "    fc9: {sparsity"),
        False,
        r"{path}:{line:fc9}: policy.layers.fc9: names a layer that is not in the model fingerprint",
    ),
    (sub("  lr: 0.001", "  lr: -1"), False, r"{path}:{line:lr:}: finetune.lr: got -1; it must be a finite number >= 0"),
    (
        sub("  optimizer: adam", "  optimizer: lbfgs"),
        False,
        r"{path}:{line:optimizer}: finetune.optimizer: got 'lbfgs'",
    ),
    (sub("\nseed: 0", "\nseed: 3"), False, r"{path}:{line:seed}: seed: got 3 but finetune.seed is 0"),
    (
        sub("  size_bytes: ", "  size_bytes: -"),
        False,
        r"{path}:{line:size_bytes}: metrics.size_bytes: got -\d+; expected an integer >= 1",
    ),
    (
        sub("  runtime: float", "  runtime: tensorrt"),
        False,
        r"{path}:{line:runtime}: metrics.runtime: got 'tensorrt'; use one of float, int8-dynamic",
    ),
    (
        sub("  dtype: float32", "  dtype: float99"),
        False,
        r"{path}:{line:dtype}: example_input.dtype: got 'float99'; expected a torch dtype name",
    ),
    (sub("  trial: ", "  trial: x"), False, r"{path}:{line:trial}: source.trial: got 'x\d+'; expected an integer >= 0"),
    (sub("device: cpu\n", "device: cpu\nextra: 1\n"), False, r"{path}:{line:extra}: extra: unknown field 'extra'"),
    (
        sub("weight: [32, 64]", "weight: [32, 65]"),
        False,
        r"{path}:{line:sha256}: model.sha256: got '[0-9a-f]+...', which does not match model.class and model.layers",
    ),
]


@pytest.mark.parametrize(
    "edit, keep, message",
    CASES,
    ids=[
        "malformed",
        "tampered",
        "newer-format",
        "no-format",
        "not-a-mapping",
        "other-format",
        "missing-policy",
        "bits-12",
        "sparsity-1.5",
        "unknown-layer",
        "negative-lr",
        "optimizer",
        "seed-disagrees",
        "negative-size",
        "runtime",
        "dtype",
        "trial-type",
        "unknown-field",
        "edited-fingerprint",
    ],
)
def test_bad_recipes_give_one_line_errors_naming_file_line_field_value(
    recipe, tmp_path, capsys, edit, keep, message
) -> None:
    p = written(recipe, tmp_path, edit, keep_checksum=keep)
    expected = re.sub(
        r"\{line:(.*?)\}", lambda m: str(line_of(p, m.group(1))), message.replace("{path}", re.escape(str(p)))
    )
    with pytest.raises(RecipeError) as info:
        ash.Recipe.load(p)
    assert "\n" not in str(info.value)
    assert re.match(expected, str(info.value)), str(info.value)
    # the same from the command line: exit 2, that one line on stderr, no traceback
    assert main(["apply", str(p), "--model", "tests.recipe.models:tiny", "--out", str(tmp_path / "m.ashz")]) == 2
    err = capsys.readouterr().err
    assert err == f"autoshrink: error: {info.value}\n" and not (tmp_path / "m.ashz").exists()


def test_deleting_the_checksum_line_accepts_hand_edits(recipe, tmp_path) -> None:
    p = written(recipe, tmp_path, sub("    fc1: {sparsity: 0.5", "    fc1: {sparsity: 0.75"))
    edited = ash.Recipe.load(p)
    assert edited.policy.layers["fc1"].sparsity == 0.75 and edited.policy.layers["fc2"].bits == 8


def test_python_object_tags_are_refused_and_never_run(recipe, tmp_path) -> None:
    marker = tmp_path / "pwned"
    p = written(recipe, tmp_path, sub("device: cpu", f"device: !!python/object/apply:os.system ['touch {marker}']"))
    with pytest.raises(
        RecipeError,
        match=rf"{re.escape(str(p))}:\d+: not valid YAML here, tag refused \(could not "
        r"determine a constructor for the tag "
        r"'tag:yaml.org,2002:python/object/apply:os.system'",
    ):
        ash.Recipe.load(p)
    proc = subprocess.run(
        [sys.executable, "-m", "autoshrink.cli", "apply", str(p), "--model", "x:y", "--out", str(tmp_path / "m.ashz")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "tag refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_missing_file(tmp_path) -> None:
    with pytest.raises(RecipeError, match=rf"{re.escape(str(tmp_path))}/none.yaml: no such file; check the path."):
        ash.Recipe.load(tmp_path / "none.yaml")
