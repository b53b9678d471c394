"""RayExecutor: the driver side -- actors started, trials dispatched and collected, dead actors replaced."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import ray
from ray.exceptions import RayActorError, RuntimeEnvSetupError

from ...errors import ConfigError, ExecutorUnavailable, describe
from ...policy import Policy
from ...train import FinetuneConfig
from ..base import Job, Outcome, Request
from ..runtime_env import build_runtime_env, one_line, start_failure
from .actors import NodeTimingLock, RemoteWorker, lock_name
from .join import check_reachable, upload_local_paths
from .resources import actor_count

# Ray rewrites 127.0.0.1 to the machine's network address; other loopback addresses are kept.
LOOPBACK = "127.0.0.2"
POLL_S = 0.2  # the driver waits for results in polls this long, so Ctrl-C is seen promptly


@dataclass
class _Slot:
    handle: Any
    busy_key: int | None = None
    ref: Any = None
    info: dict[str, Any] | None = None


class RayExecutor:
    """Evaluate candidates on Ray actors.

    address: None starts a private local Ray instance (loopback only, stopped at the end);
        "host:port" joins an existing cluster (see README: RAY_AUTH_MODE). actors: how many;
        default as many as the cluster's CPUs (and GPUs) fit. cpus_per_actor: CPUs (torch threads)
        each holds. gpus_per_actor: 0, or a fraction (0.25 = four actors share a GPU).
        max_retries: re-runs of a trial whose actor died. init_kwargs: extra ray.init arguments.
        runtime_env: a Ray runtime_env for the actors; working_dir (a directory) and py_modules (modules,
        package directories, .py/.whl files) are shortcuts merged into it: they ship the modules that
        define the model and task to workers that lack them. When this executor starts or joins Ray the
        runtime_env goes to ray.init (the job's environment); when Ray was initialized before, to each
        actor, with local paths uploaded as ray.init would.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        actors: int | None = None,
        cpus_per_actor: float = 1,
        gpus_per_actor: float = 0,
        max_retries: int = 2,
        init_kwargs: dict[str, Any] | None = None,
        lock_timings: bool = True,
        runtime_env: Mapping[str, Any] | None = None,
        working_dir: str | os.PathLike[str] | None = None,
        py_modules: Sequence[str | os.PathLike[str] | ModuleType] | None = None,
    ) -> None:
        if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
            raise ConfigError(f"RayExecutor.actors: got {actors!r}; use a positive integer or None (as many as fit).")
        if (
            isinstance(cpus_per_actor, bool)
            or not isinstance(cpus_per_actor, (int, float))
            or not 0 < cpus_per_actor < 1e6
        ):  # NaN and inf fail this too
            raise ConfigError(f"RayExecutor.cpus_per_actor: got {cpus_per_actor!r}; use a number > 0.")
        if (
            isinstance(gpus_per_actor, bool)
            or not isinstance(gpus_per_actor, (int, float))
            or not 0 <= gpus_per_actor < 1e6
            or (gpus_per_actor > 1 and gpus_per_actor % 1)
        ):
            raise ConfigError(
                f"RayExecutor.gpus_per_actor: got {gpus_per_actor!r}; use 0, a fraction in (0, 1], "
                "or a whole number of GPUs."
            )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"RayExecutor.max_retries: got {max_retries!r}; use an integer >= 0.")
        self.address = address
        self.requested_actors = actors
        self.cpus_per_actor = cpus_per_actor
        self.gpus_per_actor = gpus_per_actor
        self.max_retries = max_retries
        self.init_kwargs = dict(init_kwargs or {})
        self.runtime_env = build_runtime_env(runtime_env, working_dir, py_modules)
        if self.runtime_env and "runtime_env" in self.init_kwargs:
            given = describe(self.init_kwargs["runtime_env"])
            raise ConfigError(
                f"RayExecutor.init_kwargs: holds a runtime_env ({given}) and runtime_env/working_dir/"
                "py_modules are given too; give it once, as runtime_env=..."
            )
        self._actor_env: dict[str, Any] | None = None  # the actors' runtime_env (URIs), when Ray was up before us
        self.lock_timings = lock_timings
        self.capacity = actors or 1
        self._started_ray = False
        self._slots: list[_Slot] = []
        self._locks: list[Any] = []
        self._queue: deque[tuple[int, Request]] = deque()
        self._work: dict[int, Request] = {}
        self._retries: dict[int, int] = {}
        self._job_ref: Any = None
        self.dispatch_s = 0.0  # driver time spent submitting and collecting (for overhead figures)
        self._interrupted = False
        self._prev_sigint: Any = None

    # ------------------------------------------------------------------ lifecycle
    def check(self) -> None:
        """Before a search creates anything: the Ray head at `address` answers (check_reachable)."""
        if self.address and not ray.is_initialized():
            check_reachable(self.address)

    def _init_ray(self) -> None:
        if ray.is_initialized():
            # The job's runtime_env was fixed by whoever called ray.init: ours goes to each actor instead.
            self._actor_env = upload_local_paths(self.runtime_env) if self.runtime_env else None
            return
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
        if self.address:
            check_reachable(self.address)
            kwargs["address"] = self.address
        else:  # a private instance: loopback only, no dashboard, no notices about cluster-wide settings
            kwargs.update(include_dashboard=False, _node_ip_address=LOOPBACK, logging_level=logging.ERROR)
        if self.runtime_env:
            kwargs["runtime_env"] = self.runtime_env  # ray.init uploads local paths; every actor of the job gets it
        kwargs.update(self.init_kwargs)
        try:
            ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001 - say what could not be reached and how to fix it
            with contextlib.suppress(Exception):
                ray.shutdown()  # a failed init can leave the local node it started running (seen: a failed upload)
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            shipping = f" with runtime_env {describe(self.runtime_env, 200)}" if self.runtime_env else ""
            hint = (
                " If the cluster uses token auth (Ray 2.60 default), set RAY_AUTH_MODE=token and put its token in "
                "~/.ray/auth_token, or start the head with RAY_AUTH_MODE=disabled."
                if self.address
                else ""
            )
            raise ExecutorUnavailable(
                f"cannot start or join {where}{shipping}: {type(exc).__name__}: {one_line(str(exc))}.{hint}"
            ) from None
        self._started_ray = True
        self._actor_env = None

    def start(self, job: Job) -> None:
        self._init_ray()
        self._watch_sigint()
        n = actor_count(self.requested_actors, self.cpus_per_actor, self.gpus_per_actor)
        self.capacity = n
        if self.lock_timings:
            for node in ray.nodes():
                if node.get("Alive"):
                    strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                    self._locks.append(
                        NodeTimingLock.options(
                            name=lock_name(node["NodeID"]), get_if_exists=True, scheduling_strategy=strategy
                        ).remote()
                    )
        self._job_ref = ray.put(job)
        self._slots = [_Slot(self._new_actor()) for _ in range(n)]
        try:
            infos = ray.get([s.handle.info.remote() for s in self._slots])
        except (RayActorError, RuntimeEnvSetupError) as exc:
            self.shutdown()
            raise self._start_error(exc) from None
        for slot, info in zip(self._slots, infos):
            slot.info = info

    def _start_error(self, exc: Exception) -> ConfigError:
        """The one error a failed actor start becomes (see runtime_env.start_failure)."""
        text = str(getattr(exc, "error_message", None) or getattr(exc, "error_msg", None) or exc)
        env = self.runtime_env or (ray.get_runtime_context().runtime_env if ray.is_initialized() else None)
        return start_failure(
            text or type(exc).__name__,
            isinstance(exc, RuntimeEnvSetupError),
            dict(env) if env else None,
            shipping=bool(self.runtime_env),
        )

    def _new_actor(self) -> Any:
        env = {"runtime_env": self._actor_env} if self._actor_env else {}
        return RemoteWorker.options(
            num_cpus=self.cpus_per_actor, num_gpus=self.gpus_per_actor, max_restarts=0, max_task_retries=0, **env
        ).remote(self._job_ref, self.lock_timings)

    @property
    def workers(self) -> list[dict[str, Any]]:
        """Where the actors run (worker name, node id, device, threads, pid)."""
        return [s.info for s in self._slots if s.info]

    def shutdown(self) -> None:
        self._unwatch_sigint()
        for s in self._slots:
            with contextlib.suppress(Exception):
                ray.kill(s.handle)
        for lock in self._locks:
            with contextlib.suppress(Exception):
                ray.kill(lock)
        self._slots, self._locks = [], []
        self._queue.clear()
        self._work.clear()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False
        self._actor_env = None

    # ------------------------------------------------------------------ work
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
        if not self._slots:
            raise ConfigError("RayExecutor.submit before start(job).")
        request = Request(policy, finetune, runtime, held_out, probe, examples, score_test)
        self._work[key] = request
        self._queue.append((key, request))
        self._dispatch()

    def _dispatch(self) -> None:
        t0 = time.perf_counter()
        for slot in self._slots:
            if not self._queue:
                break
            if slot.busy_key is None:
                key, request = self._queue.popleft()
                slot.busy_key, slot.ref = key, slot.handle.evaluate.remote(key, request)
        self.dispatch_s += time.perf_counter() - t0

    def _on_sigint(self, signum: int, frame: Any) -> None:
        # A KeyboardInterrupt raised while the main thread is inside Ray's C++ wait can be lost;
        # note it here and raise it from Python between short waits instead.
        self._interrupted = True

    def _watch_sigint(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._prev_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _unwatch_sigint(self) -> None:
        if self._prev_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._prev_sigint)
        self._prev_sigint = None

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        busy = {s.ref: s for s in self._slots if s.busy_key is not None}
        if not busy:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=POLL_S)
            if self._interrupted:
                self._interrupted = False
                raise KeyboardInterrupt
            if ready or (deadline is not None and time.monotonic() >= deadline):
                break
        t0 = time.perf_counter()
        done: list[Outcome] = []
        for ref in ready:
            slot = busy[ref]
            key = slot.busy_key
            slot.busy_key, slot.ref = None, None
            try:
                outcome: Outcome | None = ray.get(ref)
                deaths = self._retries.get(key, 0)
                outcome = dataclasses.replace(outcome, attempts=deaths + 1)
            except RayActorError as exc:
                outcome = self._actor_died(slot, key, exc)  # None: re-queued for another attempt
            if outcome is not None:
                self._work.pop(key, None)
                self._retries.pop(key, None)
                done.append(outcome)
        self.dispatch_s += time.perf_counter() - t0
        self._dispatch()
        return done

    def _actor_died(self, slot: _Slot, key: int, exc: Exception) -> Outcome | None:
        """Replace the dead actor; re-queue its trial unless it has used up its retries."""
        who = slot.info["worker"] if slot.info else "an actor"
        with contextlib.suppress(Exception):
            ray.kill(slot.handle)
        slot.handle = self._new_actor()
        slot.info = None
        tries = self._retries.get(key, 0) + 1
        self._retries[key] = tries
        reason = str(getattr(exc, "error_msg", "") or type(exc).__name__).splitlines()[0]
        if tries > self.max_retries:
            return Outcome(
                key,
                None,
                f"WorkerDied: the Ray actor ({who}) died {tries} time(s) evaluating this trial; "
                f"last: {type(exc).__name__}: {reason}",
                0.0,
                who,
                attempts=tries,
            )
        self._queue.appendleft((key, self._work[key]))
        return None

    def in_flight(self) -> dict[int, dict[str, Any]]:
        """Trial key -> worker info (name, node, device, pid) for evaluations running now."""
        return {s.busy_key: dict(s.info or {}) for s in self._slots if s.busy_key is not None}

    def cancel(self) -> list[int]:
        keys = [k for k, _ in self._queue] + [s.busy_key for s in self._slots if s.busy_key is not None]
        self._queue.clear()
        for s in self._slots:
            if s.ref is not None:
                with contextlib.suppress(Exception):
                    ray.cancel(s.ref)
            s.busy_key, s.ref = None, None
        return keys
