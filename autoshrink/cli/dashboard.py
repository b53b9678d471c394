"""`autoshrink dashboard`: optuna-dashboard for a study storage, served in-process on loopback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import Terminated

INSTALL = "pip install 'autoshrink[dashboard]'"


def _fail(message: str) -> Exception:
    from ..errors import ConfigError

    return ConfigError("dashboard: " + " ".join(message.split()))  # always one line


def resolve_storage(arg: str | None) -> tuple[str, str | None]:
    """STORAGE -> (Optuna storage URL, the study name it implies or None).

    An URL is used as is; a .db (or any SQLite) file becomes sqlite:///<path>; a study config YAML gives its
    storage (default sqlite:///studies/<name>.db) and its name; a bare name is a study under studies/;
    nothing means the only studies/*.db of the working directory."""
    from ..search.study.readonly import is_sqlite
    from .recipes import _study_location

    here = Path.cwd()
    if arg is None:
        found = sorted(str(p.relative_to(here)) for p in (here / "studies").glob("*.db"))
        if len(found) == 1:
            return f"sqlite:///{found[0]}", None
        fix = "pass a storage URL, a .db file or a study config YAML, e.g. `autoshrink dashboard studies/<name>.db`"
        if not found:
            raise _fail(f"no STORAGE given and no studies/*.db in {here}; {fix}.")
        raise _fail(f"no STORAGE given and {len(found)} studies/*.db in {here} ({', '.join(found)}); pass one of them.")
    if "://" in arg:
        return arg, None
    path = Path(arg)
    if path.suffix in (".yaml", ".yml"):
        name, url = _study_location(arg, None)
        return url, name
    if path.suffix in (".db", ".sqlite", ".sqlite3") or (path.is_file() and is_sqlite(path)):
        return f"sqlite:///{path}", None
    if path.exists():
        raise _fail(
            f"{arg}: not an SQLite database nor a study config YAML; pass an Optuna storage URL "
            "(sqlite:///..., postgresql://...), a .db file or a study config YAML."
        )
    if not path.suffix and "/" not in arg:  # a study name, as `autoshrink export NAME`
        name, url = _study_location(arg, None)
        return url, name
    raise _fail(f"{arg}: no such file; pass an Optuna storage URL, an existing .db file or a study config YAML.")


def open_storage(url: str) -> Any:
    """A read-only RDBStorage for `url` (no table creation; search/storage_read.py): one-line errors."""
    from ..search.study.readonly import open_readonly

    return open_readonly(url, "dashboard: ")


def _is_loopback(host: str) -> bool:
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise _fail(f"--host {host}: cannot resolve it ({exc.strerror}); use an address such as 127.0.0.1.") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def make_server(app: Any, host: str, port: int) -> Any:
    """A threaded wsgiref server bound to host:port (binding is the free-port check: no race)."""
    import errno
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
    from wsgiref.simple_server import make_server as _make

    class Handler(WSGIRequestHandler):
        def log_request(self, *args: Any) -> None:  # no access log; errors are still printed
            pass

    family = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0][0]
    server = type(
        "DashboardServer",
        (ThreadingMixIn, WSGIServer),
        {"daemon_threads": True, "block_on_close": False, "address_family": family},
    )
    try:
        return _make(host, port, app, server_class=server, handler_class=Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise _fail(
                f"port {port} on {host} is already in use (another dashboard?); pick a free one with "
                f"--port, e.g. --port {port + 1 if port < 65535 else 8081}."
            ) from None
        if exc.errno == errno.EACCES:
            raise _fail(f"port {port} on {host}: permission denied; use a port above 1023 with --port.") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise _fail(
                f"--host {host}: not an address of this machine; use 127.0.0.1 or one of its addresses."
            ) from None
        raise _fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}); try another --host or --port.") from None


def _open_or_wait(url: str, poll_s: float = 1.0) -> Any:
    """open_storage(url); a database server's database that has no Optuna tables yet (the dashboard
    started before the first search, as compose starts it) is waited for, not refused."""
    import time

    from ..search.study.readonly import NoOptunaTables
    from ..search.study.urls import redact

    noted = False
    while True:
        try:
            return open_storage(url)
        except NoOptunaTables:
            if url.startswith("sqlite"):
                raise
            if not noted:
                print(
                    f"dashboard: {redact(url)} has no Optuna tables yet; waiting for a search to create them "
                    "(Ctrl-C to stop)",
                    flush=True,
                )
                noted = True
            time.sleep(poll_s)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise _fail(f"--port {args.port}: not a TCP port; use 1024-65535 (0 picks a free one).")
    try:
        import optuna
        import optuna_dashboard
    except ImportError:
        raise _fail(f"optuna-dashboard is not installed; {INSTALL}") from None

    from ..search.study.urls import redact

    url, implied = resolve_storage(args.storage)
    storage = _open_or_wait(url)
    try:
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    except Exception as exc:  # noqa: BLE001
        raise _fail(
            f"storage {redact(url)}: cannot list its studies ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})."
        ) from None
    names = [s.study_name for s in summaries]
    study = args.study or implied
    if args.study and args.study not in names:
        raise _fail(f"--study {args.study!r}: not in {redact(url)}; its studies: {', '.join(names) or 'none'}.")
    if study is None and len(names) == 1:
        study = names[0]
    study_id = storage.get_study_id_from_name(study) if study in names else None

    loopback = _is_loopback(args.host)
    httpd = make_server(optuna_dashboard.wsgi(storage), args.host, args.port)
    port = httpd.server_address[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    base = f"http://{shown}:{port}/dashboard"
    listed = ", ".join(f"{s.study_name} ({s.n_trials} trials)" for s in summaries) or "no study yet"
    print(f"optuna-dashboard {optuna_dashboard.__version__} on {redact(url)}: {listed}")
    if not loopback:
        print(
            f"warning: listening on {args.host}, reachable from other machines: the dashboard has no "
            "authentication and can change and delete studies; use --host 127.0.0.1 (and an SSH tunnel) "
            "unless the network is trusted.",
            file=sys.stderr,
            flush=True,
        )
    if study is not None and study_id is None:
        print(f"note: study {study!r} is not in the storage yet; it appears once the search creates it.")
    print(f"{base}/studies/{study_id}" if study_id is not None else base)
    print("Ctrl-C to stop", flush=True)

    try:  # SIGTERM raises Terminated (cli.main): a clean stop, like Ctrl-C
        httpd.serve_forever()
    except Terminated:
        print("autoshrink: dashboard stopped (SIGTERM)", file=sys.stderr)
    finally:
        httpd.server_close()
        storage.engine.dispose()
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="browse a study storage in optuna-dashboard (loopback only by default)",
        description="Serve optuna-dashboard for the trials of autoshrink searches, in this process, "
        "until Ctrl-C. It has no authentication and can change studies: it listens on "
        f"127.0.0.1 unless --host says otherwise. Needs optuna-dashboard ({INSTALL}).",
    )
    p.add_argument(
        "storage",
        metavar="STORAGE",
        nargs="?",
        help="an Optuna storage URL, a .db file, a study config YAML (its storage) or a study name "
        "(studies/<name>.db); default: the only studies/*.db here",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 picks a free one)")
    p.add_argument("--study", help="the study to open (printed URL); must be in the storage")
    p.set_defaults(func=_cmd_dashboard)
