"""Faults during a search: a candidate whose fine-tune diverges (NaN loss) or runs out of memory fails
alone and the search goes on; the study storage failing (a full disk) ends the search with one clear
error and a readable study; SIGTERM / SIGINT on `autoshrink search` fail and re-queue the running
trials, exit 143 / 130 with one line, and the same command resumes."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.executors.base import OOM_FIX
from autoshrink.search.study.storage import counted

from .conftest import FAST, Tiny

ROOT = Path(__file__).resolve().parents[2]
SPACE = "defaults: {bits: [32]}\nrules:\n  - match: fc1\n    bits: [32, 2]\n  - match: fc2\n    bits: [4]\n"


class Fragile(Tiny):
    """Tiny whose fine-tune breaks whenever fc1 holds 2-bit codes (at most 3 distinct values a row):
    its loss becomes NaN, or (fault="oom") its forward raises CUDA's out-of-memory error."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training and self.fc1.weight.detach()[0].unique().numel() <= 3:
            if self.fault == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return out * float("nan")
        return out


def _task() -> ash.Task:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    return ash.Task(train_data=(x, y), eval_data=(x, y), example_input=x[:1], device="cpu")


@pytest.mark.parametrize(
    "fault, reason",
    [
        ("nan", "TrainingError: finetune step 0: the loss is nan; training diverged. Fix: lower lr (now 0.001)"),
        ("oom", f"OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB; {OOM_FIX} (at "),
    ],
)
def test_a_candidate_that_breaks_fails_alone_and_the_search_goes_on(tmp_path, fault, reason) -> None:
    (tmp_path / "s.yaml").write_text(SPACE)
    torch.manual_seed(0)
    result = ash.search(
        Fragile(fault),
        _task(),
        ash.load_space(tmp_path / "s.yaml"),
        n_trials=4,
        finetune_steps=2,
        storage=f"sqlite:///{tmp_path}/s.db",
        sensitivity=False,
        warm_start=False,
        screen=False,
        latency=FAST,
        progress=False,
    )
    trials = result.study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state.name == "FAIL"]
    fc1 = {t.number: t.user_attrs["policy"]["layers"].get("fc1", {}).get("bits", 32) for t in trials}
    assert failed and all(fc1[t.number] == 2 for t in failed)
    assert all(t.user_attrs["failure"].startswith(reason) for t in failed), failed[0].user_attrs["failure"]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert done and all(fc1[t.number] == 32 for t in done)
    assert counted(result.study) == 4  # the search went on to n_trials past the failures
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


STUDY = """name: faults
model: tests.search.test_faults:gated_tiny
task: tests.search.test_faults:digits
space: {space}
n_trials: {n}
sensitivity: false
warm_start: false
screen: false
storage: sqlite:///{db}
"""


GATE = "AUTOSHRINK_TEST_GATE"


class Gated(Tiny):
    """Tiny whose fine-tune, where the environment names a gate folder, says it is training (a file
    "training" there) and waits until the test opens the gate (a file "open"): the test signals while a
    trial is certainly running (the local executor trains in the CLI's main thread, where the signal lands)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = os.environ.get(GATE)
        if self.training and gate:
            (Path(gate) / "training").touch()
            while not (Path(gate) / "open").exists():
                time.sleep(0.01)
        return super().forward(x)


def gated_tiny() -> nn.Module:
    torch.manual_seed(0)
    return Gated()


def digits() -> ash.Task:
    from autoshrink.zoo import digits_task

    return digits_task(device="cpu")


def _config(tmp_path: Path, n: int, steps: int) -> Path:
    space = tmp_path / "s.yaml"
    space.write_text(f"defaults: {{bits: [32, 8, 4], sparsity: [0.0, 0.5]}}\nfinetune: {{steps: {steps}}}\n")
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(space=space, n=n, db=tmp_path / "s.db"))
    return path


def _states(db: Path) -> dict[str, int]:
    """Trial states by count, read-only (what another process sees while the search runs)."""
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet
        return {}


def _cli(tmp_path: Path, config: Path, gate: Path | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)} | ({GATE: str(gate)} if gate is not None else {})
    return subprocess.Popen(
        [sys.executable, "-m", "autoshrink.cli", "search", str(config), "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.mark.parametrize(
    "sig, code, said", [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted (SIGINT)")]
)
def test_a_signal_fails_and_requeues_the_running_trial_and_the_same_command_resumes(tmp_path, sig, code, said) -> None:
    config = _config(tmp_path, n=4, steps=20)
    db, gate = tmp_path / "s.db", tmp_path / "gate"
    gate.mkdir()
    proc = _cli(tmp_path, config, gate=gate)
    try:
        while not (gate / "training").exists():  # a trial's fine-tune has started and waits at the gate
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        assert _states(db).get("RUNNING", 0) == 1
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err[-3000:]
    assert err == (
        f"autoshrink: {said}; the running trials were failed and queued again: run the same command to resume.\n"
    )
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{db}")
    trials = study.get_trials(deepcopy=False)
    crashed = [t for t in trials if t.user_attrs.get("crashed")]
    assert crashed and all(t.state.name == "FAIL" for t in crashed)
    assert not [t for t in trials if t.state.name == "RUNNING"]
    retries = [t for t in trials if t.state.name == "WAITING" and "retry_of" in t.user_attrs]  # not the baselines
    queued = {t.user_attrs["retry_of"]: t.system_attrs["fixed_params"] for t in retries}
    assert queued == {t.number: t.params for t in crashed}

    (gate / "open").touch()
    resumed = _cli(tmp_path, config, gate=gate)  # the same command: resumes and finishes
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="faults", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert {t.user_attrs.get("retry_of") for t in trials if t.user_attrs.get("retry_of") is not None} == {
        t.number for t in crashed
    }


def _limit_file_size(limit: int):  # noqa: ANN202 - a preexec_fn
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_ends_the_search_with_one_line_and_a_readable_study(tmp_path) -> None:
    config = _config(tmp_path, n=400, steps=1)  # the study outgrows the limit after some trials
    proc = _cli(tmp_path, config, preexec_fn=_limit_file_size(1024 * 1024))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-3000:]
    said = f"autoshrink: error: storage sqlite:///{tmp_path}/s.db: the search could not write its study ("
    assert err.startswith(said), err
    assert err.endswith(
        "); the trials told before are kept and the study stays readable. Fix: free disk space (or move the study "
        "to a disk with room), then run the same search to resume.\n"
    ), err
    assert err.count("\n") == 1
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    con.close()
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{tmp_path}/s.db")
    told = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    assert told  # what was told before the disk filled is there
    left = {p.name for p in tmp_path.iterdir()} - {"s.db-wal", "s.db-shm"}  # SQLite's own, when it kept them
    assert left == {"s.db", "s.yaml", "study.yaml"}  # no partial file, no lock folder
