"""Executors evaluate candidate policies: locally, or on Ray actors (imported lazily)."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError, ExecutorUnavailable
from .base import Executor, Job, Outcome, Request, run_job
from .local import LocalExecutor


def make_executor(spec: Any, address: str | None = None) -> Any:
    """'local' -> LocalExecutor(); 'ray' -> RayExecutor(address=address) (when available: None starts a private
    instance, "host:port" joins that cluster); an executor object as is."""
    if spec is None or spec == "local":
        return LocalExecutor()
    if spec == "ray":
        try:
            from .ray import RayExecutor  # noqa: PLC0415 - Ray is imported only when asked for
        except ImportError as exc:
            raise ExecutorUnavailable(f"executor='ray': the Ray executor is not available ({exc}); use executor='local'.") from None
        return RayExecutor(address=address)
    if isinstance(spec, str):
        raise ConfigError(f"executor: got {spec!r}; use 'local', 'ray' or an executor object.")
    for method in ("start", "submit", "wait", "cancel", "shutdown"):
        if not callable(getattr(spec, method, None)):
            raise ConfigError(f"executor: {type(spec).__name__} has no {method}() method; it is not an executor.")
    return spec


__all__ = ["Executor", "Job", "LocalExecutor", "Outcome", "Request", "make_executor", "run_job"]
