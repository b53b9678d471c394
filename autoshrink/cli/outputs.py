"""Where a command may write: never over one of its inputs (by any path or link), never over a study
database, and never over an existing file of another kind -- a command replaces only a file it
could have written itself (re-exporting a recipe, re-writing a report). Checked before any work;
the writes themselves are atomic (a temporary file, then a rename)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ConfigError
from ..recipe.recipe import HEADER as RECIPE_HEADER

SQLITE_HEADER = b"SQLite format 3\x00"
_REPORT_HEAD = b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>autoshrink report'

# kind -> (what it is called, whether an existing file's first bytes are one)
KINDS: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    "recipe": ("an autoshrink recipe", lambda head: head.startswith(RECIPE_HEADER.splitlines()[0].encode())),
    "report": ("an autoshrink report", lambda head: head.startswith(_REPORT_HEAD)),
    "packed": ("a packed model (.ashz)", lambda head: head.startswith(b"ASHZ")),
    "onnx": ("an ONNX model", lambda head: head[:1] == b"\x08"),  # a ModelProto opens with ir_version (field 1)
}


def sqlite_file(url: str | None) -> str | None:
    """The file of an sqlite:/// storage URL (None for other storages and in-memory SQLite)."""
    if not url or not url.startswith("sqlite:///"):
        return None
    raw = url[len("sqlite:///") :].split("?", 1)[0]
    return None if raw in ("", ":memory:") else raw


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output(
    path: str | os.PathLike[str],
    flag: str,
    kind: str,
    inputs: Sequence[tuple[str, str | os.PathLike[str] | None]] = (),
    *,
    make_parent: bool = False,
) -> Path:
    """`path` as a Path, or a ConfigError naming `flag` if writing a `kind` file there would destroy
    an input (given as (what, path) pairs), a study database or a file of another kind, or if its
    folder is missing (unless the writer makes it: `make_parent`)."""
    target = Path(path)
    what, is_kind = KINDS[kind]
    for name, given in inputs:
        if given is not None and _same(target, Path(given)):
            link = " (through a link)" if os.path.realpath(target) != os.path.abspath(target) else ""
            raise ConfigError(
                f"{flag} {target}: that is {name} {given}{link}; writing there would destroy it. Fix: name a new file."
            )
    if target.is_dir():
        raise ConfigError(f"{flag} {target}: a folder; name a file, e.g. {target / ('out.' + _suffix(kind))}.")
    if target.exists():
        if not target.is_file():
            raise ConfigError(f"{flag} {target}: not a regular file (a FIFO or device); name a new file.")
        with target.open("rb") as f:
            head = f.read(256)
        if head.startswith(SQLITE_HEADER):
            raise ConfigError(
                f"{flag} {target}: an SQLite database (a study's storage?), which autoshrink never "
                f"overwrites. Fix: name a new file."
            )
        if not is_kind(head):
            raise ConfigError(
                f"{flag} {target}: exists and is not {what}; autoshrink replaces only a file of "
                f"the kind it writes there. Fix: name a new file, or remove that one first."
            )
    if not make_parent and not target.parent.is_dir():
        raise ConfigError(f"{flag} {target}: the folder {target.parent} does not exist; create it first.")
    return target


def _suffix(kind: str) -> str:
    return {"recipe": "yaml", "report": "html", "packed": "ashz", "onnx": "onnx"}[kind]
