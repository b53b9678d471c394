"""Storage URLs for database servers: the driver a URL needs, passwords kept out of messages, and one
clear error for each way a server connection fails (unreachable, refused credentials, no such database,
driver not installed)."""

from __future__ import annotations

import importlib.util
from typing import Any

from ...errors import ConfigError


def dialect(url: str) -> str:
    """'sqlite', 'postgresql', 'mysql', ... (the part before '://' and any '+driver'; postgres:// is
    postgresql, mariadb:// is mysql)."""
    name = url.split("://", 1)[0].split("+", 1)[0].lower()
    return {"postgres": "postgresql", "mariadb": "mysql"}.get(name, name)


def rdb_url(url: str) -> str:
    """`url` with the driver SQLAlchemy should use: a bare postgresql:// means psycopg2 to SQLAlchemy;
    where only psycopg 3 (autoshrink[postgres]) is installed it becomes postgresql+psycopg://."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
        if url.startswith("postgres://"):  # SQLAlchemy 2 knows only the long name
            return "postgresql://" + url.split("://", 1)[1]
    return url


def redact(url: str) -> str:
    """`url` with its password replaced by ***, for messages and logs."""
    if "://" not in url or "@" not in url.split("://", 1)[1]:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: hide everything before the host
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def _where(url: str) -> tuple[str, str, str]:
    """(host:port, user, database) of a server URL, for messages."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        return f"{u.host or 'localhost'}:{u.port or 'default port'}", u.username or "", u.database or ""
    except Exception:  # noqa: BLE001
        return "the server", "", ""


def storage_error(url: str, exc: BaseException, prefix: str = "") -> ConfigError:
    """One line saying why `url` could not be opened and what to do, without its password."""
    shown = redact(url)
    cause: BaseException = exc
    while cause.__cause__ is not None or cause.__context__ is not None:  # SQLAlchemy wraps the driver's error
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    text = " ".join(str(cause).split()) or type(cause).__name__
    low = text.lower()
    where, user, db = _where(url)
    if isinstance(cause, ModuleNotFoundError) or "no module named" in low:
        missing = getattr(cause, "name", None) or text
        fix = (
            "pip install 'autoshrink[postgres]'"
            if dialect(url) == "postgresql"
            else "install the SQLAlchemy driver the URL names"
        )
        return ConfigError(f"{prefix}storage {shown}: its database driver is not installed ({missing}). Fix: {fix}.")
    if (
        "password authentication failed" in low
        or "access denied" in low
        or "no password supplied" in low
        or "authentication failed" in low
    ):
        return ConfigError(
            f"{prefix}storage {shown}: the database server at {where} refused user {user!r} (wrong "
            "password or user). Fix: correct the user and password in the URL (or use ~/.pgpass)."
        )
    if ("database" in low and "does not exist" in low) or "unknown database" in low:
        return ConfigError(
            f"{prefix}storage {shown}: database {db!r} does not exist on the server at {where}. "
            f"Fix: create it (e.g. `createdb {db or 'NAME'}`) or name an existing database."
        )
    if any(
        s in low
        for s in (
            "connection refused",
            "could not connect",
            "connection failed",
            "timeout expired",
            "could not translate host name",
            "name or service not known",
            "no route to host",
            "can't connect",
            "server closed the connection",
        )
    ):
        return ConfigError(
            f"{prefix}storage {shown}: cannot reach the database server at {where} ({text[:200]}). "
            "Fix: start the server, or correct the host and port in the URL."
        )
    return ConfigError(
        f"{prefix}storage {shown}: cannot open it ({type(cause).__name__}: {text[:200]}). Fix: use an "
        "Optuna storage URL such as sqlite:///studies/name.db or postgresql://user:password@host/db."
    )


def engine_kwargs(url: str) -> dict[str, Any]:
    """Engine settings for a server URL: fail within 10 s when the server cannot be reached."""
    if dialect(url) in ("postgresql", "mysql"):
        return {"connect_args": {"connect_timeout": 10}}
    return {}
