"""RayExecutor: long-lived Ray actors evaluate candidates in parallel, on one machine or a cluster.

The model, teacher and datasets travel to the object store once (one `ray.put` of the Job); each
actor fetches them when it starts. The driver keeps up to `actors` trials in flight and takes
results as they finish. An exception inside an evaluation fails that trial only (the actor lives
on); an actor that dies is replaced and its trial re-run up to `max_retries` times, then failed
with the reason. Latency timings take a per-node lock, so concurrent actors on one machine never
time at the same moment. A runtime_env (working_dir, py_modules) ships the user's own modules to
workers that lack them (runtime_env.py checks it). This package is the only place that imports Ray.
"""

from __future__ import annotations

from .executor import RayExecutor

__all__ = ["RayExecutor"]
