"""Claims of several drivers on one study: the next trial under the budget, and the re-queueing of
trials whose driver died (its lease is free)."""

from __future__ import annotations

import time

import optuna

from .leases import DriverLocks
from .schema import DRIVER_ATTR
from .storage import in_budget, requeue_crashed

REAP_INTERVAL_S = 15.0  # how often a running loop looks for dead drivers' trials


def owner(trial: optuna.trial.FrozenTrial) -> str | None:
    """The driver that runs (or ran) `trial`; None for trials of autoshrink before drivers were recorded."""
    return trial.user_attrs.get(DRIVER_ATTR)


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def dead_running(study: optuna.Study, locks: DriverLocks) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials whose driver is gone (or unrecorded -- only possible for a driver that died
    inside the mutex, since a trial's owner is written before the mutex is released)."""
    verdict: dict[str | None, bool] = {}
    out = []
    for t in running(study):
        who = owner(t)
        if who not in verdict:
            verdict[who] = who is not None and locks.alive(who)
        if not verdict[who]:
            out.append(t)
    return out


class Reaper:
    """Requeues dead drivers' RUNNING trials: at start-up, and in the loop at most every REAP_INTERVAL_S."""

    def __init__(self, locks: DriverLocks, interval: float = REAP_INTERVAL_S) -> None:
        self.locks = locks
        self.interval = interval
        self.last = float("-inf")
        self.reaped: list[int] = []

    def __call__(self, study: optuna.Study, force: bool = False) -> list[int]:
        """Under the mutex: fail and re-queue dead drivers' trials; their numbers."""
        if not force and time.monotonic() - self.last < self.interval:
            return []
        with self.locks.mutex():
            numbers = requeue_crashed(study, dead_running(study, self.locks))
        self.last = time.monotonic()
        self.reaped += numbers
        return numbers


def claim(study: optuna.Study, locks: DriverLocks, reap: Reaper, n_trials: int | None) -> optuna.trial.Trial | None:
    """The next trial for this driver (asked and marked as its own under the mutex), or None when
    the study's budget is spent: finished plus running candidate trials of every driver reach
    n_trials, after dead drivers' trials were re-queued."""
    reap(study)
    with locks.mutex():
        if n_trials is not None and in_budget(study) >= n_trials:
            if not reap(study, force=True) or in_budget(study) >= n_trials:
                return None
        trial = study.ask()
        trial.set_user_attr(DRIVER_ATTR, locks.driver_id)
        return trial
