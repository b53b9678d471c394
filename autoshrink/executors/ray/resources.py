"""How many actors a driver starts: as many as asked, or as many as the cluster's free CPUs (and GPUs)
hold; refused clearly where none would ever be placed."""

from __future__ import annotations

import time

import ray

from ...errors import ExecutorUnavailable


def actor_count(requested: int | None, cpus_per_actor: float, gpus_per_actor: float, settle_s: float = 10.0) -> int:
    """How many actors: `actors`, or as many as the cluster's free CPUs (and GPUs) fit -- other drivers'
    actors hold theirs. Free resources are polled for up to `settle_s` (a restarted driver's old actors
    take a moment to be released); refused clearly rather than leaving actors waiting forever."""
    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    if gpus_per_actor and gpus <= 0:
        raise ExecutorUnavailable(
            f"RayExecutor: gpus_per_actor={gpus_per_actor} but the Ray cluster has no GPU "
            "(it would wait forever); use gpus_per_actor=0 or add GPU nodes."
        )
    total = fit(cpus, gpus, cpus_per_actor, gpus_per_actor)
    if requested is None and total < 1:
        raise ExecutorUnavailable(
            f"RayExecutor: no actor fits (the cluster has {cpus:g} CPU and {gpus:g} GPU; each actor "
            f"needs {cpus_per_actor:g} CPU and {gpus_per_actor:g} GPU)."
        )
    if requested is not None and requested > total:
        n = requested
        raise ExecutorUnavailable(
            f"RayExecutor: {n} actors need {n * cpus_per_actor:g} CPU and "
            f"{n * gpus_per_actor:g} GPU, but the cluster has {cpus:g} CPU and {gpus:g} GPU; "
            f"ask for fewer actors (at most {total})."
        )
    want = requested or 1
    deadline = time.monotonic() + settle_s
    while True:
        free = ray.available_resources()
        room = fit(free.get("CPU", 0.0), free.get("GPU", 0.0), cpus_per_actor, gpus_per_actor)
        if room >= want or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if room < want:
        free_cpus, free_gpus = free.get("CPU", 0.0), free.get("GPU", 0.0)
        raise ExecutorUnavailable(
            f"RayExecutor: the cluster's {cpus:g} CPU and {gpus:g} GPU are held by other jobs (another search "
            f"driver?); {free_cpus:g} CPU and {free_gpus:g} GPU are free, too few for {want} actor(s). Fix: give "
            "each driver fewer actors (actors=, executor_args.actors, --ray-actors), or add nodes."
        )
    return requested or room


def fit(cpus: float, gpus: float, cpus_per_actor: float, gpus_per_actor: float) -> int:
    """Actors that `cpus` and `gpus` hold."""
    n = int(cpus // cpus_per_actor)
    if gpus_per_actor:
        n = min(n, int(round(gpus / gpus_per_actor, 6)))
    return n
