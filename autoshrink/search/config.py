"""Study configs (studies/<name>.yaml): everything `autoshrink search` needs, as frozen data.

    name: digits_cnn                       # study name (storage default sqlite:///studies/<name>.db)
    model: autoshrink.zoo:digits_model     # "package.module:callable" returning the trained model
    model_args: {kind: cnn}
    task: autoshrink.zoo:digits_task       # "package.module:callable" returning an ash.Task
    task_args: {}
    space: default                         # a YAML path (relative to this file) or a built-in name
    objectives: [accuracy, size, latency]
    sampler: front
    n_trials: 40
    timeout: null                          # seconds, optional
    finetune_steps: 200                    # optional; default: the space's finetune.steps
    max_accuracy_drop: 0.01                # optional constraint (fraction)
    max_latency_ms: null                   # optional latency limit (ms on the study's runtime; needs latency)
    storage: null                          # optional Optuna storage URL
    executor: local                        # local or ray
    executor_args: {}                      # ray only: address (host:port), working_dir and py_modules (paths
                                           # relative to this file) ship your model/task modules to the workers,
                                           # actors (default: as many as the cluster's free CPUs fit)
    seed: 0
    runtime: auto                          # auto (timed once), float or int8: every trial runs on it
    refine_top: 0                          # refine stage: re-run the k best candidates ...
    refine_steps: null                     # ... with this many fine-tune steps (default 5x finetune_steps)
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import describe, finite_number
from ..executors.runtime_env import check_py_modules, check_working_dir
from ..space.yaml_source import Source, load_yaml
from .runtime import RUNTIME_CHOICES

_KEYS = {"name", "model", "model_args", "task", "task_args", "space", "objectives", "sampler", "n_trials", "timeout",
         "finetune_steps", "max_accuracy_drop", "max_latency_ms", "storage", "executor", "executor_args", "seed",
         "description", "runtime", "refine_top", "refine_steps"}
EXECUTOR_ARGS = ("address", "working_dir", "py_modules", "actors")  # the RayExecutor settings a study config may give
_REQUIRED = ("name", "model", "task")
MAX_INT = 2 ** 32  # no count, step or seed anyone means is larger


@dataclass(frozen=True)
class StudyConfig:
    name: str
    model: str
    task: str
    model_args: Mapping[str, Any] = field(default_factory=dict)
    task_args: Mapping[str, Any] = field(default_factory=dict)
    space: str = "default"
    objectives: tuple[str, ...] = ("accuracy", "size", "latency")
    sampler: str = "front"
    n_trials: int | None = 40
    timeout: float | None = None
    finetune_steps: int | None = None
    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None
    storage: str | None = None
    executor: str = "local"
    executor_args: Mapping[str, Any] = field(default_factory=dict)  # checked; paths absolute
    seed: int = 0
    description: str = ""
    runtime: str = "auto"
    refine_top: int = 0
    refine_steps: int | None = None
    base_dir: str = "."
    source: Source = field(default_factory=lambda: Source("<config>"), compare=False, repr=False)

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
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise src.error(path, f"{module!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise src.error(path, f"{spec!r} is not callable.")
    return obj


def an(name: str) -> str:
    return f"an {name}" if name[0].lower() in "aeiou" else f"a {name}"


def _described(exc: BaseException) -> str:
    """'SyntaxError: invalid syntax (models.py, line 3)': the exception in one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def call_factory(spec: str, kwargs: Mapping[str, Any], path: str, src: Source, returns: type,
                 args_path: str | None = None) -> Any:
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
        raise src.error(path, f"{spec} returned {type(value).__name__}, not {an(wanted)}; name a factory that "
                        "returns one.")
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
        raise src.error(f"executor_args.{unknown[0]}", f"unknown key {unknown[0]!r}; allowed are "
                        f"{', '.join(EXECUTOR_ARGS)}.")
    if given and data.get("executor", "local") != "ray":
        raise src.error("executor_args", f"{', '.join(given)}: settings of the Ray executor, but executor is "
                        f"{data.get('executor', 'local')!r}; set executor: ray or remove executor_args.")
    out: dict[str, Any] = {}
    address = given.get("address")
    if address is not None:
        if not isinstance(address, str) or not address.strip():
            raise src.error("executor_args.address", f"got {describe(address)}; use 'host:port' of the Ray head.")
        out["address"] = address
    actors = given.get("actors")
    if actors is not None:
        if isinstance(actors, bool) or not isinstance(actors, int) or not 1 <= actors <= 4096:
            raise src.error("executor_args.actors", f"got {describe(actors)}; use a positive integer (actors this "
                            "driver runs), or leave it out for as many as the cluster's free CPUs fit.")
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
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise src.error(unknown[0], f"unknown key {unknown[0]!r}; allowed are {', '.join(sorted(_KEYS))}.")
    for key in _REQUIRED:
        if not data.get(key):
            raise src.error(key, f"missing; a study config needs {', '.join(_REQUIRED)}.")
    for key in ("model_args", "task_args"):
        if data.get(key) is not None and not isinstance(data[key], Mapping):
            raise src.error(key, f"got {data[key]!r}; expected a mapping of keyword arguments.")
    for key, kind in (("n_trials", int), ("finetune_steps", int), ("seed", int), ("refine_top", int),
                      ("refine_steps", int)):
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, kind) or not -MAX_INT <= v <= MAX_INT):
            raise src.error(key, f"got {describe(v)}; expected an integer (at most {MAX_INT:,}).")
    for key in ("timeout", "max_accuracy_drop"):
        v = data.get(key)
        if v is not None and not finite_number(v):
            raise src.error(key, f"got {describe(v)}; expected a finite number.")
    limit = data.get("max_latency_ms")
    if limit is not None and (not finite_number(limit) or limit <= 0):
        raise src.error("max_latency_ms", f"got {describe(limit)}; expected milliseconds > 0 (or leave it out).")
    if data.get("runtime") is not None and data["runtime"] not in RUNTIME_CHOICES:
        raise src.error("runtime", f"got {data['runtime']!r}; use {', '.join(RUNTIME_CHOICES)}.")
    objectives = data.get("objectives", ["accuracy", "size", "latency"])
    if isinstance(objectives, str):
        objectives = [objectives]
    if limit is not None and "latency" not in objectives:
        raise src.error("max_latency_ms", "a latency limit needs 'latency' among the objectives; add it to "
                        "objectives or remove max_latency_ms.")
    kwargs = {k: v for k, v in data.items() if v is not None}
    kwargs["executor_args"] = _executor_args(data, src, Path(path).resolve().parent)
    kwargs["objectives"] = tuple(objectives)
    kwargs["model_args"] = dict(data.get("model_args") or {})
    kwargs["task_args"] = dict(data.get("task_args") or {})
    return StudyConfig(**kwargs, base_dir=str(Path(path).resolve().parent), source=src)
