"""The executor interface: evaluate Policies somewhere, hand back Outcomes as they finish.

The search driver owns the study; an executor only turns (key, Policy) into an Outcome. Local and
Ray executors implement the same small interface, so swapping them changes nothing else.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ..evaluate import evaluate, evaluate_and_score_test, evaluate_held_out, evaluate_runtimes
from ..measure import HeldOut, LatencyConfig, Measurement, RuntimeTiming
from ..policy import Policy
from ..task import Task
from ..techniques.calibration import StatsCache
from ..train import FinetuneConfig


@dataclass(frozen=True)
class Job:
    """What every evaluation shares: the model, the task, how to fine-tune and time, and the runtime
    ("float" or "int8", decided once per study) every measurement runs on; `cache` keeps calibration
    statistics of `model` across its evaluations (each worker its own: it is pickled empty)."""

    model: nn.Module
    task: Task
    finetune: FinetuneConfig
    latency: LatencyConfig | None = None
    runtime: str = "float"
    cache: StatsCache = field(default_factory=StatsCache, compare=False, repr=False)


@dataclass(frozen=True)
class Request:
    """One evaluation: a policy, and overrides of the job's fine-tune settings and runtime (the
    baseline and sensitivity rows use steps=0, screening fewer steps, refining more)."""

    policy: Policy
    finetune: FinetuneConfig | None = None
    runtime: str | None = None
    held_out: bool = False  # replay the policy and score it on the task's test_data on `runtime` only
    probe: bool = False  # apply the policy (no fine-tune) and time float against int8 only: RuntimeTiming
    examples: tuple[int, ...] | None = None  # score only these indices of eval_data (the pre-pass's subsample)
    # also score the measured model on the task's test_data (Outcome.held_out), where it has one: a refine
    # trial, whose replay by the held-out stage would repeat its long fine-tune
    score_test: bool = False


@dataclass(frozen=True)
class Outcome:
    """The result of one evaluation: a Measurement (a HeldOut score for a held-out request, a
    RuntimeTiming for a probe), or the reason it failed."""

    key: int
    measurement: Measurement | None
    error: str | None
    seconds: float
    worker: str = "local"
    attempts: int = 1  # > 1 when the worker died and the evaluation was re-run
    held_out: HeldOut | None = None
    timing: RuntimeTiming | None = None

    @property
    def ok(self) -> bool:
        return self.measurement is not None or self.held_out is not None or self.timing is not None


def run_job(job: Job, key: int, request: Request, worker: str = "local") -> Outcome:
    """Evaluate one request; any exception becomes a failed Outcome with its type, message and origin."""
    t0 = time.perf_counter()
    try:
        if request.probe:
            timing = evaluate_runtimes(
                job.model, job.task, request.policy, latency=job.latency, calibration_cache=job.cache
            )
            return Outcome(key, None, None, time.perf_counter() - t0, worker, timing=timing)
        if request.held_out:
            score = evaluate_held_out(
                job.model,
                job.task,
                request.policy,
                finetune_config=request.finetune or job.finetune,
                runtime=request.runtime or job.runtime,
                calibration_cache=job.cache,
            )
            return Outcome(key, None, None, time.perf_counter() - t0, worker, held_out=score)
        settings = {
            "finetune_config": request.finetune or job.finetune,
            "latency": job.latency,
            "runtime": request.runtime or job.runtime,
            "calibration_cache": job.cache,
        }
        if request.score_test and job.task.test_data is not None:
            m, score = evaluate_and_score_test(job.model, job.task, request.policy, **settings)
            return Outcome(key, m, None, time.perf_counter() - t0, worker, held_out=score)
        m = evaluate(job.model, job.task, request.policy, examples=request.examples, **settings)
        return Outcome(key, m, None, time.perf_counter() - t0, worker)
    except Exception as exc:  # noqa: BLE001 - a failed candidate is recorded with its reason, never hidden
        frames = traceback.extract_tb(exc.__traceback__)
        origin = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        text = " ".join(str(exc).split())
        if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
            exc.__traceback__ = None  # the frames hold the candidate's tensors: free them for the next one
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            text = f"{text[:300]}; {OOM_FIX}"
        return Outcome(key, None, f"{type(exc).__name__}: {text}{origin}", time.perf_counter() - t0, worker)


OOM_FIX = (
    "this candidate ran out of memory and the search went on. Fix: a smaller Task.batch_size, fewer "
    "candidates per device (RayExecutor gpus_per_actor / cpus_per_actor), or more memory"
)


class Executor(Protocol):
    """Evaluates policies; the driver keeps up to `capacity` of them pending."""

    capacity: int

    def start(self, job: Job) -> None:
        """Ship the job (model, task, settings) once, before any submit."""

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
        """Queue one evaluation under `key` (`finetune` and `runtime` override the job's; `held_out`:
        replay and score on the held-out test_data only; `probe`: time float against int8 only;
        `examples`: score only these indices of eval_data; `score_test`: also score the same model on
        test_data)."""

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        """Block until at least one pending evaluation finished (or timeout); return those finished."""

    def cancel(self) -> list[int]:
        """Drop every pending evaluation; return their keys."""

    def shutdown(self) -> None:
        """Release workers and resources."""
