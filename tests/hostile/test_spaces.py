"""Hostile search-space YAML files, through `ash.load_space` and through `autoshrink search`."""

from __future__ import annotations

import os

import pytest

import autoshrink as ash
from autoshrink.errors import ConfigError

from .harness import refused_by_api, refused_by_cli

BOMB = "a: &a [1, 2]\n" + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg"))

CASES = [  # id, file content (str or bytes), the message
    ("duplicate-key", "defaults:\n  bits: [8]\n  bits: [4]\n", "key 'bits' appears twice (first on line 2)"),
    ("alias-bomb", BOMB, "expands to more than 100,000 values through its aliases"),
    ("recursive-anchor", "defaults: &d\n  inner: *d\n", "an alias refers to a value that contains it"),
    ("deep-nesting", "a: " + "[" * 80 + "]" * 80 + "\n", "nested deeper than 64 levels"),
    ("mapping-key", "? [a, b]\n: 1\n", "a key that is a list or mapping"),
    ("utf16", "defaults: {}\n".encode("utf-16"), "UTF-16 text; save it as UTF-8"),
    ("latin1", b"description: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 16)"),
    ("binary", b"\x7fELF\x02\x01\x01\x00\x00\x00", "binary data (NUL bytes)"),
    ("too-large", "description: " + "x" * (1 << 20) + "\n", "over the 1,048,576-byte limit"),
    ("python-tag", "defaults: !!python/object/apply:os.system ['touch pwned']\n", "tag refused"),
    ("syntax", "defaults: [8, 4\n", "not valid YAML"),
    ("bits-fraction", "defaults:\n  bits: {low: 2.5, high: 8}\n", "defaults.bits.low: got 2.5; bits are whole numbers"),
    (
        "step-as-text",
        "defaults:\n  sparsity: {low: 0, high: 0.9, step: 1e-12}\n",
        "YAML read '1e-12' as text: write it with a dot",
    ),
    (
        "tiny-step",
        "defaults:\n  sparsity: {low: 0.0, high: 0.9, step: 1.0e-12}\n",
        "give more than 1,000 values; use a larger step",
    ),
    ("huge-high", "defaults:\n  rank: {low: 0.1, high: 1.0e+12, step: 0.1}\n", "give more than 1,000 values"),
    ("subnormal-step", "defaults:\n  rank: {low: 0.1, high: 1.0, step: 1.0e-320}\n", "give more than 1,000 values"),
    ("inf", "defaults:\n  sparsity: [.inf]\n", "defaults.sparsity[0]: got inf; sparsity must be a finite number"),
    ("nan", "defaults:\n  rank: [.nan]\n", "rank must be a finite number"),
    ("400-digits", "defaults:\n  bits: [" + "9" * 400 + "]\n", "bits must be a finite number"),
    ("bad-regex", "rules:\n  - match: 're:fc('\n    bits: [8]\n", "not a valid regular expression"),
    ("unknown-top-key", "defualts: {}\n", "unknown key 'defualts'"),
    ("unknown-field", "defaults:\n  bitz: [8]\n", "unknown field 'bitz'"),
    ("integer-field-key", "defaults:\n  0: [8]\n", "unknown field '0'"),
    ("rules-mapping", "rules: {match: fc1}\n", "expected a list of rules"),
    ("rule-without-target", "rules:\n  - bits: [8]\n", "a rule needs `match`"),
    ("rule-is-text", "rules: [fc1]\n", "a rule is a mapping"),
    ("empty-choices", "defaults:\n  bits: []\n", "the list of choices is empty"),
    ("repeated-choices", "defaults:\n  bits: [8, 8]\n", "the choices repeat a value"),
    ("sparsity-over-one", "defaults:\n  sparsity: [1.5]\n", "sparsity must be in [0, 1)"),
    ("bits-unsupported", "defaults:\n  bits: [3.5]\n", "bits must be one of"),
    ("structured-range", "defaults:\n  structured: {low: 0, high: 1}\n", "a range makes no sense"),
    ("low-over-high", "defaults:\n  rank: {low: 0.9, high: 0.1, step: 0.1}\n", "low 0.9 > high 0.1; swap them"),
    ("root-list", "- 8\n- 4\n", "a search space is a mapping"),
    ("finetune-list", "finetune: [1, 2]\n", "expected a mapping of fine-tune settings"),
    ("skip-text", "rules:\n  - match: fc1\n    skip: 'yes'\n", "got 'yes'; it must be true or false"),
    ("codebook-unknown", "defaults:\n  codebook: [lloyd]\n", "codebook must be one of"),
]


@pytest.mark.parametrize("content, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_load_space_refuses(tmp_path, content, message) -> None:
    path = tmp_path / "space.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    refused_by_api(lambda: ash.load_space(path), tmp_path, ConfigError, message)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "target, message",
    [
        ("folder", "not a regular file (a folder, FIFO or device)"),
        ("fifo", "not a regular file (a folder, FIFO or device)"),
        ("/dev/zero", "/dev/zero: not a regular file"),
        ("missing.yaml", "missing.yaml: no such file; check the path."),
    ],
)
def test_load_space_never_blocks_on_special_files(tmp_path, target, message) -> None:
    if target == "folder":
        (tmp_path / "folder").mkdir()
    elif target == "fifo":
        os.mkfifo(tmp_path / "fifo")
    path = target if target.startswith("/") else str(tmp_path / target)
    refused_by_api(lambda: ash.load_space(path), tmp_path, ConfigError, message, seconds=5)


@pytest.mark.parametrize("case", ["duplicate-key", "alias-bomb", "bad-regex", "tiny-step"])
def test_search_with_a_hostile_space_leaves_nothing_behind(tmp_path, case) -> None:
    _, content, message = next(c for c in CASES if c[0] == case)
    (tmp_path / "space.yaml").write_text(content)
    (tmp_path / "study.yaml").write_text(
        "name: hostile\nmodel: tests.hostile.factories:tiny\n"
        "task: tests.hostile.factories:task\nspace: space.yaml\nn_trials: 2\n"
    )
    refused_by_cli(["search", "study.yaml"], tmp_path, message)
