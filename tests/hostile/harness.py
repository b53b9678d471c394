"""Run a CLI command or an API call on hostile input and check the promise: one clear message
(exit 2 and one line on stderr, nothing on stdout, from the CLI; an AutoshrinkError from the API),
within a time and memory bound, and nothing written anywhere: the working directory, the folders of
the paths the command was given, HOME and the temporary folder (Ray's included) are snapshot (hash,
mode, size) before and after.

CLI cases run in a subprocess forked per case by tests/hostile/zygote.py: HOME and TMPDIR point at
fresh folders, the address space is limited, and memory is the child's peak RSS (wait4) less its
RSS when it started. API cases
run in this process with HOME and TMPDIR redirected the same way; their memory is this process's peak
RSS over the call (the kernel's high-water mark, reset before it: tensors and native allocations
included)."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoshrink.errors import AutoshrinkError

from .zygote import status_kb

ROOT = Path(__file__).resolve().parents[2]
ADDRESS_SPACE_MB = 4096  # a CLI case may map this much beyond the zygote's address space


def _entry(path: Path) -> str:
    st = path.lstat()
    mode = f"{stat.S_IMODE(st.st_mode):o}"
    if stat.S_ISLNK(st.st_mode):
        return f"link {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return f"dir {mode}"
    if stat.S_ISREG(st.st_mode):
        return f"file {mode} {st.st_size} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return f"special {mode}"


def snapshot(root: Path, recursive: bool = True) -> dict[str, str]:
    """Every entry under `root` (directly in it unless `recursive`; bytecode caches aside) -> its kind,
    mode, and for files size and sha256."""
    state: dict[str, str] = {}
    if not root.is_dir():
        return {".": _entry(root)} if root.exists() or root.is_symlink() else {}
    for path in sorted(root.rglob("*") if recursive else root.iterdir()):
        if "__pycache__" in path.parts:
            continue
        try:
            state[str(path.relative_to(root))] = _entry(path)
        except OSError:  # went away while we looked
            continue
    return state


@dataclass
class Watched:
    """The folders a case must leave as they were: (folder, recursive)."""

    folders: list[tuple[Path, bool]]

    def state(self) -> dict[str, dict[str, str]]:
        return {f"{folder}{'/**' if deep else ''}": snapshot(folder, deep) for folder, deep in self.folders}


def watched(cwd: Path, home: Path, tmp: Path, argv: Sequence[str] = ()) -> Watched:
    """cwd, HOME and TMPDIR recursively; the folder of each existing path in `argv` (not recursively)."""
    folders = [(cwd, True), (home, True), (tmp, True)]
    for arg in argv:
        for part in (arg, arg.removeprefix("sqlite:///")):
            p = Path(part) if os.path.isabs(part) else cwd / part
            with contextlib.suppress(OSError, ValueError):
                if (p.exists() or p.is_symlink()) and p.parent != cwd and (p.parent, False) not in folders:
                    folders.append((p.parent, False))
    return Watched(folders)


def _diff(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> str:
    lines = []
    for folder in before:
        a, b = before[folder], after[folder]
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                lines.append(f"{folder}: {name}: {a.get(name, 'absent')} -> {b.get(name, 'absent')}")
    return "; ".join(lines[:10])


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    error: BaseException | None
    seconds: float
    peak_mb: float


class Zygote:
    """The forking runner of tests/hostile/zygote.py (one per test session, stopped by PID at exit)."""

    _one: Zygote | None = None

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("zygote.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        hello = self.proc.stdout.readline()
        if not hello:
            raise RuntimeError("tests/hostile/zygote.py did not start; run it by hand to see why")
        atexit.register(self.stop)

    @classmethod
    def get(cls) -> Zygote:
        if cls._one is None or cls._one.proc.poll() is not None:
            cls._one = cls()
        return cls._one

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died running {req['argv']}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_cli(argv: list[str], cwd: Path, home: Path, tmp: Path, entry: str = "autoshrink.cli:main") -> Outcome:
    """`autoshrink ARGV` in `cwd`, in a forked child with HOME=home and TMPDIR=tmp (`entry`: the
    main(argv) to run; the harness's own tests point it elsewhere)."""
    with tempfile.TemporaryDirectory(prefix="ash-hostile-io-") as io_dir:
        req = {
            "argv": argv,
            "cwd": str(cwd),
            "home": str(home),
            "tmp": str(tmp),
            "stdout": f"{io_dir}/out",
            "stderr": f"{io_dir}/err",
            "address_space_mb": ADDRESS_SPACE_MB,
            "entry": entry,
        }
        got = Zygote.get().run(req)
        out = Path(req["stdout"]).read_text(errors="replace")
        err = Path(req["stderr"]).read_text(errors="replace")
    peak = max(got["maxrss_kb"] - got["start_kb"], 0) / 1024
    return Outcome(got["code"], out, err, None, got["seconds"], peak)


@contextlib.contextmanager
def _fresh(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def refused_by_cli(
    argv: list[str],
    cwd: Path,
    message: str,
    *,
    seconds: float = 20.0,
    megabytes: float = 256.0,
    entry: str = "autoshrink.cli:main",
) -> str:
    """Run `autoshrink ARGV` in `cwd`; assert exit 2, one line on stderr naming `message`, nothing on
    stdout, nothing changed (see the module docstring), within `seconds` and `megabytes` of RSS."""
    with _fresh("ash-home-") as home, _fresh("ash-tmp-") as tmp:
        watch = watched(cwd, home, tmp, argv)
        before = watch.state()
        r = run_cli(argv, cwd, home, tmp, entry)
        changed = _diff(before, watch.state())
    assert r.code == 2, (r.code, r.err[-3000:])
    assert r.err.startswith("autoshrink: error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err and message in r.err, r.err
    assert r.out == "", f"stdout not empty on an error: {r.out[:500]!r}"
    assert not changed, f"the command changed what it must not: {changed}"
    assert r.seconds < seconds, f"took {r.seconds:.1f} s, over the {seconds:g} s bound"
    assert r.peak_mb < megabytes, f"peak RSS grew {r.peak_mb:.0f} MiB, over the {megabytes:g} MiB bound"
    return r.err


class PeakRSS:
    """This process's peak RSS growth over a block (MiB): the kernel's high-water mark (VmHWM), reset
    at the start by writing 5 to /proc/self/clear_refs -- exact, short spikes included."""

    def __enter__(self) -> PeakRSS:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.field = "VmHWM"
        except OSError:  # a kernel or sandbox that refuses the reset: the RSS after the call, a lower bound
            self.field = "VmRSS"
        self.start = status_kb("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = status_kb(self.field)

    @property
    def mb(self) -> float:
        return max(self.peak - self.start, 0) / 1024


@contextlib.contextmanager
def _redirected_home(home: Path, tmp: Path) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("HOME", "TMPDIR")}
    xdg = {k: v for k, v in os.environ.items() if k.startswith("XDG_")}
    saved_tempdir = tempfile.tempdir
    os.environ.update(HOME=str(home), TMPDIR=str(tmp))
    for k in xdg:
        del os.environ[k]
    tempfile.tempdir = None
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.environ.update(xdg)
        tempfile.tempdir = saved_tempdir


def _measured(fn: Callable[[], Any], cwd: Path) -> tuple[Any, BaseException | None, float, float, str]:
    old = os.getcwd()
    os.chdir(cwd)
    out = io.StringIO()
    value, error = None, None
    t0 = time.perf_counter()
    try:
        with PeakRSS() as rss, contextlib.redirect_stdout(out):
            try:
                value = fn()
            except Exception as exc:  # noqa: BLE001 - recorded for the caller's assertions
                error = exc
    finally:
        seconds = time.perf_counter() - t0
        os.chdir(old)
    return value, error, seconds, rss.mb, out.getvalue()


def refused_by_api(
    call: Callable[[], Any],
    cwd: Path,
    kind: type[AutoshrinkError],
    message: str,
    *,
    seconds: float = 20.0,
    megabytes: float = 256.0,
) -> AutoshrinkError:
    """Call `call()` in `cwd`; assert it raised `kind` whose one-line message holds `message`, printed
    nothing, changed nothing (see the module docstring), within `seconds` and `megabytes` of RSS."""
    with _fresh("ash-home-") as home, _fresh("ash-tmp-") as tmp:
        watch = watched(cwd, home, tmp)
        before = watch.state()
        with _redirected_home(home, tmp):
            _, error, took, peak, printed = _measured(call, cwd)
        changed = _diff(before, watch.state())
    assert isinstance(error, kind), f"expected {kind.__name__}, got {type(error).__name__}: {error}"
    assert message in str(error), str(error)
    assert "\n" not in str(error), str(error)
    assert printed == "", f"printed on an error: {printed[:500]!r}"
    assert not changed, f"the call changed what it must not: {changed}"
    assert took < seconds, f"took {took:.1f} s, over the {seconds:g} s bound"
    assert peak < megabytes, f"peak RSS grew {peak:.0f} MiB, over the {megabytes:g} MiB bound"
    return error
