"""Many drivers, one study: who owns which running trial, whether its owner still lives, and the
study-wide critical section that keeps setup, budget and refine claims exactly-once.

Each `autoshrink search` process is a driver (id host:pid:random, "driver" user attribute on its trials)
holding a lease that the OS or database drops when it dies (no expiry, no clocks): PostgreSQL advisory
locks, MySQL / MariaDB named locks (GET_LOCK / IS_USED_LOCK), SQLite flock()ed files in `<db>.locks/`.
Under the study mutex a driver sets the study up once, claims trials against `n_trials` (finished and
running, all drivers) and claims refine sources. A RUNNING trial whose owner's lease is free crashed:
`reap` fails it and queues its parameters again; live drivers' trials are never touched.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .urls import dialect, rdb_url, redact, storage_error


def new_driver_id() -> str:
    """host:pid:8 random hex digits -- unique per process, readable in the dashboard."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _key(text: str) -> int:
    """A signed 64-bit advisory-lock key for `text`."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


class DriverLocks(abc.ABC):
    """This driver's lease and the study's mutex (see the module docstring). Use as a context manager."""

    driver_id: str
    _depth = 0

    @contextlib.contextmanager
    def mutex(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """The study-wide critical section; re-entrant within this driver. `on_wait` is called once
        if another driver holds it, before waiting for it."""
        if not self._depth:
            if on_wait is None or not self._try_lock_study():
                if on_wait is not None:
                    on_wait()
                self._lock_study()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth:
                self._unlock_study()

    @abc.abstractmethod
    def _lock_study(self) -> None:
        """Take the study mutex, waiting for it."""

    @abc.abstractmethod
    def _try_lock_study(self) -> bool:
        """Take the study mutex if it is free; whether it was taken."""

    @abc.abstractmethod
    def _unlock_study(self) -> None:
        """Release the study mutex."""

    @abc.abstractmethod
    def alive(self, driver_id: str) -> bool:
        """Whether the driver `driver_id` still holds its lease (this driver always does)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop this driver's lease."""

    def __enter__(self) -> DriverLocks:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FileLocks(DriverLocks):
    """SQLite on one machine: flock()ed files in `<db>.locks/` (dropped by the kernel when a process dies).
    The folder is removed by the last driver to close, so a finished or refused search leaves none."""

    def __init__(self, db: Path, study_name: str) -> None:
        self.driver_id = new_driver_id()
        self.dir = db.with_name(db.name + ".locks")
        self._mutex_path = self.dir / f"study-{hashlib.sha256(study_name.encode()).hexdigest()[:16]}.lock"
        self._own = self._path(self.driver_id)
        for _ in range(100):  # another driver may remove the folder between our mkdir and open
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                self._own_fd = os.open(self._own, os.O_RDWR | os.O_CREAT, 0o644)
                break
            except FileNotFoundError:
                continue
        else:
            raise ConfigError(f"storage lock folder {self.dir}: cannot create a file in it; check its permissions.")
        fcntl.flock(self._own_fd, fcntl.LOCK_EX)
        self._mutex_fd = -1

    def _path(self, driver_id: str) -> Path:
        return self.dir / ("driver-" + re.sub(r"[^A-Za-z0-9._-]", "_", driver_id) + ".lock")

    def _lock_mutex(self, wait: bool = True) -> int:
        """flock the mutex file (-1 if `wait` is False and another driver holds it); retried when it was
        replaced while we waited (the last driver out removes it), so two drivers never hold different files."""
        while True:
            fd = os.open(self._mutex_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return -1
            try:
                if os.stat(self._mutex_path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _lock_study(self) -> None:
        self._mutex_fd = self._lock_mutex()

    def _try_lock_study(self) -> bool:
        self._mutex_fd = self._lock_mutex(wait=False)
        return self._mutex_fd >= 0

    def _unlock_study(self) -> None:
        os.close(self._mutex_fd)  # closing drops the flock

    def alive(self, driver_id: str) -> bool:
        return driver_id == self.driver_id or self.alive_file(self._path(driver_id))

    def close(self) -> None:
        if self._own_fd < 0:
            return
        self._own.unlink(missing_ok=True)
        os.close(self._own_fd)
        self._own_fd = -1
        with contextlib.suppress(OSError):
            fd = self._lock_mutex()
            try:
                others = [p for p in self.dir.iterdir() if p.name.startswith("driver-") and self.alive_file(p)]
                if not others:  # the last one out removes the mutex file and the folder
                    self._mutex_path.unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        self.dir.rmdir()
            finally:
                os.close(fd)

    @staticmethod
    def alive_file(path: Path) -> bool:
        """Whether a driver file is held; a stale one is removed."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)
        return False


class ServerLocks(DriverLocks):
    """PostgreSQL advisory locks / MySQL named locks on one connection this driver keeps open."""

    def __init__(self, url: str, study_name: str) -> None:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        self.driver_id = new_driver_id()
        self.kind = dialect(url)
        try:
            self._engine = sqlalchemy.create_engine(
                rdb_url(url), poolclass=NullPool, connect_args={"connect_timeout": 10}
            )
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception as exc:  # noqa: BLE001 - the same one-line errors as opening the study
            raise storage_error(url, exc) from None
        self._study = f"autoshrink:study:{study_name}"
        self._take(self._lease(self.driver_id), wait=True)

    def _lease(self, driver_id: str) -> str:
        return f"autoshrink:driver:{driver_id}"

    def _sql(self, query: str, **params: Any) -> Any:
        from sqlalchemy import text

        return self._conn.execute(text(query), params).scalar()

    def _take(self, name: str, wait: bool) -> bool:
        if self.kind == "postgresql":
            if wait:
                self._sql("SELECT pg_advisory_lock(:k)", k=_key(name))
                return True
            return bool(self._sql("SELECT pg_try_advisory_lock(:k)", k=_key(name)))
        return self._sql("SELECT GET_LOCK(:n, :t)", n=_mysql_name(name), t=-1 if wait else 0) == 1

    def _release(self, name: str) -> None:
        if self.kind == "postgresql":
            self._sql("SELECT pg_advisory_unlock(:k)", k=_key(name))
        else:
            self._sql("SELECT RELEASE_LOCK(:n)", n=_mysql_name(name))

    def _lock_study(self) -> None:
        self._take(self._study, wait=True)

    def _try_lock_study(self) -> bool:
        return self._take(self._study, wait=False)

    def _unlock_study(self) -> None:
        self._release(self._study)

    def alive(self, driver_id: str) -> bool:
        if driver_id == self.driver_id:
            return True
        name = self._lease(driver_id)
        if self.kind == "postgresql":
            if self._take(name, wait=False):  # free: its holder is gone
                self._release(name)
                return False
            return True
        return self._sql("SELECT IS_USED_LOCK(:n)", n=_mysql_name(name)) is not None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        self._engine.dispose()


def _mysql_name(name: str) -> str:
    """MySQL lock names are at most 64 characters."""
    return "as:" + hashlib.sha256(name.encode()).hexdigest()[:40]


def open_locks(url: str, study_name: str) -> DriverLocks:
    """The lease and mutex for `study_name` in the storage `url` (sqlite, postgresql or mysql)."""
    kind = dialect(url)
    if kind == "sqlite":
        raw = url[len("sqlite:///") :].split("?", 1)[0] if url.startswith("sqlite:///") else ""
        if not raw or raw == ":memory:":
            raise ConfigError(
                f"storage {url!r}: an in-memory SQLite storage is lost when the search ends; name a "
                ".db file (sqlite:///studies/name.db)."
            )
        return FileLocks(Path(raw), study_name)
    if kind in ("postgresql", "mysql"):
        return ServerLocks(url, study_name)
    raise ConfigError(
        f"storage {redact(url)!r}: not an SQLite, PostgreSQL or MySQL URL; autoshrink search needs "
        "one of them (their locks let several drivers share a study). Fix: e.g. "
        "sqlite:///studies/name.db or postgresql://user:password@host/db."
    )
