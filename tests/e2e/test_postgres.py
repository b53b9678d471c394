"""A study in a real PostgreSQL server, end to end through the CLI (search, resume, export, report,
dashboard), and the three ways a server connection fails -- each one clear line, exit code 2, no
password shown, nothing written."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest

import autoshrink as ash
from autoshrink.cli import main
from autoshrink.errors import ConfigError
from autoshrink.search.study.storage import counted
from tests.pgserver import PASSWORD

from .browser import get_json, start_dashboard, stop

ROOT = Path(__file__).resolve().parents[2]
QUICK = f"""name: digits_mlp_quantize
model: autoshrink.zoo:digits_model
model_args: {{kind: mlp}}
task: autoshrink.zoo:digits_task
space: {ROOT / "autoshrink" / "spaces" / "quantize_only.yaml"}
objectives: [accuracy, size]
n_trials: 4
finetune_steps: 10
seed: 0
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> str:
    """A quick digits-MLP quantization study config (outside each test's working directory)."""
    path = tmp_path_factory.mktemp("config") / "digits_mlp_quantize.yaml"
    path.write_text(QUICK)
    return str(path)


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_postgres_study_search_resume_export_report_dashboard(postgres, config, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    url = postgres.url(postgres.create_db())  # postgresql://: psycopg 3 is the driver here
    assert main(["search", config, "--storage", url, "--n-trials", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out and "autoshrink:***@127.0.0.1" in out
    assert _files(tmp_path) == []  # nothing local: the study lives in the server
    assert main(["search", config, "--storage", url, "--n-trials", "4", "--quiet"]) == 0  # resume
    study = optuna.load_study(
        study_name="digits_mlp_quantize", storage=postgres.url(url.rsplit("/", 1)[1], driver="psycopg")
    )
    assert counted(study) == 4 and study.user_attrs["enqueued"]["baselines"] >= 1
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    capsys.readouterr()

    assert main(["export", config, "--storage", url, "--max-accuracy-drop", "0.05", "-o", "recipe.yaml"]) == 0
    recipe = (tmp_path / "recipe.yaml").read_text()
    assert PASSWORD not in recipe and "autoshrink:***@127.0.0.1" in recipe
    rec = ash.Recipe.load(tmp_path / "recipe.yaml")
    assert rec.source.study == "digits_mlp_quantize" and rec.trial in {t.number for t in study.trials}
    assert main(["report", config, "--storage", url, "-o", "report.html", "--json"]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "digits_mlp_quantize" in html and PASSWORD not in html
    assert _files(tmp_path) == ["recipe.yaml", "report.html"]

    dash = start_dashboard(url, tmp_path)
    try:
        summaries = get_json(f"{dash.base}/api/studies")["study_summaries"]
    finally:
        stop(dash.proc)
    assert "on postgresql://autoshrink:***@127.0.0.1" in dash.output() and PASSWORD not in dash.output()
    assert [(s["study_name"], s["study_id"] >= 0) for s in summaries] == [("digits_mlp_quantize", True)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


CASES = {
    "unreachable": (
        lambda pg: pg.url("postgres").replace(f":{pg.port}/", f":{_closed_port()}/"),
        "cannot reach the database server at 127.0.0.1:",
        "start the server",
    ),
    "auth": (
        lambda pg: pg.url("postgres", password="wrong-password"),
        "refused user 'autoshrink' (wrong password or user)",
        "correct the user and password",
    ),
    "no-database": (
        lambda pg: pg.url("nosuchdb"),
        "database 'nosuchdb' does not exist on the server at 127.0.0.1:",
        "createdb nosuchdb",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["search", "export", "report", "dashboard"])
def test_server_connection_failures_are_one_clear_line(
    postgres, config, tmp_path, monkeypatch, capsys, case, command
) -> None:
    make, what, fix = CASES[case]
    url = make(postgres)
    monkeypatch.chdir(tmp_path)
    argv = {
        "search": ["search", config, "--storage", url, "--n-trials", "2", "--quiet"],
        "export": ["export", "digits_mlp_quantize", "--storage", url, "--trial", "0", "-o", "r.yaml"],
        "report": ["report", "digits_mlp_quantize", "--storage", url, "-o", "r.html"],
        "dashboard": ["dashboard", url, "--port", "0"],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and what in err and fix in err, err
    assert "wrong-password" not in err and PASSWORD not in err and "***" in err
    assert _files(tmp_path) == []


def test_api_search_on_a_missing_database_raises_before_any_work(postgres, digits_mlp, digits, tmp_path) -> None:
    space = ash.load_space("quantize_only")
    with pytest.raises(ConfigError, match="database 'nosuchdb' does not exist"):
        ash.search(digits_mlp, digits, space, n_trials=2, storage=postgres.url("nosuchdb"))


def test_missing_driver_names_the_extra(monkeypatch) -> None:
    from autoshrink.search.study.urls import storage_error

    err = storage_error(
        "postgresql+psycopg2://u:pw@h/db", ModuleNotFoundError("No module named 'psycopg2'", name="psycopg2")
    )
    assert str(err) == (
        "storage postgresql+psycopg2://u:***@h/db: its database driver is not installed (psycopg2). "
        "Fix: pip install 'autoshrink[postgres]'."
    )


def test_dashboard_on_an_empty_server_database_waits_for_the_first_search(postgres, tmp_path) -> None:
    import subprocess
    import time

    from autoshrink.search.study.urls import rdb_url

    from .browser import autoshrink_cmd, free_port

    url = postgres.url(postgres.create_db())
    port = free_port()
    log = tmp_path / "dash.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            autoshrink_cmd("dashboard", url, "--port", str(port)),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while "waiting for a search" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert log.read_text().splitlines() == [
            f"dashboard: postgresql://autoshrink:***@127.0.0.1:{postgres.port}/"
            f"{url.rsplit('/', 1)[1]} has no Optuna tables yet; waiting for a "
            "search to create them (Ctrl-C to stop)"
        ]
        optuna.create_study(storage=rdb_url(url), study_name="late")  # what the first search does
        deadline = time.monotonic() + 30
        while True:
            try:
                summaries = get_json(f"http://127.0.0.1:{port}/api/studies", timeout=2)["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
    finally:
        stop(proc)
    assert [s["study_name"] for s in summaries] == ["late"]


def test_url_forms_name_the_same_server(postgres) -> None:
    """postgres:// (Heroku-style) and postgresql+psycopg:// reach the same database, locks included."""
    from autoshrink.search.study.leases import ServerLocks, open_locks
    from autoshrink.search.study.urls import dialect, rdb_url

    url = postgres.url(postgres.create_db())
    assert (
        dialect(url.replace("postgresql://", "postgres://"))
        == "postgresql"
        == dialect(url.replace("postgresql://", "postgresql+psycopg://"))
    )
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None:  # only psycopg 3 (autoshrink[postgres]): a bare URL uses it
        assert rdb_url(url) == url.replace("postgresql://", "postgresql+psycopg://")
    for form in (url.replace("postgresql://", "postgres://"), rdb_url(url)):
        with open_locks(form, "s") as locks:
            assert isinstance(locks, ServerLocks) and locks.kind == "postgresql"
            with locks.mutex():
                assert locks.alive(locks.driver_id)
