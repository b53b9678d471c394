"""`autoshrink dashboard`: a real optuna-dashboard process over a real search's storage, and its errors."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest

from autoshrink.cli import dashboard, main
from autoshrink.search import non_dominated

from .browser import STUDY, autoshrink_cmd, get_json, is_gone, start_dashboard, stop, study  # noqa: F401 (fixture)


def test_dashboard_serves_the_study_and_stops_on_sigterm(study, tmp_path) -> None:
    expected = study.load()
    dash = start_dashboard(str(study.db), tmp_path)
    try:
        summaries = get_json(f"{dash.base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in summaries] == [STUDY]
        sid = summaries[0]["study_id"]
        detail = get_json(f"{dash.base}/api/studies/{sid}")
    finally:
        code = stop(dash.proc)
    assert detail["name"] == STUDY
    assert len(detail["trials"]) == len(expected.trials) == 6
    shown = {"COMPLETE": "Complete", "PRUNED": "Pruned"}
    for got, want in zip(detail["trials"], expected.trials):
        assert got["number"] == want.number and got["state"] == shown[want.state.name]
        assert got.get("values") == want.values  # exact: JSON keeps the shortest repr of each float
        attrs = {a["key"]: a["value"] for a in got["user_attrs"]}  # how each trial came to be, and its fidelity
        assert attrs["stage"] == f'"{want.user_attrs["stage"]}"' or attrs["stage"] == want.user_attrs["stage"]
        assert ("screen" in attrs) == ("screen" in want.user_attrs)
    assert {t["state"] for t in detail["trials"]} == {"Complete", "Pruned"}  # a screened-out trial is shown so
    # optuna-dashboard 0.21 draws the front without the constraints (README): compare with that front
    done = [t for t in expected.trials if t.state.name == "COMPLETE"]
    front = non_dominated(np.array([[-t.values[0], t.values[1]] for t in done]))
    assert sorted(t["number"] for t in detail["best_trials"]) == sorted(
        t.number for t, keep in zip(done, front) if keep
    )
    out = dash.output()
    assert f"http://127.0.0.1:{dash.port}/dashboard/studies/{sid}" in out and "Ctrl-C to stop" in out
    assert f"{STUDY} (6 trials)" in out
    assert code == 0 and dash.proc.returncode is not None and is_gone(dash.proc.pid)
    with pytest.raises(OSError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", dash.port), timeout=2).close()


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("autoshrink: error: dashboard: ") and "Traceback" not in err
    return err


def test_busy_port_is_one_line_exit_2(study, tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            autoshrink_cmd("dashboard", str(study.db), "--port", str(port)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    err = _one_line_error(proc)
    assert f"port {port} on 127.0.0.1 is already in use" in err and f"--port {port + 1}" in err
    assert proc.stdout == ""  # no URL printed for a server that never started


def test_missing_storage_is_one_line_exit_2(tmp_path) -> None:
    proc = subprocess.run(
        autoshrink_cmd("dashboard", "nowhere/missing.db"), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    err = _one_line_error(proc)
    assert "storage sqlite:///nowhere/missing.db: no such file nowhere/missing.db" in err
    assert not (tmp_path / "nowhere").exists()  # SQLite was not allowed to create it


@pytest.mark.parametrize(
    "dbs, message",
    [
        ([], "no STORAGE given and no studies/*.db in {cwd}; pass a storage URL"),
        (["b", "a"], "no STORAGE given and 2 studies/*.db in {cwd} (studies/a.db, studies/b.db); pass one of them."),
    ],
)
def test_no_storage_needs_exactly_one_studies_db(tmp_path, monkeypatch, capsys, dbs, message) -> None:
    for name in dbs:
        (tmp_path / "studies").mkdir(exist_ok=True)
        (tmp_path / "studies" / f"{name}.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert main(["dashboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message.format(cwd=tmp_path) in err


def test_storage_argument_forms(study, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(study.db.parent.parent)
    assert dashboard.resolve_storage(None) == ("sqlite:///studies/e2e.db", None)  # the only studies/*.db
    assert dashboard.resolve_storage("e2e") == ("sqlite:///studies/e2e.db", "e2e")  # a study name
    assert dashboard.resolve_storage(str(study.db)) == (study.url, None)
    assert dashboard.resolve_storage("postgresql://u@db/x") == ("postgresql://u@db/x", None)
    cfg = tmp_path / "s.yaml"
    cfg.write_text("name: mine\nmodel: autoshrink.zoo:digits_model\ntask: autoshrink.zoo:digits_task\n")
    assert dashboard.resolve_storage(str(cfg)) == ("sqlite:///studies/mine.db", "mine")
    cfg.write_text(cfg.read_text() + f"storage: {study.url}\n")
    assert dashboard.resolve_storage(str(cfg)) == (study.url, "mine")


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/not_sqlite.db"], "{tmp}/not_sqlite.db is not an SQLite database"),
        (["{tmp}/empty.db"], "{tmp}/empty.db is an empty file, not a study database; nothing was changed"),
        (["{db}", "--study", "nope"], "--study 'nope': not in sqlite:///{db}; its studies: e2e."),
        (["{db}", "--port", "70000"], "--port 70000: not a TCP port"),
        (["{db}", "--host", "no-such-host.invalid"], "--host no-such-host.invalid: cannot resolve it"),
    ],
)
def test_other_user_errors_are_one_line(study, tmp_path, capsys, args, message) -> None:
    (tmp_path / "not_sqlite.db").write_text("hello")
    (tmp_path / "empty.db").write_bytes(b"")
    fill = {"tmp": tmp_path, "db": study.db}
    assert main(["dashboard", *(a.format(**fill) for a in args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message.format(**fill) in err


def test_without_optuna_dashboard_the_error_says_how_to_install(study, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # makes `import optuna_dashboard` fail
    assert main(["dashboard", str(study.db)]) == 2
    assert "optuna-dashboard is not installed; pip install 'autoshrink[dashboard]'" in capsys.readouterr().err


def test_loopback_detection_and_help(capsys) -> None:
    assert dashboard._is_loopback("127.0.0.1") and dashboard._is_loopback("localhost")
    assert not dashboard._is_loopback("0.0.0.0")
    with pytest.raises(SystemExit) as e:
        main(["dashboard", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "STORAGE" in out and "--port" in out and "127.0.0.1" in out


class _FakeServer:
    """Stands in for the HTTP server: reports a port, then 'Ctrl-C' at once (nothing is bound)."""

    server_address = ("0.0.0.0", 8123)

    def serve_forever(self) -> None:
        raise KeyboardInterrupt

    def server_close(self) -> None:
        pass


def test_non_loopback_host_warns_and_ctrl_c_is_130(study, monkeypatch, capsys) -> None:
    monkeypatch.setattr(dashboard, "make_server", lambda app, host, port: _FakeServer())
    assert main(["dashboard", str(study.db), "--host", "0.0.0.0", "--port", "8123"]) == 130
    captured = capsys.readouterr()
    assert (
        "warning: listening on 0.0.0.0, reachable from other machines: the dashboard has no authentication"
        in captured.err
        and "autoshrink: interrupted" in captured.err
    )
    assert "http://0.0.0.0:8123/dashboard/studies/1\nCtrl-C to stop\n" in captured.out
