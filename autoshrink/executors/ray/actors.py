"""The Ray actors: the worker that holds the job and evaluates policies, and the per-node timing lock
that lets one actor of a node time at a time (its lease expires, so a dead holder cannot block)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import ray

from ..base import Job, Outcome, Request, run_job

LOCK_LEASE_S = 120.0  # a timing never holds the node lock longer; a dead holder frees it after this


@ray.remote(num_cpus=0)
class NodeTimingLock:
    """One per node: lets one actor time at a time. Leases expire, so a dead holder cannot block."""

    def __init__(self) -> None:
        self._holder: str | None = None
        self._expires = 0.0

    async def acquire(self, holder: str, lease_s: float = LOCK_LEASE_S) -> None:
        import asyncio

        while self._holder is not None and self._holder != holder and time.monotonic() < self._expires:
            await asyncio.sleep(0.002)
        self._holder, self._expires = holder, time.monotonic() + lease_s

    async def release(self, holder: str) -> None:
        if self._holder == holder:
            self._holder = None


def lock_name(node_id: str) -> str:
    return f"autoshrink-timing-lock-{node_id}"


class _Worker:
    """Actor body: holds the job; evaluates policies (see RayExecutor for the resources)."""

    def __init__(self, job: Job, use_lock: bool) -> None:
        import torch

        from ...measure.latency import set_timing_guard

        self.job = job
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        address = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == self.node_id), "?")
        self.name = f"{address}:{os.getpid()}"  # the node's own address (127.0.0.x on a loopback cluster)
        gpu_ids = ray.get_gpu_ids()
        self.device = f"cuda ({len(gpu_ids)} of GPU ids {gpu_ids})" if gpu_ids else "cpu"
        self.threads = torch.get_num_threads()
        self._warm_up()
        if use_lock:
            lock = ray.get_actor(lock_name(self.node_id))
            me = self.name

            @contextlib.contextmanager
            def guard() -> Iterator[None]:
                ray.get(lock.acquire.remote(me))
                try:
                    yield
                finally:
                    ray.get(lock.release.remote(me))

            set_timing_guard(guard)

    def _warm_up(self) -> None:
        """Pay one-off costs at construction, in parallel across actors, not in the first trial:
        the MAC counter's first use imports torch._dynamo (~1 s) and the process timing warm-up."""
        from ...measure.latency import LatencyConfig, time_forward
        from ...measure.macs import count_macs

        x = self.job.task.example_input
        device = self.job.task.torch_device
        model = self.job.model.to(device).eval()
        count_macs(model, x, device)
        time_forward(model, x, device, LatencyConfig(warmup=1, min_repeats=1, min_seconds=0.0))

    def info(self) -> dict[str, Any]:
        return {
            "worker": self.name,
            "node_id": self.node_id,
            "device": self.device,
            "threads": self.threads,
            "pid": os.getpid(),
        }

    def evaluate(self, key: int, request: Request) -> Outcome:
        return run_job(self.job, key, request, worker=self.name)


RemoteWorker = ray.remote(_Worker)
