"""Joining a Ray cluster from a driver: whether the head answers at all (ray.init retries an absent
one for ever), and shipping local working_dir / py_modules when Ray was initialized before us."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import ray

from ...errors import ExecutorUnavailable, describe
from ..runtime_env import one_line

CONNECT_S = 10.0  # how long a Ray head's port may take to accept a connection before it counts as absent


def check_reachable(address: str) -> None:
    """ExecutorUnavailable unless the Ray head's port at `address` accepts a TCP connection within
    CONNECT_S: ray.init itself retries an absent head for ever. "auto" and ray:// client addresses
    are checked the same way once resolved ("auto" is left to Ray)."""
    if address == "auto" or address.startswith("local"):
        return
    raw = address.removeprefix("ray://")
    try:
        from ray._private.services import canonicalize_bootstrap_address

        raw = canonicalize_bootstrap_address(raw) or raw  # as ray.init will: 127.0.0.1 -> this machine's address
    except Exception:  # noqa: BLE001, S110 - a private helper that moved: probe the address as given
        pass
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorUnavailable(
            f"RayExecutor.address {address!r}: not host:port; give the Ray head's, e.g. 10.0.0.5:6379."
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except OSError as exc:
        why = f"no answer within {CONNECT_S:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ExecutorUnavailable(
            f"RayExecutor.address {address!r}: no Ray head answers at {host}:{port} ({why}); "
            "start it (ray start --head --port PORT) or fix the address."
        ) from None


def upload_local_paths(env: dict[str, Any]) -> dict[str, Any]:
    """The runtime_env with local working_dir / py_modules paths uploaded to the cluster as gcs:// URIs.

    An actor's runtime_env takes URIs only (Ray uploads local paths for ray.init's job runtime_env
    alone), so when Ray was initialized before this executor this does that upload with the helpers
    ray.init itself calls (private in Ray 2.60; any failure becomes one ExecutorUnavailable).
    """
    try:
        import inspect

        from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
        from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

        scratch = ray._private.worker.global_worker.node.get_runtime_env_dir_path()
        out = dict(env)
        for upload in (upload_py_modules_if_needed, upload_working_dir_if_needed):
            kwargs: dict[str, Any] = {"scratch_dir": scratch, "logger": logging.getLogger(__name__)}
            if "include_gitignore" in inspect.signature(upload).parameters:  # as ray.init decides it
                kwargs["include_gitignore"] = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
            out = upload(out, **kwargs)
        out.pop("excludes", None)  # used by the upload; Ray drops it there too
        return out
    except Exception as exc:  # noqa: BLE001 - one clear error, not Ray's internals
        raise ExecutorUnavailable(
            f"RayExecutor: cannot ship runtime_env {describe(env, 200)} to the running Ray "
            f"({type(exc).__name__}: {one_line(str(exc))}); fix the paths, or let the "
            "executor start Ray (no ray.init before it) so ray.init ships them."
        ) from None
