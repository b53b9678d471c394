"""LocalExecutor: evaluates in the calling process, one policy at a time."""

from __future__ import annotations

from collections import deque

from ..errors import ConfigError
from ..policy import Policy
from ..train import FinetuneConfig
from .base import Job, Outcome, Request, run_job


class LocalExecutor:
    """In-process evaluation. `capacity` is 1: the driver asks one trial, evaluates it, tells it."""

    capacity = 1

    def __init__(self) -> None:
        self._job: Job | None = None
        self._pending: deque[tuple[int, Request]] = deque()

    def start(self, job: Job) -> None:
        self._job = job

    def submit(
        self,
        key: int,
        policy: Policy,
        finetune: FinetuneConfig | None = None,
        *,
        runtime: str | None = None,
        held_out: bool = False,
        probe: bool = False,
        examples: tuple[int, ...] | None = None,
        score_test: bool = False,
    ) -> None:
        if self._job is None:
            raise ConfigError("LocalExecutor.submit before start(job).")
        self._pending.append((key, Request(policy, finetune, runtime, held_out, probe, examples, score_test)))

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if not self._pending or self._job is None:
            return []
        key, request = self._pending.popleft()
        return [run_job(self._job, key, request)]

    def cancel(self) -> list[int]:
        keys = [k for k, _ in self._pending]
        self._pending.clear()
        return keys

    def shutdown(self) -> None:
        self._pending.clear()
        self._job = None
