"""SIGINT and SIGTERM for the CLI: they raise KeyboardInterrupt / Terminated in the main thread, so a
search unwinds (its running trials failed and queued again) -- but never inside a study storage call.

A signal landing inside SQLAlchemy or Optuna's storage code interrupts a transaction half-way, and what
the user then saw was once SQLAlchemy's traceback ("This transaction is closed") instead of the one-line
message. There the raise is deferred: a SIGALRM every DEFER_S looks again and raises once the
main thread is out of storage code. A second signal while one is deferred raises at once (a storage call
that hangs still yields to a second Ctrl-C)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..errors import Terminated

DEFER_S = 0.05
STORAGE_MODULES = ("sqlalchemy", "optuna.storages")
RAISES: dict[int, type[BaseException]] = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}


def in_storage(frame: FrameType | None) -> bool:
    """Whether `frame` or a caller of it runs code of a storage module (STORAGE_MODULES)."""
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if any(name == m or name.startswith(m + ".") for m in STORAGE_MODULES):
            return True
        frame = frame.f_back
    return False


class SignalGuard:
    """The handlers: `install()` sets them (main thread only) and returns what to restore."""

    def __init__(self, arm: Callable[[float], Any] | None = None) -> None:
        self.deferred: list[int] = []  # signals that landed in storage code, in arrival order
        self.previous_alarm: Any = None  # SIGALRM's handler before install(): called when none is deferred
        self._arm = arm or (lambda s: signal.setitimer(signal.ITIMER_REAL, s))

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.deferred and in_storage(frame):
            self.deferred.append(signum)
            self._arm(DEFER_S)
            return
        self._raise(signum)

    def on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if not self.deferred:
            if callable(self.previous_alarm):
                self.previous_alarm(signum, frame)
            return
        if in_storage(frame):
            self._arm(DEFER_S)
            return
        self._raise(self.deferred[0])

    def _raise(self, signum: int) -> None:
        self.deferred.clear()
        self._arm(0)  # disarm
        raise RAISES[signum]()

    def install(self) -> dict[int, Any] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = {s: signal.signal(s, self.handle) for s in RAISES}
        previous[signal.SIGALRM] = self.previous_alarm = signal.signal(signal.SIGALRM, self.on_alarm)
        return previous


def restore(previous: dict[int, Any] | None) -> None:
    for s, handler in (previous or {}).items():
        signal.signal(s, handler)
