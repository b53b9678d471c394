"""The CLI's SIGINT / SIGTERM handlers: raised at once outside storage code, deferred inside it until the
main thread leaves it, and raised at once on a second signal while one is deferred."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import pytest

from autoshrink.cli.signals import DEFER_S, SignalGuard, in_storage
from autoshrink.errors import Terminated


def _frame_in(module: str) -> FrameType:
    """A frame of code whose module is `module` (its globals' __name__), called from this test."""
    scope = {"__name__": module, "sys": sys}
    exec("def here():\n    return sys._getframe()\n", scope)  # noqa: S102 - a frame with a chosen module name
    return scope["here"]()


def _nested_in(module: str) -> FrameType:
    """A frame of this test's code called from `module`'s code (its caller chain passes through it)."""
    scope = {"__name__": module, "sys": sys}
    exec("def outer(inner):\n    return inner()\n", scope)  # noqa: S102
    return scope["outer"](lambda: sys._getframe())


def test_in_storage_looks_at_the_frame_and_its_callers() -> None:
    assert in_storage(_frame_in("sqlalchemy.orm.session"))
    assert in_storage(_frame_in("optuna.storages._rdb.storage"))
    assert in_storage(_nested_in("sqlalchemy.engine.base"))
    assert not in_storage(_frame_in("optuna.study.study"))  # Optuna outside its storages
    assert not in_storage(_frame_in("sqlalchemyish"))
    assert not in_storage(sys._getframe())
    assert not in_storage(None)


@pytest.mark.parametrize(("sig", "exc"), [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_outside_storage_raises_at_once(sig, exc) -> None:
    armed: list[float] = []
    guard = SignalGuard(arm=armed.append)
    with pytest.raises(exc):
        guard.handle(sig, sys._getframe())
    assert guard.deferred == [] and armed == [0]


@pytest.mark.parametrize(("sig", "exc"), [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_inside_storage_is_deferred_until_the_main_thread_leaves_it(sig, exc) -> None:
    armed: list[float] = []
    guard = SignalGuard(arm=armed.append)
    storage = _frame_in("optuna.storages._rdb.storage")
    guard.handle(sig, storage)  # deferred: no raise
    assert guard.deferred == [sig] and armed == [DEFER_S]
    guard.on_alarm(signal.SIGALRM, storage)  # still inside: looks again later
    assert guard.deferred == [sig] and armed == [DEFER_S, DEFER_S]
    with pytest.raises(exc):
        guard.on_alarm(signal.SIGALRM, sys._getframe())  # out of storage code: raised there
    assert guard.deferred == [] and armed == [DEFER_S, DEFER_S, 0]


def test_a_second_signal_while_one_is_deferred_raises_at_once() -> None:
    armed: list[float] = []
    guard = SignalGuard(arm=armed.append)
    storage = _frame_in("sqlalchemy.orm.session")
    guard.handle(signal.SIGINT, storage)
    with pytest.raises(KeyboardInterrupt):
        guard.handle(signal.SIGINT, storage)  # a storage call that hangs still yields to a second Ctrl-C
    assert guard.deferred == [] and armed == [DEFER_S, 0]


def test_an_alarm_with_nothing_deferred_goes_to_the_previous_handler() -> None:
    seen: list[int] = []
    guard = SignalGuard(arm=lambda s: None)
    guard.previous_alarm = lambda signum, frame: seen.append(signum)
    guard.on_alarm(signal.SIGALRM, sys._getframe())
    assert seen == [signal.SIGALRM]


def test_install_sets_the_three_handlers_and_restore_puts_back_the_previous_ones() -> None:
    from autoshrink.cli.signals import restore

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    guard = SignalGuard()
    previous = guard.install()
    try:
        assert previous == before
        assert signal.getsignal(signal.SIGINT) == guard.handle == signal.getsignal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGALRM) == guard.on_alarm
    finally:
        restore(previous)
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_real_sigterm_inside_storage_code_lets_it_finish_and_raises_after() -> None:
    import os
    import time

    from autoshrink.cli.signals import restore

    scope = {"__name__": "optuna.storages._fake", "os": os, "signal": signal}
    code = (
        "def write():\n    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    n = 0\n    for _ in range(100000):\n        n += 1\n    return n\n"
    )
    exec(code, scope)  # noqa: S102 - storage code that is signalled half-way
    written = []
    previous = SignalGuard().install()
    try:
        with pytest.raises(Terminated):
            written.append(scope["write"]())  # runs to its end: the signal is deferred
            deadline = time.monotonic() + 120  # a guard against a hang, not a wait for the event
            while time.monotonic() < deadline:
                time.sleep(0.005)  # the alarm raises here, out of storage code
    finally:
        restore(previous)
    assert written == [100000]
