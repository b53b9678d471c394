"""Helpers of the end-to-end tests: a small real study, the `autoshrink dashboard` process and headless Chromium.

Every process is started here with start_new_session=True and stopped by its PID (its own process group for
Chromium, whose helpers share it); every wait is bounded. Servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed (.ci/run installs it)")
# the flags that work on a closed network as root; without the background-networking ones Chromium keeps
# trying to reach Google's hosts
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1400,1000",
)
STUDY = "e2e"


# -- the study -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    name: str
    db: Path  # absolute path of the SQLite file

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def load(self):
        import optuna

        return optuna.load_study(study_name=self.name, storage=self.url)


@functools.cache
def small_study(root: Path) -> Study:
    """A real search (digits MLP, 6 trials, accuracy and size) into <root>/e2e_study/studies/e2e.db; made once per
    session whichever test module asks first."""
    import autoshrink as ash
    from autoshrink.zoo import digits_model, digits_task

    folder = root / "e2e_study"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(
        "defaults:\n  sparsity: [0.0, 0.5, 0.8]\n  bits: [32, 8, 4]\nfinetune: {steps: 5}\n"
    )
    db = folder / "studies" / f"{STUDY}.db"
    ash.search(
        digits_model("mlp", steps=200),
        digits_task(device="cpu"),
        ash.load_space(folder / "space.yaml"),
        objectives=("accuracy", "size"),
        n_trials=6,
        storage=f"sqlite:///{db}",
        study_name=STUDY,
        seed=0,
        max_accuracy_drop=0.002,  # tight: the screen stops some candidates (PRUNED in the dashboard)
        latency=ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0.0),
        sensitivity="full",  # the study the dashboard tests read was made with every choice measured
    )
    return Study(STUDY, db)


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Study:
    return small_study(tmp_path_factory.getbasetemp())


# -- the dashboard process ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def autoshrink_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoshrink.cli", *args]


def get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class Dashboard:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_dashboard(storage: str, tmp: Path, *extra: str, ready_s: float = 120.0) -> Dashboard:
    """`autoshrink dashboard STORAGE --port <free>` in its own session; returns once /api/meta answers
    (an event; `ready_s` is a generous bound for a loaded machine, not a wait)."""
    port = free_port()
    log = tmp / f"dashboard-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            autoshrink_cmd("dashboard", storage, "--port", str(port), *extra),
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dash = Dashboard(proc, port, log)
    deadline = time.monotonic() + ready_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited with {proc.returncode} before answering:\n{dash.output()}")
        try:
            get_json(f"{dash.base}/api/meta", timeout=2)
            return dash
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(
                f"awaited the dashboard answering /api/meta on port {port} (it serves once its storage opens): "
                f"no answer within {ready_s:.0f} s. Its output:\n{dash.output()}"
            )
        time.sleep(0.2)


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> int:
    """SIGTERM by PID, a bounded wait, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.wait(timeout=grace_s)


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- headless Chromium ----------------------------------------------------------------------------


def chromium(*args: str, timeout_s: float = 60.0) -> str:
    """Run headless Chromium with a fresh profile; returns its stdout. On timeout its process group (the one
    started here, Chromium and its helpers) is killed by its PID."""
    profile = Path(tempfile.mkdtemp(prefix="autoshrink-chromium-"))
    err = profile.parent / (profile.name + ".log")
    try:
        with err.open("wb") as stderr:
            proc = subprocess.Popen(
                [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
            try:
                out, _ = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=10)
                raise AssertionError(f"chromium did not finish within {timeout_s:.0f} s: {args}") from None
            finally:
                try:  # helpers left behind by a crash, in the group started here
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if proc.returncode != 0:
            tail = "\n".join(err.read_text(errors="replace").splitlines()[-15:])
            raise AssertionError(f"chromium exited with {proc.returncode}: {args}\n{tail}")
        return out.decode("utf-8", errors="replace")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        err.unlink(missing_ok=True)


def dump_dom(url: str, budget_ms: int = 10_000) -> str:
    """The DOM after scripts ran (`--virtual-time-budget` lets the page's timers and fetches settle)."""
    return chromium(f"--virtual-time-budget={budget_ms}", "--dump-dom", url)


def screenshot(url: str, path: Path, budget_ms: int = 10_000) -> Path:
    """A 1400x1000 PNG of the rendered page; also copied to $AUTOSHRINK_SCREENSHOTS when that is set."""
    chromium(f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url)
    assert path.is_file(), f"chromium wrote no screenshot to {path}"
    keep = os.environ.get("AUTOSHRINK_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(keep) / path.name)
    return path


def visible_text(dom: str) -> str:
    """The text a reader sees: no scripts or styles, no tags, entities decoded, whitespace collapsed."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return re.sub(r"\s+", " ", text).strip()


def js_number(value: float) -> str:
    """How JavaScript prints a number (integers without '.0'; otherwise the shortest repr, as Python's)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
