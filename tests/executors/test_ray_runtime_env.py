"""User code on a Ray cluster: RayExecutor(working_dir=..., py_modules=..., runtime_env=...) ships modules the
workers lack.

First the argument checks, the study config's executor_args and the CLI flags (no Ray started); then a
real two-node loopback cluster (cluster.py, started once for the module) runs a model class defined only
in a temp directory: without a runtime_env the workers cannot load it (one clear error), with working_dir
or py_modules the search runs on both nodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
import uuid
from pathlib import Path

import pytest

import autoshrink as ash
from autoshrink.cli import main
from autoshrink.errors import ConfigError
from autoshrink.executors import make_executor
from autoshrink.search.study_config import load_study_config

from .cluster import LoopbackCluster

pytest.importorskip("ray")

MODEL_SOURCE = textwrap.dedent('''
    """A user's model module: it exists only in a temp directory the Ray workers do not have."""
    import torch
    from torch import nn


    class UserNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc2(self.fc1(x.flatten(1)).relu())


    def make_model() -> UserNet:
        torch.manual_seed(0)
        return UserNet()
''')
USER_PARAMS = 64 * 32 + 32 + 32 * 10 + 10  # UserNet's parameter count: the job's model is the user's class


@pytest.fixture(scope="module")
def user_code(tmp_path_factory) -> tuple[Path, str]:
    """(directory, module name): a model module importable only where that directory is on sys.path."""
    name = f"usermodel_{uuid.uuid4().hex[:10]}"
    code = tmp_path_factory.mktemp("usercode")
    (code / f"{name}.py").write_text(MODEL_SOURCE)
    return code, name


# ----------------------------------------------------------------------------- arguments (no Ray started)


def test_working_dir_and_py_modules_merge_into_the_runtime_env(tmp_path, monkeypatch) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "one.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the current directory, once, at construction
    module = types.ModuleType("shipped_single_file")
    module.__file__ = str(tmp_path / "one.py")
    ex = ash.RayExecutor(
        working_dir="models",
        py_modules=["one.py", module, Path("models"), "s3://bucket/pkg.zip"],
        runtime_env={"env_vars": {"A": "1"}},
    )
    assert ex.runtime_env == {
        "env_vars": {"A": "1"},
        "working_dir": str(tmp_path / "models"),
        "py_modules": [
            str(tmp_path / "one.py"),
            str(tmp_path / "one.py"),
            str(tmp_path / "models"),
            "s3://bucket/pkg.zip",
        ],
    }
    package = ash.RayExecutor(py_modules=[ash]).runtime_env["py_modules"]
    assert package == [str(Path(ash.__file__).parent)]  # a package ships its directory
    assert ash.RayExecutor(runtime_env={"working_dir": str(tmp_path)}).runtime_env == {"working_dir": str(tmp_path)}
    both = ash.RayExecutor(runtime_env={"py_modules": ["one.py"]}, working_dir=".").runtime_env  # different fields
    assert both == {"py_modules": [str(tmp_path / "one.py")], "working_dir": str(tmp_path)}
    assert ash.RayExecutor().runtime_env is None and ash.RayExecutor(py_modules=[]).runtime_env == {"py_modules": []}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(working_dir="missing_dir"),
            r"RayExecutor.working_dir: 'missing_dir' does not exist \(looked for /.*/missing_dir\); give an existing "
            "directory",
        ),
        (dict(py_modules=["gone.py"]), r"RayExecutor.py_modules\[0\]: 'gone.py' does not exist"),
        (
            dict(runtime_env={"working_dir": "nowhere"}),
            r"RayExecutor.runtime_env\['working_dir'\]: 'nowhere' does not exist",
        ),
        (
            dict(runtime_env={"working_dir": "."}, working_dir="."),
            r"RayExecutor.working_dir: got '.', but runtime_env also sets working_dir \('.'\); give it once: "
            r"working_dir=\.\.\. or runtime_env=\{'working_dir': \.\.\.\}",
        ),
        (
            dict(runtime_env={"py_modules": ["a"]}, py_modules=["b"]),
            r"RayExecutor.py_modules: got \['b'\], but runtime_env also sets py_modules \(\['a'\]\); give it once",
        ),
        (
            dict(py_modules="models"),
            r"RayExecutor.py_modules: got 'models'; use a list of modules or paths, e.g. \['models'\]",
        ),
        (
            dict(working_dir=3),
            r"RayExecutor.working_dir: got 3; use the path \(str or pathlib.Path\) of an existing directory",
        ),
        (dict(py_modules=[None]), r"RayExecutor.py_modules\[0\]: got None; use the path"),
        (dict(py_modules=[sys]), r"RayExecutor.py_modules\[0\]: module 'sys' has no single file or directory"),
        (
            dict(py_modules=["notes.txt"]),
            r"RayExecutor.py_modules\[0\]: 'notes.txt' is a .txt file; Ray ships a package "
            r"directory, a .py file or a .whl file",
        ),
        (dict(runtime_env=["working_dir", "."]), r"RayExecutor.runtime_env: got \['working_dir', '.'\]; use a dict"),
        (dict(runtime_env={1: "x"}), r"RayExecutor.runtime_env: key 1 is not a string"),
        (
            dict(working_dir=".", init_kwargs={"runtime_env": {"env_vars": {}}}),
            r"RayExecutor.init_kwargs: holds a runtime_env \(\{'env_vars': \{\}\}\) and "
            r"runtime_env/working_dir/py_modules "
            r"are given too; give it once",
        ),
    ],
)
def test_runtime_env_arguments_are_checked(tmp_path, monkeypatch, kwargs, message) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ConfigError, match=message):
        ash.RayExecutor(**kwargs)


def test_make_executor_passes_the_shipping_settings_to_ray_only(tmp_path) -> None:
    ex = make_executor("ray", address="127.0.0.2:6399", working_dir=tmp_path, py_modules=[tmp_path])
    assert ex.address == "127.0.0.2:6399"
    assert ex.runtime_env == {"working_dir": str(tmp_path), "py_modules": [str(tmp_path)]}
    with pytest.raises(
        ConfigError,
        match=r"executor='local': working_dir is a setting of the Ray executor; use "
        r"executor='ray' or leave it out",
    ):
        make_executor("local", working_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"executor=None: address, py_modules are settings of the Ray executor"):
        make_executor(None, address="a:1", py_modules=[tmp_path])


def test_start_failures_become_one_plain_line() -> None:
    from autoshrink.errors import ExecutorUnavailable
    from autoshrink.executors.runtime_env import start_failure

    ray_text = (
        "The actor died because of an error raised in its creation task, \x1b[36mray::_Worker.__init__()\x1b[39m"
        "\ntraceback: ...\nModuleNotFoundError: No module named 'mine'"
    )
    err = start_failure(ray_text, False, None, shipping=False)
    assert type(err) is ConfigError and str(err).startswith(
        "the Ray workers could not load the job (ModuleNotFoundError: No module named 'mine'). The model, task"
    )
    shipped = start_failure(ray_text, False, {"working_dir": "/w"}, shipping=True)
    assert str(shipped).endswith(
        "This executor ships runtime_env {'working_dir': '/w'}: check that it holds the module named above."
    )
    setup = start_failure(
        "Failed to set up runtime environment.\nTraceback\nRuntimeError: " + "pip failed. " * 40,
        True,
        {"pip": ["x"]},
        shipping=True,
    )
    assert isinstance(setup, ExecutorUnavailable) and "\n" not in str(setup) and "\x1b" not in str(setup)
    assert str(setup).startswith(
        "RayExecutor: the Ray workers could not set up the runtime_env {'pip': ['x']} "
        "(RuntimeError: pip failed. pip failed."
    )
    assert "pip failed.); check its paths, URIs and packages" in str(setup)  # cut after a whole sentence


def _study(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "conf" / "study.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(
        "name: rt\nmodel: torch.nn:Identity\ntask: autoshrink.zoo:digits_task\ntask_args: {device: cpu}\n"
        "space: quantize_only\nn_trials: 1\n" + extra
    )
    return p


def test_study_config_executor_args_resolve_against_the_config_file(tmp_path, monkeypatch) -> None:
    (tmp_path / "conf" / "code").mkdir(parents=True)
    (tmp_path / "conf" / "code" / "mine.py").write_text("")
    monkeypatch.chdir("/")  # not the config's directory: its paths still resolve there
    cfg = load_study_config(
        _study(
            tmp_path,
            "executor: ray\nexecutor_args:\n  address: 127.0.0.2:6399\n"
            "  working_dir: code\n  py_modules: [code/mine.py, s3://b/p.zip]\n"
            "  actors: 3\n",
        )
    )
    code = tmp_path / "conf" / "code"
    assert cfg.settings.executor == "ray" and dict(cfg.executor_args) == {
        "address": "127.0.0.2:6399",
        "working_dir": str(code),
        "py_modules": (str(code / "mine.py"), "s3://b/p.zip"),
        "actors": 3,
    }
    assert load_study_config(_study(tmp_path, "executor: ray\n")).executor_args == {}


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            "executor: ray\nexecutor_args:\n  working_dir: nope\n",
            r"study.yaml:9: executor_args.working_dir: 'nope' does not exist \(looked for /.*/conf/nope\); "
            r"give an existing "
            "directory",
        ),
        (
            "executor: ray\nexecutor_args:\n  py_modules: code\n",
            r"study.yaml:9: executor_args.py_modules: got 'code'; use a list of modules or paths",
        ),
        (
            "executor: ray\nexecutor_args:\n  cpus: 4\n",
            r"study.yaml:9: executor_args.cpus: unknown key 'cpus'; allowed are address, working_dir, "
            r"py_modules, actors",
        ),
        (
            "executor: ray\nexecutor_args:\n  actors: 0\n",
            r"study.yaml:9: executor_args.actors: got 0; use a positive integer \(actors this driver runs\)",
        ),
        (
            "executor: local\nexecutor_args: {working_dir: .}\n",
            r"study.yaml:8: executor_args: working_dir: settings of the Ray executor, but executor is 'local'; set "
            "executor: ray or remove executor_args",
        ),
        (
            "executor: ray\nexecutor_args: [code]\n",
            r"executor_args: got \['code'\]; expected a mapping with address, "
            "working_dir, py_modules, actors",
        ),
        (
            "executor: ray\nexecutor_args: {address: 7}\n",
            r"executor_args.address: got 7; use 'host:port' of the Ray head",
        ),
    ],
)
def test_study_config_executor_args_errors(tmp_path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_study_config(_study(tmp_path, extra))


@pytest.fixture
def captured_executor(monkeypatch) -> dict:
    """The executor `autoshrink search` would run with (search itself replaced)."""
    seen: dict = {}

    def fake_search(*args, **kwargs):
        seen["executor"] = args[3].executor  # the SearchConfig the CLI built
        raise SystemExit(0)

    monkeypatch.setattr(sys.modules["autoshrink.search"], "search", fake_search)  # the package, not the function
    return seen


def test_cli_ray_flags_ship_code_and_override_the_config(tmp_path, monkeypatch, captured_executor) -> None:
    from autoshrink.executors.ray import RayExecutor

    for d in ("conf/code", "here", "here/pkg"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path / "here")
    config = _study(tmp_path, "executor: ray\nexecutor_args: {address: '127.0.0.2:6399', working_dir: code}\n")
    with pytest.raises(SystemExit):
        main(["search", str(config), "--quiet"])
    ex = captured_executor["executor"]
    assert isinstance(ex, RayExecutor) and ex.address == "127.0.0.2:6399"
    assert ex.runtime_env == {"working_dir": str(tmp_path / "conf" / "code")}
    with pytest.raises(SystemExit):  # flags win; their paths are relative to the current directory
        main(["search", str(config), "--ray-working-dir", ".", "--ray-py-module", "pkg", "--ray-address", "h:1"])
    ex = captured_executor["executor"]
    assert ex.address == "h:1" and ex.runtime_env == {
        "working_dir": str(tmp_path / "here"),
        "py_modules": [str(tmp_path / "here" / "pkg")],
    }
    with pytest.raises(SystemExit):  # --executor local overrides a Ray config: its executor_args do not apply
        main(["search", str(config), "--executor", "local"])
    assert captured_executor["executor"] == "local"
    with pytest.raises(SystemExit):  # a local config plus a flag: Ray, private instance
        main(["search", str(_study(tmp_path, "")), "--ray-working-dir", "."])
    ex = captured_executor["executor"]
    assert ex.address is None and ex.runtime_env == {"working_dir": str(tmp_path / "here")}
    with pytest.raises(SystemExit):  # this driver's share of a cluster other drivers use too
        main(["search", str(config), "--ray-actors", "2"])
    ex = captured_executor["executor"]
    assert ex.requested_actors == 2 and ex.address is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ray-working-dir", "nope"], "search: --ray-working-dir: 'nope' does not exist"),
        (["--ray-py-module", "gone.py"], r"search: --ray-py-module\[0\]: 'gone.py' does not exist"),
        (["--ray-actors", "0"], r"search: --ray-actors 0; use a positive number of actors"),
        (
            ["--ray-actors", "2", "--executor", "local"],
            r"search: --ray-actors 2 runs the trials on Ray, but --executor local was given; drop one of them",
        ),
        (
            ["--ray-working-dir", ".", "--executor", "local"],
            r"search: --ray-working-dir \. runs the trials on Ray, but --executor local was given; drop one of them",
        ),
    ],
)
def test_cli_ray_flag_errors_are_one_line(tmp_path, monkeypatch, capsys, captured_executor, argv, message) -> None:
    import re

    monkeypatch.chdir(tmp_path)
    assert main(["search", str(_study(tmp_path, "")), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(message, err), err
    assert "executor" not in captured_executor  # refused before any search


# ----------------------------------------------------------------------------- a real two-node cluster

DRIVER = textwrap.dedent("""
    import json, sys
    mode, address, code_dir, module_name, space, storage = sys.argv[1:]
    sys.path.insert(0, code_dir)  # the user's module imports here, in the driver, and nowhere else
    import importlib
    import ray
    import autoshrink as ash
    from autoshrink.errors import ConfigError
    from autoshrink.zoo import digits_task

    user = importlib.import_module(module_name)

    def attempt(executor, name):
        try:
            r = ash.search(user.make_model(), digits_task(device="cpu"), ash.load_space(space), n_trials=4,
                           executor=executor, latency=ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0.0),
                           storage=storage, study_name=name, sampler="random", sensitivity=False, screen=False,
                           runtime="float")
        except ConfigError as exc:
            return {{"error": type(exc).__name__, "message": str(exc)}}
        return {{"workers": [t.user_attrs["eval"]["worker"] for t in r.study.trials],
                 "states": [t.state.name for t in r.study.trials], "params": r.baseline.params}}

    out = {{}}
    if mode == "join":  # the executor joins the cluster itself: its runtime_env goes to ray.init
        out["none"] = attempt(ash.RayExecutor(address=address, actors=2), "none")
        out["working_dir"] = attempt(ash.RayExecutor(address=address, actors=2, working_dir=code_dir), "wd")
    else:  # Ray was initialized before the executor: the runtime_env goes to each actor
        ray.init(address=address, logging_level="ERROR")
        out["bad_uri"] = attempt(ash.RayExecutor(actors=2, runtime_env={{"working_dir": "{bad_uri}"}}), "bad")
        out["py_modules"] = attempt(ash.RayExecutor(actors=2, py_modules=[user]), "pm")
    print(json.dumps(out))
""")
BAD_URI = "gcs://_ray_pkg_00000000deadbeef.zip"  # a package the cluster never received


@pytest.fixture(scope="module")
def cluster():
    with LoopbackCluster() as c:
        yield c
    assert c.leftover == []


def _drive(cluster: LoopbackCluster, user_code: tuple[Path, str], tmp_path: Path, mode: str) -> dict:
    """Run DRIVER in its own process: script and cwd outside the code directory (Ray puts both on the
    workers' path), no PYTHONPATH, so only what the executor ships reaches the workers."""
    code, name = user_code
    (tmp_path / "drv").mkdir()
    (tmp_path / "cwd").mkdir()
    script = tmp_path / "drv" / "driver.py"
    script.write_text(DRIVER.format(bad_uri=BAD_URI))
    (tmp_path / "s.yaml").write_text("defaults: {bits: [32, 8, 4]}\nfinetune: {steps: 5}\n")
    env = {k: v for k, v in cluster.env.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            mode,
            cluster.address,
            str(code),
            name,
            str(tmp_path / "s.yaml"),
            f"sqlite:///{tmp_path}/rt.db",
        ],
        cwd=tmp_path / "cwd",
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ran_on_both_nodes(result: dict) -> None:
    assert "error" not in result, result
    assert result["states"] == ["COMPLETE"] * 4 and result["params"] == USER_PARAMS
    assert {w.split(":")[0] for w in result["workers"]} == {"127.0.0.2", "127.0.0.3"}, result["workers"]


def test_working_dir_ships_the_model_module_to_a_cluster_the_executor_joins(cluster, user_code, tmp_path) -> None:
    out = _drive(cluster, user_code, tmp_path, "join")
    _, name = user_code
    none = out["none"]
    assert none["error"] == "ConfigError", none
    assert none["message"].startswith(
        f"the Ray workers could not load the job (ModuleNotFoundError: No module named "
        f"'{name}'). The model, task and their classes must be importable on every"
    )
    assert "RayExecutor(working_dir='DIR')" in none["message"] and "--ray-working-dir" in none["message"]
    _ran_on_both_nodes(out["working_dir"])


def test_py_modules_ship_the_model_module_when_ray_was_initialized_first(cluster, user_code, tmp_path) -> None:
    out = _drive(cluster, user_code, tmp_path, "initialized")
    bad = out["bad_uri"]
    assert bad["error"] == "ExecutorUnavailable", bad
    assert bad["message"].startswith(
        f"RayExecutor: the Ray workers could not set up the runtime_env {{'working_dir': '{BAD_URI}'}} ("
    )
    assert "Failed to download runtime_env file package" in bad["message"] and "\n" not in bad["message"]
    _ran_on_both_nodes(out["py_modules"])


def test_the_user_module_is_not_importable_outside_its_directory(user_code) -> None:
    """The premise of the cluster tests: nothing but the code directory provides the module."""
    code, name = user_code
    assert str(code) not in sys.path and str(code) not in os.environ.get("PYTHONPATH", "")
    with pytest.raises(ModuleNotFoundError):
        __import__(name)
