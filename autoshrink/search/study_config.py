"""Study configs (studies/<name>.yaml): what `autoshrink search` runs -- the model and task factories,
the space, and every SearchConfig setting as a top-level key (docs/search.md lists them); `name` is the
study name.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TaskError, describe, finite_number
from ..executors.runtime_env import check_py_modules, check_working_dir
from ..space import BUILTIN_DIR
from ..space.yaml_source import Source, load_yaml
from ..task import Task
from .config import SETTINGS, SearchConfig, from_mapping

ENTRY_KEYS = (
    "name",
    "model",
    "model_args",
    "task",
    "task_args",
    "holdout",
    "space",
    "executor_args",
    "description",
)
EXECUTOR_ARGS = ("address", "working_dir", "py_modules", "actors")  # the RayExecutor settings a study config may give
_REQUIRED = ("name", "model", "task")
# every search setting is a key, except study_name: a config's `name` is its study name
KEYS = ENTRY_KEYS + tuple(name for name in SETTINGS if name != "study_name")


@dataclass(frozen=True)
class StudyConfig:
    """A loaded study config: the factories and space, and the search's settings."""

    name: str
    model: str
    task: str
    settings: SearchConfig
    model_args: Mapping[str, Any] = field(default_factory=dict)
    task_args: Mapping[str, Any] = field(default_factory=dict)
    holdout: float | None = None  # the share of the task's eval_data held out as its test_data
    space: str = "default"
    executor_args: Mapping[str, Any] = field(default_factory=dict)  # checked; paths absolute
    description: str = ""
    base_dir: str = "."
    source: Source = field(default_factory=lambda: Source("<config>"), compare=False, repr=False)

    def build_task(self, holdout: float | None = None) -> Task:
        """The task from its factory, with `holdout` (default: the config's) of its eval_data held out."""
        task = call_factory(self.task, self.task_args, "task", self.source, Task)
        share = self.holdout if holdout is None else holdout
        if share is None:
            return task
        try:
            return task.with_holdout(share)
        except TaskError as exc:
            raise self.source.error("holdout", str(exc)) from None

    def space_path(self) -> str:
        """The space as given if it is a built-in name; else resolved relative to the config file."""
        p = Path(self.space)
        if p.is_absolute() or not (p.suffix or "/" in self.space):
            return self.space
        local = Path(self.base_dir) / p
        return str(local if local.exists() else p)


