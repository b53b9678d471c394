"""What docker/compose.yaml starts, natively on loopback and without Docker: PostgreSQL, a Ray head
(127.0.0.2) and a worker node (127.0.0.3), optuna-dashboard on the study storage, and two drivers
running `autoshrink search` on one study -- then the study in PostgreSQL, the dashboard's
/api/studies and the report. Every process is stopped by PID. The task's fine-tuning waits until an
actor on each node has reached it (tests/e2e/gated.py), so both drivers evaluate trials however
slowly the second one starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autoshrink.cli import main
from autoshrink.search.study.storage import counted
from autoshrink.search.study.urls import rdb_url
from tests.executors.cluster import HEAD, SECOND, LoopbackCluster
from tests.pgserver import PASSWORD

from .browser import get_json, start_dashboard, stop

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 16


def test_compose_equivalent_stack_two_drivers_one_study(postgres, tmp_path, monkeypatch, capsys) -> None:
    url = postgres.url(postgres.create_db())
    with LoopbackCluster() as cluster:
        config = tmp_path / "stack.yaml"
        config.write_text(f"""name: stack
model: autoshrink.zoo:digits_model
model_args: {{kind: mlp}}
task: tests.e2e.gated:gated_digits_task
task_args: {{gate: "{tmp_path}", nodes: ["{HEAD}", "{SECOND}"]}}
space: {ROOT / "autoshrink" / "spaces" / "quantize_only.yaml"}
objectives: [accuracy, size]
n_trials: {N_TRIALS}
finetune_steps: 60
executor: ray
executor_args: {{address: "{cluster.address}", actors: 1, py_modules: ["{ROOT / "tests"}"]}}
""")
        env = {**cluster.env, "PYTHONPATH": str(ROOT)}
        logs = [(tmp_path / f"driver{i}.out", tmp_path / f"driver{i}.err") for i in range(2)]
        drivers = []
        for out_path, err_path in logs:  # files, not pipes: a pipe a grandchild holds open never reaches EOF
            with open(out_path, "w") as out, open(err_path, "w") as err:
                drivers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "autoshrink.cli", "search", str(config), "--storage", url, "--quiet"],
                        cwd=tmp_path,
                        env=env,
                        stdout=out,
                        stderr=err,
                        text=True,
                    )
                )
        try:
            # started with the drivers, as compose starts it: it waits for the first search's tables
            dash = start_dashboard(url, tmp_path, ready_s=600)  # the drivers create the tables
        except BaseException:
            for d in drivers:
                d.kill()
            raise
        try:
            try:
                for d in drivers:
                    d.wait(timeout=400)
            except subprocess.TimeoutExpired:
                states = [d.poll() for d in drivers]  # None: still running
                raise AssertionError(
                    f"a driver ran past 400 s; exit codes {states}; stderr tails: "
                    + " | ".join(err.read_text()[-1500:] for _, err in logs)
                ) from None
            finally:
                for d in drivers:
                    if d.poll() is None:
                        d.kill()
                        d.wait()
            outs = [(out.read_text(), err.read_text()) for out, err in logs]
            for d, (out, err) in zip(drivers, outs):
                assert d.returncode == 0, err[-3000:]
                assert PASSWORD not in out + err
            summaries = get_json(f"{dash.base}/api/studies")["study_summaries"]
            detail = get_json(f"{dash.base}/api/studies/{summaries[0]['study_id']}")
        finally:
            stop(dash.proc)
    assert cluster.leftover == []

    study = optuna.load_study(study_name="stack", storage=rdb_url(url))
    trials = study.get_trials(deepcopy=False)
    assert counted(study) == N_TRIALS and not [t for t in trials if t.state.name in ("RUNNING", "WAITING", "FAIL")]
    assert len([t for t in trials if t.user_attrs.get("baseline_policy")]) == study.user_attrs["enqueued"]["baselines"]
    owners = {t.user_attrs["driver"].split(":")[1] for t in trials}
    assert owners == {str(d.pid) for d in drivers}  # both drivers ran trials of the one study
    evaluated = [t for t in trials if "eval" in t.user_attrs]  # not the warm-start twins skipped unevaluated
    nodes = {t.user_attrs["eval"]["worker"].split(":")[0] for t in evaluated}
    assert nodes == {HEAD, SECOND}  # one actor each, one CPU per node: both nodes worked
    assert [s["study_name"] for s in summaries] == ["stack"]
    assert sorted(t["number"] for t in detail["trials"]) == [t.number for t in trials]

    monkeypatch.chdir(tmp_path)
    assert main(["report", str(config), "--storage", url, "-o", "report.html", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["study"] == "stack" and shown["trials"] == len(trials)
    assert shown["complete"] == sum(t.state.name == "COMPLETE" for t in trials)
    assert os.path.getsize(tmp_path / "report.html") == shown["bytes"]
