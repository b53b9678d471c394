"""Many drivers on one study (search/drivers.py): the lease, the mutex, a shared budget, and a SIGKILLed
driver whose running trials -- and only those -- are re-queued. On SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from autoshrink.search.study.leases import FileLocks, ServerLocks, open_locks

ROOT = Path(__file__).resolve().parents[2]

HOLD_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from autoshrink.search.study.leases import open_locks
    locks = open_locks({url!r}, "s")
    print(locks.driver_id, flush=True)
    if {mutex!r}:
        with locks.mutex():
            print("in", flush=True)
            sys.stdin.read()  # held until the test closes stdin or kills this process: no clock
    sys.stdin.read()
""")


def _holder(url: str, mutex: bool = False) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT.format(root=str(ROOT), url=url, mutex=mutex)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    driver = proc.stdout.readline().strip()
    if mutex:
        assert proc.stdout.readline().strip() == "in"
    return proc, driver


def _storage_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    pg = request.getfixturevalue("postgres")
    return pg.url(pg.create_db())


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    return _storage_url(request.param, tmp_path, request)


def test_lease_is_alive_while_the_process_lives_and_free_once_it_is_killed(url) -> None:
    proc, driver = _holder(url)
    with open_locks(url, "s") as me:
        assert isinstance(me, FileLocks if url.startswith("sqlite") else ServerLocks)
        assert me.alive(me.driver_id) and me.alive(driver) and driver != me.driver_id
        assert driver.split(":")[1] == str(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 20  # the server notices the dropped connection within moments
        while me.alive(driver) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not me.alive(driver)
        assert not me.alive("nohost:1:deadbeef")  # a driver that never existed holds nothing


def test_mutex_excludes_other_processes_until_the_holder_dies(url) -> None:
    proc, _ = _holder(url, mutex=True)
    entered = threading.Event()
    notes: list[str] = []
    with open_locks(url, "s") as me:

        def enter() -> None:
            with me.mutex(on_wait=lambda: notes.append("waiting")):
                with me.mutex(on_wait=lambda: notes.append("inner")):  # re-entrant within one driver: no wait
                    entered.set()

        t = threading.Thread(target=enter, daemon=True)
        t.start()
        assert not entered.wait(1.5)  # the other process holds it
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert entered.wait(20)
        t.join(5)
        assert notes == ["waiting"]  # told once, before it waited
        with me.mutex(on_wait=lambda: notes.append("free")):  # nobody holds it: no note
            pass
        assert notes == ["waiting"]


def test_sqlite_lock_folder_is_removed_by_the_last_driver(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    a, b = open_locks(url, "s"), open_locks(url, "s")
    assert (tmp_path / "s.db.locks").is_dir()
    with a.mutex():
        pass
    a.close()
    assert (tmp_path / "s.db.locks").is_dir()  # b still runs
    b.close()
    assert sorted(os.listdir(tmp_path)) == []


DRIVER_SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import torch
    import autoshrink as ash
    from autoshrink.executors import LocalExecutor
    from autoshrink.zoo import digits_task
    from tests.search.conftest import Tiny, FAST

    class Slow(LocalExecutor):
        '''Each trial's evaluation takes at least {delay} s more; the first waits until {drivers} drivers
        have reached it (a file each in {gate!r}), so the drivers overlap however slowly one starts.'''
        gated = False
        def wait(self, timeout=None):
            if self._pending and self._pending[0][0] >= 0:
                if not self.gated:
                    open(os.path.join({gate!r}, str(os.getpid())), "w").close()
                    deadline = time.monotonic() + 240
                    while len(os.listdir({gate!r})) < {drivers}:
                        assert time.monotonic() < deadline, "the other driver never reached its first trial"
                        time.sleep(0.05)
                    self.gated = True
                time.sleep({delay})
            return super().wait(timeout)

    torch.manual_seed(0)
    model = Tiny()
    model.load_state_dict(torch.load({weights!r}))
    r = ash.search(model, digits_task(device="cpu"), ash.load_space({space!r}), n_trials={n}, storage={storage!r},
                   study_name="shared", latency=FAST, executor=Slow(), screen=False, seed={seed},
                   refine_top={refine_top}, refine_steps=10)
    print("done", r.timing["wall_s"], flush=True)
""")


def _driver(
    tmp_path: Path,
    tiny_model,
    tiny_space,
    storage: str,
    n: int,
    delay: float,
    seed: int,
    refine_top: int = 0,
    drivers: int = 2,
) -> subprocess.Popen:
    """A driver process; its first trial waits until `drivers` drivers of this tmp_path reached theirs."""
    import torch

    weights, gate = tmp_path / "w.pt", tmp_path / "gate"
    if not weights.exists():
        torch.save(tiny_model.state_dict(), weights)
    gate.mkdir(exist_ok=True)
    script = DRIVER_SCRIPT.format(
        root=str(ROOT),
        weights=str(weights),
        space=str(tiny_space.source.name),
        storage=storage,
        n=n,
        delay=delay,
        seed=seed,
        refine_top=refine_top,
        gate=str(gate),
        drivers=drivers,
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert out.startswith("done")


def _check_shared(study: optuna.Study, n: int) -> None:
    """n counted trials in the study, none running, each enqueued policy evaluated once."""
    from autoshrink.search.study.storage import counted

    trials = study.get_trials(deepcopy=False)
    assert counted(study) == n
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert study.user_attrs["enqueued"]["baselines"] == 3
    first = [t for t in trials if "retry_of" not in t.user_attrs]
    baselines = [t for t in first if t.user_attrs.get("baseline_policy")]
    assert len(baselines) == 3  # enqueued once, not once per driver
    enqueued = [
        repr(sorted(t.params.items()))
        for t in first
        if t.user_attrs.get("baseline_policy") or t.user_attrs.get("warm_start")
    ]
    assert len(enqueued) == len(set(enqueued)) == 3 + study.user_attrs["enqueued"]["warm_start"]
    retries = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
    assert len(retries) == len(set(retries))


def test_two_drivers_share_one_budget(url, tmp_path, tiny_model, tiny_space) -> None:
    n = 14
    a = _driver(tmp_path, tiny_model, tiny_space, url, n, delay=0.3, seed=0)
    b = _driver(tmp_path, tiny_model, tiny_space, url, n, delay=0.3, seed=0)
    _finish(a)
    _finish(b)
    study = optuna.load_study(study_name="shared", storage=_optuna_url(url))
    _check_shared(study, n)
    owners = Counter(t.user_attrs["driver"].split(":")[1] for t in study.trials)
    assert set(owners) == {str(a.pid), str(b.pid)} and min(owners.values()) >= 3, owners


def _optuna_url(url: str) -> str:
    from autoshrink.search.study.urls import rdb_url

    return rdb_url(url)


def test_sigkilled_driver_restarts_and_requeues_only_its_own_running_trials(
    url, tmp_path, tiny_model, tiny_space
) -> None:
    n = 16
    # one connection pool for all the polling; created (with Optuna's tables) before the drivers start
    storage = optuna.storages.RDBStorage(_optuna_url(url))
    b = _driver(tmp_path, tiny_model, tiny_space, url, n, delay=0.6, seed=0)
    a = _driver(tmp_path, tiny_model, tiny_space, url, n, delay=0.6, seed=0)
    mine = lambda t, p: t.user_attrs.get("driver", "").split(":")[1:2] == [str(p.pid)]  # noqa: E731
    deadline = time.monotonic() + 240
    killed: list[int] = []
    while time.monotonic() < deadline and not killed:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name="shared", storage=storage)
        except KeyError:  # not created yet
            continue
        trials = study.get_trials(deepcopy=False)
        running_a = [t.number for t in trials if t.state.name == "RUNNING" and mine(t, a)]
        done_a = [t for t in trials if t.state.name == "COMPLETE" and mine(t, a)]
        if running_a and len(done_a) >= 2:
            a.send_signal(signal.SIGKILL)
            a.wait(30)
            killed = [
                t.number
                for t in optuna.load_study(study_name="shared", storage=storage).get_trials(deepcopy=False)
                if t.state.name == "RUNNING" and mine(t, a)
            ]
    assert killed, "driver A never had a running trial to kill"
    assert b.poll() is None, "driver B finished before A could be killed; raise the delay"
    study = optuna.load_study(study_name="shared", storage=storage)
    b_running = [t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING" and mine(t, b)]
    assert b_running  # what a restart must not touch
    a2 = _driver(tmp_path, tiny_model, tiny_space, url, n, delay=0.6, seed=0)
    _finish(a2)
    _finish(b)
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(deepcopy=False)
    for number in killed:  # the killed driver's running trials: failed as crashed and run again
        assert trials[number].state.name == "FAIL" and trials[number].user_attrs["crashed"] is True
        retry = [t for t in trials if t.user_attrs.get("retry_of") == number]
        # the parameters it had (killed while sampling, it may have had only some) are kept; the rest sampled anew
        assert len(retry) == 1 and all(retry[0].params[k] == v for k, v in trials[number].params.items())
        assert retry[0].state.name in ("COMPLETE", "PRUNED")
    for number in b_running:  # the live driver's running trials were left to it
        assert trials[number].state.name in ("COMPLETE", "PRUNED") and not trials[number].user_attrs.get("crashed")
        assert mine(trials[number], b)
    assert not [t.number for t in trials if t.user_attrs.get("crashed") and t.number not in killed]
    _check_shared(study, n)


def test_a_result_for_a_trial_another_driver_requeued_is_dropped_with_a_warning(
    tiny_model, tiny_space, tmp_path
) -> None:
    """This driver's lease was lost (its connection dropped) and another driver re-queued its running
    trial: the late result is dropped with one warning, the re-queued copy runs, the budget holds."""
    import autoshrink as ash
    from autoshrink.executors import LocalExecutor
    from autoshrink.search.study.storage import counted, requeue_crashed
    from autoshrink.search.tell import StudyWarning
    from autoshrink.zoo import digits_task

    from .conftest import FAST

    storage = f"sqlite:///{tmp_path}/lost.db"

    class ReapedOnce(LocalExecutor):
        """Before returning trial 3's result, does what another driver's reaper would have done to it."""

        reaped = False

        def wait(self, timeout=None):
            if self._pending and self._pending[0][0] == 3 and not self.reaped:
                ReapedOnce.reaped = True
                other = optuna.load_study(study_name="lost", storage=storage)
                requeue_crashed(other, [other.trials[3]])
            return super().wait(timeout)

    with pytest.warns(
        StudyWarning,
        match=r"^trial 3: another driver failed and re-queued it while this one "
        r"evaluated it \(this driver's lease on the storage was lost",
    ):
        r = ash.search(
            tiny_model,
            digits_task(device="cpu"),
            tiny_space,
            n_trials=6,
            storage=storage,
            study_name="lost",
            latency=FAST,
            executor=ReapedOnce(),
            screen=False,
        )
    trials = r.study.trials
    assert ReapedOnce.reaped and trials[3].state.name == "FAIL" and trials[3].user_attrs["crashed"] is True
    assert "measurement" not in trials[3].user_attrs  # the dropped result was not written
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 3]
    assert len(retry) == 1 and retry[0].state.name in ("COMPLETE", "PRUNED")
    assert counted(r.study) == 6 and not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


def test_two_drivers_never_run_the_same_refine_twice(tmp_path, tiny_model, tiny_space) -> None:
    """Both drivers reach the refine stage of one study: each refine variant (policy, distillation,
    fine-tune) runs once -- claimed under the mutex -- and refine trials do not count towards n_trials."""
    url = f"sqlite:///{tmp_path}/s.db"
    storage = optuna.storages.RDBStorage(_optuna_url(url))
    a = _driver(tmp_path, tiny_model, tiny_space, url, 10, delay=0.2, seed=0, refine_top=1)
    b = _driver(tmp_path, tiny_model, tiny_space, url, 10, delay=0.2, seed=0, refine_top=1)
    _finish(a)
    _finish(b)
    study = optuna.load_study(study_name="shared", storage=storage)
    _check_shared(study, 10)
    refined = [t for t in study.trials if t.user_attrs.get("refined_from") is not None]
    keys = [
        (json.dumps(t.user_attrs["policy"], sort_keys=True), json.dumps(t.user_attrs["finetune"], sort_keys=True))
        for t in refined
    ]
    assert refined and len(keys) == len(set(keys))
    assert all(t.state.name == "COMPLETE" for t in refined)