def load_entry_point(spec: str, path: str, src: Source) -> Callable[..., Any]:
    """'package.module:callable' -> the callable (imports the module; configs name trusted code).
    Whatever the import raises (a syntax error in the user's module, an exit) is one ConfigError."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.partition(":")[::2]):
        raise src.error(path, f"got {spec!r}; use 'package.module:callable'.")
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise src.error(path, f"cannot import {module!r} ({exc}); check the name and that it is installed.") from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the user's module failed while importing: say where
        raise src.error(path, f"importing {module!r} raised {_described(exc)}; fix that module.") from None
    parts = attr.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            prefix = "".join(f"{p}." for p in parts[:i])
            owner = f"{module}:{prefix[:-1]}" if prefix else module
            hint = _alternatives(obj, part, module, prefix)
            raise src.error(path, f"{owner!r} has no attribute {part!r}; {hint}{'' if hint.endswith('?') else '.'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise src.error(
            path, f"{spec!r} is {describe(obj)}, not callable; name a function or class that returns the {path}."
        )
    return obj


def _alternatives(obj: Any, missing: str, module: str, prefix: str) -> str:
    """'did you mean 'module:close'?', else the callables `obj` has: what to name instead of `missing`."""
    names = []
    for name in sorted(dir(obj)):
        if name.startswith("_"):
            continue
        try:
            if callable(getattr(obj, name)):
                names.append(name)
        except Exception:  # noqa: BLE001, S112 - a lazy attribute that fails to load is no candidate
            continue
    close = difflib.get_close_matches(missing, names, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"'{module}:{prefix}{n}'" for n in close) + "?"
    if not names:
        return "it has no public callables; name the module that defines the factory"
    more = f", ... ({len(names)} in all)" if len(names) > 12 else ""
    return f"its callables: {', '.join(names[:12])}{more}"


def an(name: str) -> str:
    return f"an {name}" if name[0].lower() in "aeiou" else f"a {name}"


def _described(exc: BaseException) -> str:
    """'SyntaxError: invalid syntax (models.py, line 3)': the exception in one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def call_factory(
    spec: str, kwargs: Mapping[str, Any], path: str, src: Source, returns: type, args_path: str | None = None
) -> Any:
    """Load `spec`, call it with `kwargs` and check it returned a `returns`: each failure (arguments it
    does not take, an exception inside it, a wrong return type) is one ConfigError naming `path`."""
    fn = load_entry_point(spec, path, src)
    args_path = args_path or f"{path}_args"
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        try:
            params = f"{spec}{inspect.signature(fn)}"
        except (TypeError, ValueError):
            params = spec
        raise src.error(args_path, f"{exc} ({params}); fix the arguments.") from None
    except ValueError:  # no signature (a builtin): let the call say
        pass
    try:
        value = fn(**kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the user's factory failed: name it and what it raised
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise src.error(path, f"{spec}({shown}) raised {_described(exc)}; fix the factory or its arguments.") from None
    if not isinstance(value, returns):
        wanted = "torch.nn.Module" if returns.__module__.startswith("torch") else f"autoshrink.{returns.__qualname__}"
        raise src.error(
            path, f"{spec} returned {type(value).__name__}, not {an(wanted)}; name a factory that returns one."
        )
    return value


def _executor_args(data: Mapping[str, Any], src: Source, base: Path) -> dict[str, Any]:
    """executor_args checked: Ray settings only, with executor: ray; working_dir / py_modules exist (relative
    to the config file) and become absolute paths, so the study runs the same from any directory."""
    given = data.get("executor_args")
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise src.error("executor_args", f"got {describe(given)}; expected a mapping with {', '.join(EXECUTOR_ARGS)}.")
    unknown = sorted(set(given) - set(EXECUTOR_ARGS))
    if unknown:
        raise src.error(
            f"executor_args.{unknown[0]}", f"unknown key {unknown[0]!r}; allowed are {', '.join(EXECUTOR_ARGS)}."
        )
    if given and data.get("executor", "local") != "ray":
        raise src.error(
            "executor_args",
            f"{', '.join(given)}: settings of the Ray executor, but executor is "
            f"{data.get('executor', 'local')!r}; set executor: ray or remove executor_args.",
        )
    out: dict[str, Any] = {}
    address = given.get("address")
    if address is not None:
        if not isinstance(address, str) or not address.strip():
            raise src.error("executor_args.address", f"got {describe(address)}; use 'host:port' of the Ray head.")
        out["address"] = address
    actors = given.get("actors")
    if actors is not None:
        if isinstance(actors, bool) or not isinstance(actors, int) or not 1 <= actors <= 4096:
            raise src.error(
                "executor_args.actors",
                f"got {describe(actors)}; use a positive integer (actors this "
                "driver runs), or leave it out for as many as the cluster's free CPUs fit.",
            )
        out["actors"] = actors
    if given.get("working_dir") is not None:
        out["working_dir"] = check_working_dir(given["working_dir"], src.at("executor_args.working_dir"), base)
    if given.get("py_modules") is not None:
        out["py_modules"] = tuple(check_py_modules(given["py_modules"], src.at("executor_args.py_modules"), base))
    return out


def load_study_config(path: str | Path) -> StudyConfig:
    """Load and validate a study config YAML; errors name the file, line, key and value."""
    data, src = load_yaml(path)
    if not isinstance(data, Mapping):
        raise src.error("<root>", "a study config is a mapping (name, model, task, space, ...).")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise src.error(unknown[0], f"unknown key {unknown[0]!r}; allowed are {', '.join(sorted(KEYS))}.")
    for key in _REQUIRED:
        if not data.get(key):
            raise src.error(key, f"missing; a study config needs {', '.join(_REQUIRED)}.")
    for key in ("model_args", "task_args"):
        if data.get(key) is not None and not isinstance(data[key], Mapping):
            raise src.error(key, f"got {data[key]!r}; expected a mapping of keyword arguments.")
    holdout = data.get("holdout")
    if holdout is not None and (not finite_number(holdout) or not 0 < holdout < 1):
        raise src.error(
            "holdout",
            f"got {describe(holdout)}; use the share of the task's eval_data to hold out, "
            "in (0, 1), e.g. 0.5 (or leave it out when the task has test_data).",
        )
    fixes = {
        "space": "use a built-in space's name ("
        + ", ".join(sorted(f.stem for f in BUILTIN_DIR.glob("*.yaml")))
        + ") or the path of a space YAML, e.g. space: spaces/mine.yaml.",
        "description": "use one line of text, e.g. description: 'int4 for the edge board'.",
    }
    for key, fix in fixes.items():
        if data.get(key) is not None and not isinstance(data[key], str):
            raise src.error(key, f"got {describe(data[key])}; {fix}")
    given = {k: v for k, v in data.items() if k in SETTINGS and v is not None}  # null: the default
    given["study_name"] = data["name"]

    def error(name: str, value: Any, fix: str) -> Exception:
        return src.error("name" if name == "study_name" else name, f"got {describe(value)}; {fix}")

    settings = from_mapping(given, error, lambda name, message: src.error(name, message.removeprefix(f"{name} ")))
    return StudyConfig(
        name=data["name"],
        model=data["model"],
        task=data["task"],
        settings=settings,
        model_args=dict(data.get("model_args") or {}),
        task_args=dict(data.get("task_args") or {}),
        holdout=None if holdout is None else float(holdout),
        space=data.get("space") or "default",
        description=data.get("description") or "",
        executor_args=_executor_args(data, src, Path(path).resolve().parent),
        base_dir=str(Path(path).resolve().parent),
        source=src,
    )
