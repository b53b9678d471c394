"""The Ray runtime_env of a RayExecutor: user code shipped to workers that do not have it.

Workers unpickle the model and task, so their classes' modules must import there; Ray ships a
runtime_env's `working_dir` and `py_modules` to the executor's actors. This module merges RayExecutor's
`runtime_env`, `working_dir` and `py_modules` arguments into one dict and checks it (local paths must
exist and become absolute, imported modules become their file or package directory, URIs pass as given)
without importing Ray, so make_executor and the study config use the same checks. start_failure turns
Ray's error when the actors cannot start into one that says how to ship the code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ConfigError, ExecutorUnavailable, describe

PY_MODULE_FILES = (".py", ".whl")  # the single files Ray accepts as py_modules entries


def is_uri(value: str) -> bool:
    """'s3://bucket/pkg.zip', 'gcs://_ray_pkg_....zip': something Ray fetches, not a local path."""
    return "://" in value


def _existing(value: Any, field: str, base: Path | None, what: str) -> tuple[str, Path | None]:
    """(value as text, its resolved local path, or None for a URI); a missing path is a ConfigError."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"{field}: got {describe(value)}; use the path (str or pathlib.Path) of an existing {what}, or a URI."
        )
    if is_uri(value):
        return value, None
    path = Path(value).expanduser()
    path = (base / path if base is not None and not path.is_absolute() else path).resolve()
    if not path.exists():
        raise ConfigError(f"{field}: {value!r} does not exist (looked for {path}); give an existing {what}.")
    return value, path


def check_working_dir(value: Any, field: str, base: Path | None = None) -> str:
    """A working_dir: an existing directory (or an archive Ray accepts), made absolute; a URI as given."""
    text, path = _existing(value, field, base, "directory")
    return text if path is None else str(path)


def check_py_module(value: Any, field: str, base: Path | None = None) -> str:
    """One py_modules entry: an imported module (-> its package directory or file), an existing
    directory or .py/.whl file (made absolute), or a URI (as given)."""
    if isinstance(value, ModuleType):
        paths = list(getattr(value, "__path__", None) or [])
        source = paths[0] if len(paths) == 1 else getattr(value, "__file__", None) if not paths else None
        if not source:
            raise ConfigError(
                f"{field}: module {value.__name__!r} has no single file or directory Ray could ship "
                "(built in, or a namespace package); give the path of its directory instead."
            )
        value = source
    text, path = _existing(value, field, base, "module directory or .py/.whl file")
    if path is not None and path.is_file() and path.suffix not in PY_MODULE_FILES:
        raise ConfigError(
            f"{field}: {text!r} is a {path.suffix or 'suffix-less'} file; Ray ships a package "
            "directory, a .py file or a .whl file as a py_modules entry."
        )
    return text if path is None else str(path)


def check_py_modules(value: Any, field: str, base: Path | None = None) -> list[str]:
    """A py_modules list (see check_py_module); a bare string or path is refused (a list is meant)."""
    if isinstance(value, (str, bytes, os.PathLike, ModuleType)) or not isinstance(value, Sequence):
        raise ConfigError(f"{field}: got {describe(value)}; use a list of modules or paths, e.g. [{describe(value)}].")
    return [check_py_module(v, f"{field}[{i}]", base) for i, v in enumerate(value)]


def build_runtime_env(
    runtime_env: Mapping[str, Any] | None, working_dir: Any = None, py_modules: Any = None, owner: str = "RayExecutor"
) -> dict[str, Any] | None:
    """runtime_env with working_dir and py_modules merged in and checked; None when it ships nothing.

    A field given both ways is refused (which one was meant is unclear); other runtime_env keys
    (env_vars, pip, excludes, ...) pass to Ray unchanged."""
    if runtime_env is not None and not isinstance(runtime_env, Mapping):
        raise ConfigError(
            f"{owner}.runtime_env: got {describe(runtime_env)}; use a dict such as "
            "{'working_dir': 'src', 'env_vars': {...}} or None."
        )
    env = dict(runtime_env or {})
    bad = [k for k in env if not isinstance(k, str)]
    if bad:
        raise ConfigError(
            f"{owner}.runtime_env: key {bad[0]!r} is not a string; runtime_env keys are Ray's "
            "field names (working_dir, py_modules, env_vars, pip, ...)."
        )
    fields = {"working_dir": f"{owner}.runtime_env['working_dir']", "py_modules": f"{owner}.runtime_env['py_modules']"}
    for name, value in (("working_dir", working_dir), ("py_modules", py_modules)):
        if value is None:
            continue
        if name in env:
            raise ConfigError(
                f"{owner}.{name}: got {describe(value)}, but runtime_env also sets {name} "
                f"({describe(env[name])}); give it once: {name}=... or runtime_env={{'{name}': ...}}."
            )
        env[name], fields[name] = value, f"{owner}.{name}"
    if env.get("working_dir") is not None:
        env["working_dir"] = check_working_dir(env["working_dir"], fields["working_dir"])
    if env.get("py_modules") is not None:
        env["py_modules"] = check_py_modules(env["py_modules"], fields["py_modules"])
    return env or None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(text: str, limit: int = 300) -> str:
    """Ray's error text as one plain line: no terminal colours, whitespace folded, at most `limit` characters
    (cut after its last whole sentence that fits, where there is one)."""
    text = " ".join(_ANSI.sub("", text).split())
    if len(text) <= limit:
        return text
    end = text.rfind(". ", 0, limit)
    return text[: end + 1] if end > limit // 3 else text[: limit - 3] + "..."


def start_failure(text: str, setup_failed: bool, env: Mapping[str, Any] | None, shipping: bool) -> ConfigError:
    """The one error a failed actor start becomes, from Ray's error text (its last line is the cause):
    the runtime_env could not be set up on a node (ExecutorUnavailable), or the workers could not
    unpickle the job -- its classes' modules are missing there (ConfigError, with the ways to ship them)."""
    reason = one_line(text.strip().splitlines()[-1] if text.strip() else text)
    shown = describe(dict(env), 200) if env else "{}"
    if setup_failed or "runtime env" in text.lower():
        return ExecutorUnavailable(
            f"RayExecutor: the Ray workers could not set up the runtime_env {shown} "
            f"({reason}); check its paths, URIs and packages: every node must be able to "
            "fetch or install them."
        )
    shipped = (
        f" This executor ships runtime_env {shown}: check that it holds the module named above." if shipping else ""
    )
    return ConfigError(
        f"the Ray workers could not load the job ({reason}). The model, task and their classes "
        "must be importable on every worker: define them in a module (not in __main__ or a "
        "notebook cell) that is installed on the workers or shipped to them: "
        "RayExecutor(working_dir='DIR') (a directory of modules), RayExecutor(py_modules=[module "
        "or path]) or RayExecutor(runtime_env={...}); CLI --ray-working-dir / --ray-py-module; "
        f"study config executor_args: {{working_dir: DIR}}.{shipped}"
    )
