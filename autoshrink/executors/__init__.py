"""Executors evaluate candidate policies: locally, or on Ray actors (imported lazily)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, ExecutorUnavailable, describe
from .base import Executor, Job, Outcome, Request, run_job
from .local import LocalExecutor


def make_executor(
    spec: Any, address: str | None = None, *, working_dir: Any = None, py_modules: Any = None, actors: int | None = None
) -> Any:
    """'local' -> LocalExecutor(); 'ray' -> RayExecutor(address=address, working_dir=..., py_modules=...,
    actors=...) (when available: address None starts a private instance, "host:port" joins that cluster;
    working_dir and py_modules ship the user's modules to the workers; actors None: as many as the free
    resources fit); an executor object as is."""
    ray_settings = [
        name
        for name, value in (
            ("address", address),
            ("working_dir", working_dir),
            ("py_modules", py_modules),
            ("actors", actors),
        )
        if value is not None
    ]
    if spec == "ray":
        try:
            from .ray import RayExecutor  # noqa: PLC0415 - Ray is imported only when asked for
        except ImportError as exc:
            raise ExecutorUnavailable(
                f"executor='ray': the Ray executor is not available ({exc}); use executor='local'."
            ) from None
        return RayExecutor(address=address, working_dir=working_dir, py_modules=py_modules, actors=actors)
    if isinstance(spec, str) and spec != "local":
        raise ConfigError(f"executor: got {spec!r}; use 'local', 'ray' or an executor object.")
    if ray_settings:
        many = len(ray_settings) > 1
        raise ConfigError(
            f"executor={describe(spec, 60)}: {', '.join(ray_settings)} "
            f"{'are settings' if many else 'is a setting'} of the Ray executor; use executor='ray' or "
            f"leave {'them' if many else 'it'} out."
        )
    if spec is None or spec == "local":
        return LocalExecutor()
    for method in ("start", "submit", "wait", "cancel", "shutdown"):
        if not callable(getattr(spec, method, None)):
            raise ConfigError(f"executor: {type(spec).__name__} has no {method}() method; it is not an executor.")
    return spec


__all__ = ["Executor", "Job", "LocalExecutor", "Outcome", "Request", "make_executor", "run_job"]
