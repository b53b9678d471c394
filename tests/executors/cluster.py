"""A real two-node Ray cluster on one machine, for tests: the head at 127.0.0.2, a second node at 127.0.0.3.

Ray rewrites 127.0.0.1 to the machine's network address, so the nodes use other loopback addresses.
Each node claims 1 CPU, no GPU and little memory, keeps its files in its own short temp dir, and
runs with RAY_AUTH_MODE=disabled (drivers need the same in their environment: `cluster.env`). Every
process the cluster started is stopped by PID afterwards -- never `ray stop`, which kills every Ray
process on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

HEAD, SECOND = "127.0.0.2", "127.0.0.3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HEAD, 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """PIDs below `pid` (walks /proc; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def with_arg(text: str) -> set[int]:
    """PIDs whose command line contains `text`."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    out.add(int(entry))
            except OSError:
                continue
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class LoopbackCluster:
    """`with LoopbackCluster() as c:` starts both nodes (c.address is the head's "host:port"); leaving
    the block stops them by PID and sets c.leftover to the PIDs still alive (a test asserts it empty)."""

    def __init__(self, start_timeout: float = 60.0) -> None:
        self.port = free_port()
        self.address = f"{HEAD}:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.start_timeout = start_timeout
        self.temp = ""
        self.started: list[subprocess.Popen[bytes]] = []
        self.leftover: list[int] = []

    def _ray_start(self, *args: str) -> subprocess.Popen[bytes]:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        common = [
            "--num-cpus=1",
            "--num-gpus=0",
            "--memory=1000000000",
            "--object-store-memory=150000000",
            f"--temp-dir={self.temp}",
            "--block",
        ]
        proc = subprocess.Popen(
            [ray_bin, "start", *args, *common],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started.append(proc)
        return proc

    def __enter__(self) -> LoopbackCluster:
        self.temp = tempfile.mkdtemp(prefix="ashray", dir="/tmp")  # short: Ray's socket paths are length-limited
        try:
            self._ray_start("--head", f"--node-ip-address={HEAD}", f"--port={self.port}", "--include-dashboard=false")
            deadline = time.time() + self.start_timeout
            while time.time() < deadline:  # the head is up when its GCS port accepts connections
                with socket.socket() as s:
                    if s.connect_ex((HEAD, self.port)) == 0:
                        break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"the Ray head did not come up in {self.start_timeout:g} s")
            self._ray_start(f"--address={self.address}", f"--node-ip-address={SECOND}")
            self._wait_for_nodes(2, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_nodes(self, n: int, deadline: float) -> None:
        """Until the head lists `n` live nodes (asked by a short-lived driver: the test process may hold
        a Ray of its own)."""
        left = max(deadline - time.time(), 1.0)
        probe = subprocess.run(
            [sys.executable, "-c", _NODES_UP, self.address, str(n), str(left)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=left + 30,
        )
        if probe.returncode != 0:
            raise RuntimeError(
                f"the Ray cluster did not list {n} live nodes in {self.start_timeout:g} s: {probe.stderr[-800:]}"
            )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM the `ray start` processes, wait, then SIGKILL anything of ours still alive, by PID."""
        pids: set[int] = set()
        for p in self.started:
            pids |= descendants(p.pid) | {p.pid}
        if self.temp:
            pids |= with_arg(self.temp)  # daemons re-parented away from `ray start` still name our temp dir
        for p in self.started:
            p.send_signal(signal.SIGTERM)
        for p in self.started:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        deadline = time.time() + 20
        while time.time() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.5)
        for pid in pids:  # anything the blocked `ray start` left behind, by PID
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 5
        while time.time() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.2)
        self.started = []
        self.leftover = sorted(pid for pid in pids if alive(pid))


_NODES_UP = """
import sys, time, ray
address, n, left = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.time() + left
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
while sum(node["Alive"] for node in ray.nodes()) < n:
    if time.time() > deadline:
        sys.exit(f"live nodes: {[node['NodeManagerAddress'] for node in ray.nodes() if node['Alive']]}")
    time.sleep(0.2)
"""
