"""Soak (slow; `make test-all`): a 1,000-trial study of a tiny model (3 fine-tune steps) run by two
`autoshrink search` drivers on one SQLite study, one of them terminated mid-run and started again.
Checked: no trial lost or duplicated, the drivers' memory growth bounded, and the report and the
dashboard open the finished study in under 10 s. The figures are printed (-s) for RESULTS.md."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autoshrink.search.study.storage import counted

from ..e2e.browser import get_json, start_dashboard, stop

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
N = 1000
STUDY = """name: soak
model: tests.search.test_faults:gated_tiny
task: tests.search.test_faults:digits
space: {space}
n_trials: {n}
sampler: random
sensitivity: false
warm_start: false
screen: false
latency: {{warmup: 1, min_repeats: 3, min_seconds: 0.0}}
storage: sqlite:///{db}
"""


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _counted(db: Path) -> int:
    """Finished trials (any driver), read-only: what another process sees while the search runs."""
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE','PRUNED','FAIL')").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def _claimed_by(db: Path, pid: int) -> int:
    """Trials the driver with this PID has claimed (its trials' `driver` attribute is host:pid:id)."""
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(
                "SELECT COUNT(*) FROM trial_user_attributes WHERE key = 'driver' AND value_json LIKE ?",
                (f'"%:{pid}:%',),
            ).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def test_a_thousand_trials_two_drivers_and_a_resume(tmp_path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text(
        "defaults: {bits: [32, 16, 8, 6, 4, 3, 2], sparsity: [0.0, 0.3, 0.5, 0.7, 0.9]}\nfinetune: {steps: 3}\n"
    )
    db = tmp_path / "s.db"
    config = tmp_path / "study.yaml"
    config.write_text(STUDY.format(space=space, n=N, db=db))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def driver() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "autoshrink.cli", "search", str(config), "--quiet"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    t0 = time.monotonic()
    a, b = driver(), driver()
    rss: dict[int, list[int]] = {a.pid: [], b.pid: []}
    a2, terminated_at = None, None
    deadline = t0 + 3600
    while b.poll() is None or (a2 or a).poll() is None:
        assert time.monotonic() < deadline, f"the soak did not finish in an hour ({_counted(db)} trials)"
        done = _counted(db)
        for p in (a, b, a2):  # from its 10th own trial on: past imports and set-up, into the steady state
            if p is not None and p.poll() is None and _claimed_by(db, p.pid) >= 10 and (kb := _rss_kb(p.pid)):
                rss.setdefault(p.pid, []).append(kb)
        if a2 is None and done >= 300:
            a.send_signal(signal.SIGTERM)  # mid-run: its running trial is failed and queued again
            _, err = a.communicate(timeout=120)
            assert a.returncode == 143, err[-2000:]
            terminated_at = done
            a2 = driver()  # the same command resumes
        time.sleep(0.5)
    wall = time.monotonic() - t0
    for p in (b, a2):
        out, err = p.communicate()
        assert p.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="soak", storage=f"sqlite:///{db}")
    trials = study.get_trials(deepcopy=False)
    assert counted(study) == N
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    crashed = [t.number for t in trials if t.user_attrs.get("crashed")]
    retries = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
    assert sorted(retries) == sorted(crashed)  # each interrupted trial run again exactly once
    owners = {t.user_attrs["driver"].split(":")[1] for t in trials if "driver" in t.user_attrs}
    assert owners == {str(a.pid), str(b.pid), str(a2.pid)}
    enqueued = [repr(sorted(t.params.items())) for t in trials if t.user_attrs.get("baseline_policy")]
    assert len(enqueued) == len(set(enqueued)) == study.user_attrs["enqueued"]["baselines"]

    growth = {pid: (max(v) - v[0]) / 1024 for pid, v in rss.items() if v}
    assert len(growth) == 3 and max(growth.values()) < 100, growth  # MiB from a driver's 10th trial to its end

    t = time.monotonic()
    report = subprocess.run(
        [sys.executable, "-m", "autoshrink.cli", "report", str(config), "-o", "r.html"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report_s = time.monotonic() - t
    assert report.returncode == 0, report.stderr[-2000:]
    dash = start_dashboard(str(db), tmp_path)
    try:
        t = time.monotonic()
        summaries = get_json(f"{dash.base}/api/studies", timeout=60)["study_summaries"]
        detail = get_json(f"{dash.base}/api/studies/{summaries[0]['study_id']}", timeout=60)
        dash_s = time.monotonic() - t
    finally:
        stop(dash.proc)
    assert len(detail["trials"]) == len(trials)
    print(
        f"\nsoak: {N} counted of {len(trials)} trials in {wall:.0f} s; driver A terminated at {terminated_at}, "
        f"{len(crashed)} re-queued; drivers' RSS growth MiB {sorted(round(g) for g in growth.values())}; "
        f"report {report_s:.1f} s, dashboard {dash_s:.1f} s"
    )
    assert report_s < 10 and dash_s < 10, (report_s, dash_s)
