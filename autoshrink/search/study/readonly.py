"""Opening a study storage to read it (export, report, dashboard): never creates or changes anything.

Optuna's RDBStorage creates its tables (and stamps its schema version) in whatever database it is
given, so a mistyped path would turn an empty file, or another application's SQLite database, into
an Optuna one. For SQLite the file is checked first, read-only and without Optuna: it must exist,
be an SQLite database and hold Optuna's tables; then it is opened without table creation.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .urls import engine_kwargs, rdb_url, redact, storage_error

SQLITE_HEADER = b"SQLite format 3\x00"
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info", "alembic_version"})


class NoOptunaTables(ConfigError):
    """A database server's database without Optuna's tables (a search has not created them yet)."""


def is_sqlite(path: Path) -> bool:
    """Whether `path` starts like an SQLite database file."""
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def sqlite_tables(path: Path) -> set[str]:
    """The table names of an SQLite file, read-only."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def sqlite_damage(path: Path) -> str | None:
    """What SQLite's quick_check (read-only) finds wrong with the file, or None when it is sound (or
    busy: another driver's lock is not damage). A WAL file beside it is read too, as SQLite would."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            rows = [str(r[0]) for r in con.execute("PRAGMA quick_check(3)")]
        finally:
            con.close()
    except sqlite3.OperationalError:  # locked or busy: not damage; the storage's own open says what it is
        return None
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        return str(exc)
    return None if rows == ["ok"] else "; ".join(rows)


def damaged(url: str, raw: str, why: str) -> ConfigError:
    return ConfigError(
        f"storage {url}: {raw} is a damaged SQLite database ({' '.join(why.split())[:200]}); nothing was "
        f"changed. Fix: restore it from a backup (or `sqlite3 {raw} .recover | sqlite3 recovered.db` and pass "
        "recovered.db), or name a new .db file."
    )


def check_sqlite_study_file(url: str, prefix: str = "") -> None:
    """ConfigError (message after `prefix`) unless `url`'s file is an existing Optuna SQLite database."""
    raw = url[len("sqlite:///") :].split("?", 1)[0] if url.startswith("sqlite:///") else ""
    if not raw or raw == ":memory:":
        raise ConfigError(
            f"{prefix}{url}: an in-memory SQLite storage holds no study; pass the .db file a search wrote."
        )
    path = Path(raw)
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise ConfigError(
            f"{prefix}storage {url}: {what} {raw} (in {Path.cwd()}). Fix: run `autoshrink search` "
            "first, or pass the storage it used (--storage URL or the .db file)."
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{prefix}storage {url}: {raw} is not readable (permission denied); fix its permissions.")
    if not is_sqlite(path):
        what = "an empty file, not a study database" if path.stat().st_size == 0 else "not an SQLite database"
        raise ConfigError(
            f"{prefix}storage {url}: {raw} is {what}; nothing was changed. Fix: pass the .db file a search wrote."
        )
    why = sqlite_damage(path)
    if why is not None:
        raise ConfigError(f"{prefix}{damaged(url, raw, why)}")
    missing = OPTUNA_TABLES - sqlite_tables(path)
    if missing:
        raise ConfigError(
            f"{prefix}storage {url}: {raw} is an SQLite database but not an Optuna study storage "
            f"(no {', '.join(sorted(missing))} tables); nothing was changed. Fix: pass the .db file a "
            "search wrote."
        )


def open_readonly(url: str, prefix: str = "") -> Any:
    """An Optuna RDBStorage for `url` that creates no table: one-line ConfigErrors for the usual mistakes."""
    import optuna

    kwargs: dict[str, Any] = {"skip_table_creation": True}
    if url.startswith("sqlite:"):
        check_sqlite_study_file(url, prefix)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 30}}
    else:
        kwargs["engine_kwargs"] = engine_kwargs(url)
    try:
        storage = optuna.storages.RDBStorage(rdb_url(url), **kwargs)
        storage.get_all_studies()  # a server database without Optuna's tables fails here, not later
        return storage
    except Exception as exc:  # noqa: BLE001 - any storage failure: say which storage and why
        cause = exc.__cause__ or exc.__context__ or exc
        text = " ".join(str(cause).split()) or type(cause).__name__
        if "no such table" in text or ("relation" in text and "does not exist" in text) or "doesn't exist" in text:
            raise NoOptunaTables(
                f"{prefix}storage {redact(url)}: holds no Optuna tables; nothing was changed. Fix: "
                "pass the storage a search wrote."
            ) from None
        raise storage_error(url, exc, prefix) from None
