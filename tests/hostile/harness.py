"""Run a CLI command or an API call on hostile input and check the promise: one clear message
(exit 2 and one line from the CLI; an AutoshrinkError from the API), within a time and memory
bound, and the working directory with every input file byte-identical afterwards."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoshrink.cli import main
from autoshrink.errors import AutoshrinkError


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` (bytecode caches aside) -> its sha256 (or 'dir', 'link', 'special')."""
    state: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            state[rel] = "dir"
        elif path.is_file():
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[rel] = "special"
    return state


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    error: BaseException | None
    seconds: float
    peak_mb: float


def _measured(fn: Callable[[], Any], cwd: Path) -> tuple[Any, BaseException | None, float, float]:
    old = os.getcwd()
    os.chdir(cwd)
    tracemalloc.start()
    t0 = time.perf_counter()
    value, error = None, None
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001 - recorded for the caller's assertions
        error = exc
    finally:
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        os.chdir(old)
    return value, error, seconds, peak


def run_cli(argv: list[str], cwd: Path) -> Outcome:
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                return main(argv)
            except SystemExit as exc:  # argparse
                return int(exc.code or 0)

    code, error, seconds, peak = _measured(call, cwd)
    return Outcome(code, out.getvalue(), err.getvalue(), error, seconds, peak)


def refused_by_cli(argv: list[str], cwd: Path, message: str, *, seconds: float = 20.0, megabytes: float = 256.0) -> str:
    """Run `autoshrink ARGV` in `cwd`; assert exit 2, one line naming `message`, nothing changed."""
    before = snapshot(cwd)
    r = run_cli(argv, cwd)
    assert r.error is None, f"raised {type(r.error).__name__}: {r.error}"
    assert r.code == 2, (r.code, r.err)
    assert r.err.startswith("autoshrink: error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err and message in r.err, r.err
    assert snapshot(cwd) == before, "the command changed the working directory or its inputs"
    assert r.seconds < seconds, r.seconds
    assert r.peak_mb < megabytes, r.peak_mb
    return r.err


def refused_by_api(
    call: Callable[[], Any],
    cwd: Path,
    kind: type[AutoshrinkError],
    message: str,
    *,
    seconds: float = 20.0,
    megabytes: float = 256.0,
) -> AutoshrinkError:
    """Call `call()` in `cwd`; assert it raised `kind` whose message holds `message`, nothing changed."""
    before = snapshot(cwd)
    _, error, took, peak = _measured(call, cwd)
    assert isinstance(error, kind), f"expected {kind.__name__}, got {type(error).__name__}: {error}"
    assert message in str(error), str(error)
    assert "\n" not in str(error), str(error)
    assert snapshot(cwd) == before, "the call changed the working directory or its inputs"
    assert took < seconds and peak < megabytes, (took, peak)
    return error
