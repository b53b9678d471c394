"""The wheel works away from the checkout: the built-in search spaces ship in it as package data.

Builds a wheel from (a copy of) the repository, installs it with --no-deps into a fresh venv outside the
checkout (its dependencies come from the running interpreter's site-packages through a .pth file, without
processing that directory's own .pth files, so the editable install's finder never puts the checkout on
the path), then, from a directory outside the checkout, loads every built-in space by name and runs
`autoshrink search` on a copy of studies/digits_mlp_quantize.yaml (space: quantize_only, a built-in name).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "autoshrink" / "spaces"
STUDY = "digits_mlp_quantize"
# what the build needs neither sees nor should carry: environments, VCS data, earlier build outputs, studies' data
_SKIP_TOP = {".venv", ".git", "build", "dist", ".pytest_cache"}
_SKIP_ANY = {"__pycache__", "*.egg-info", "*.db", "*.pyc", "*.whl", "*.ashz"}


def _run(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _copy_source(dst: Path) -> None:
    """The checkout's files, so the build writes its build/ and egg-info in tmp, not in the checkout."""
    any_ = shutil.ignore_patterns(*_SKIP_ANY)

    def ignore(d: str, names: list[str]) -> set[str]:
        return set(any_(d, names)) | ({n for n in names if n in _SKIP_TOP} if Path(d) == ROOT else set())

    shutil.copytree(ROOT, dst, symlinks=True, ignore=ignore)


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")
    }
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_wheel_installs_outside_the_checkout_with_its_spaces_and_searches(tmp_path) -> None:
    src, wheels, venv, run = (tmp_path / n for n in ("src", "wheels", "venv", "run"))
    _copy_source(src)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(wheels),
            str(src),
        ],
        tmp_path,
        timeout=300,
    )
    (wheel,) = wheels.glob("autoshrink-*.whl")
    # the same base interpreter as this one (venv uses it), so the dependencies' compiled parts fit
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, timeout=120)
    py = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)],
        tmp_path,
        timeout=300,
    )
    purelib = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, timeout=60).strip()
    )
    deps = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]) if Path(p).is_dir()]
    # plain directory lines: added to sys.path after the venv's own site-packages, their .pth files unread
    (purelib / "_autoshrink_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))

    installed = purelib / "autoshrink" / "spaces"
    names = sorted(p.stem for p in SPACES.glob("*.yaml"))
    assert names == [
        "default",
        "lowrank_only",
        "post_training",
        "prune_only",
        "quantize_only",
        "structured",
        "transformer",
    ]
    assert sorted(p.name for p in installed.iterdir()) == [f"{n}.yaml" for n in names]
    for n in names:
        assert (installed / f"{n}.yaml").read_bytes() == (SPACES / f"{n}.yaml").read_bytes()

    run.mkdir()
    env = _clean_env()
    probe = textwrap.dedent(f"""
        import json, sys
        import autoshrink as ash
        from autoshrink.space import BUILTIN_DIR
        spaces = {{n: type(ash.load_space(n)).__name__ for n in {names!r}}}
        print(json.dumps({{"file": ash.__file__, "builtin_dir": str(BUILTIN_DIR), "spaces": spaces,
                          "path": sys.path, "modules": sorted(m for m in sys.modules if "editable" in m),
                          "finders": [type(f).__module__ for f in sys.meta_path]}}))
    """)
    got = json.loads(_run([str(py), "-c", probe], run, timeout=120, env=env))
    assert Path(got["file"]) == purelib / "autoshrink" / "__init__.py"
    assert Path(got["builtin_dir"]) == installed
    assert got["spaces"] == {n: "SearchSpace" for n in names}
    assert str(ROOT) not in got["path"] and "" not in got["path"][1:]  # '' is the run dir, outside the checkout
    assert got["modules"] == [] and not any("editable" in f for f in got["finders"])
    assert not (run / "search_spaces").exists()

    config = run / f"{STUDY}.yaml"
    shutil.copy(ROOT / "studies" / f"{STUDY}.yaml", config)
    assert "\nspace: quantize_only\n" in config.read_text()  # a built-in name, found in the installed package
    out = _run(
        [str(venv / "bin" / "autoshrink"), "search", config.name, "--n-trials", "3", "--quiet"],
        run,
        timeout=600,
        env=env,
    )
    assert out.rstrip().endswith(f"study '{STUDY}' in sqlite:///studies/{STUDY}.db"), out
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == [
        f"{STUDY}.yaml",
        "studies",
        f"studies/{STUDY}.db",
    ]
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{run / 'studies' / f'{STUDY}.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    bits = [32, 16, 8, 6, 5, 4, 3, 2]  # quantize_only.yaml's choices: bit-widths and distillation only
    for t in study.trials:
        assert set(t.params) == {"fc1.bits", "fc2.bits", "fc3.bits", "distill"}
        assert all(t.params[f"fc{i}.bits"] in bits for i in (1, 2, 3)) and t.params["distill"] in (False, True)
