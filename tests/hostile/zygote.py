"""The hostile corpus's CLI runner: a process that imports autoshrink and torch once, then forks one
child per case (a real subprocess, started in milliseconds). The child runs `autoshrink ARGV` as the
command line would -- in the case's folder, that folder on sys.path as `python -m` puts it, HOME and
TMPDIR pointing at fresh folders the harness inspects afterwards, its address space limited -- with
its stdout and stderr written to files. The parent answers each request (one JSON line on stdin) with
the exit code, the child's peak RSS (wait4's ru_maxrss) and its RSS when it started (the pages it
shares with this process, counted once touched).

Run by tests/hostile/harness.py; not a test module."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
import traceback


def status_kb(field: str) -> int:
    """A /proc/self/status field in kB (VmRSS, VmHWM, VmSize)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(req: dict) -> None:
    """Never returns: runs the case, then os._exit with its exit code (99: the harness itself failed)."""
    code = 99
    try:
        with open(req["stdout"] + ".rss", "w") as fh:  # this child's RSS before the case: its baseline
            fh.write(str(status_kb("VmRSS")))
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for key in [k for k in os.environ if k.startswith("XDG_")]:
            del os.environ[key]
        os.environ.update(HOME=req["home"], TMPDIR=req["tmp"])
        tempfile.tempdir = None
        os.chdir(req["cwd"])
        sys.path.insert(0, req["cwd"])
        sys.dont_write_bytecode = True
        limit = status_kb("VmSize") * 1024 + req["address_space_mb"] * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        module, _, name = req.get("entry", "autoshrink.cli:main").partition(":")
        main = getattr(__import__(module, fromlist=[name]), name)
        try:
            code = main(req["argv"])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # noqa: BLE001 - the case escaped main(): that is what the harness reports
        traceback.print_exc()
        code = 98
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    import torch

    import autoshrink.cli  # noqa: F401 - imported once, before any fork

    torch.set_num_threads(1)  # the parent never computes; each child starts single-threaded
    print(json.dumps({"ready": True, "rss_kb": status_kb("VmRSS")}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(req)
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - t0
        try:
            with open(req["stdout"] + ".rss") as fh:
                start = int(fh.read())
        except (OSError, ValueError):
            start = usage.ru_maxrss  # the child failed before it could say: no growth measured
        reply = {"code": os.waitstatus_to_exitcode(status), "seconds": seconds, "maxrss_kb": usage.ru_maxrss}
        reply["start_kb"] = start
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
