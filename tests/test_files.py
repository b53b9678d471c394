"""write_atomically: the whole file or the old one, never a partial or temporary file; a full disk,
a size limit or an interrupt is one error naming the file, the cause and the fix."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoshrink import files
from autoshrink.errors import PackError, RecipeError
from autoshrink.files import write_atomically

ROOT = Path(__file__).resolve().parents[1]


def test_writes_replaces_and_leaves_only_the_file(tmp_path) -> None:
    target = tmp_path / "r.yaml"
    assert write_atomically(target, "héllo\n", "recipe", RecipeError) == 7
    assert target.read_text() == "héllo\n"
    assert write_atomically(target, b"\x00" * (3 * files.CHUNK + 5), "recipe", RecipeError) == 3 * files.CHUNK + 5
    assert target.stat().st_size == 3 * files.CHUNK + 5 and os.listdir(tmp_path) == ["r.yaml"]


def _full_after(limit: int):  # noqa: ANN202
    """os.write that takes `limit` bytes in all, then fails as a full disk does."""
    left = [limit]
    real = os.write

    def write(fd: int, data: bytes) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(data[: left[0]]))
        left[0] -= n
        return n

    return write


def test_a_full_disk_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch) -> None:
    target = tmp_path / "m.ashz"
    target.write_bytes(b"old")
    monkeypatch.setattr(files.os, "write", _full_after(1000))
    with pytest.raises(PackError) as caught:
        write_atomically(target, b"x" * 5000, "packed model", PackError)
    assert str(caught.value) == (
        f"{target}: cannot write the packed model (No space left on device). Fix: the disk is full: free space or "
        "write to another disk."
    )
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.ashz"]


def test_an_interrupt_mid_write_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    def interrupted(fd: int, data: bytes) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "r.yaml", "text", "recipe", RecipeError)
    assert os.listdir(tmp_path) == []


def test_a_real_size_limit_from_the_kernel(tmp_path) -> None:
    """ulimit -f in a child: the kernel refuses the write (EFBIG); save_packed says so and leaves nothing."""
    code = (
        "import resource, signal, sys, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import autoshrink as ash\n"
        "model = torch.nn.Linear(256, 256)\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        f"    ash.save_packed(model, {str(tmp_path / 'm.ashz')!r})\n"
        "except ash.PackError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out == (
        f"{tmp_path / 'm.ashz'}: cannot write the packed model (File too large). Fix: the file is larger than this "
        "process may write (ulimit -f): raise the limit or write elsewhere.\n"
    )
    assert os.listdir(tmp_path) == []
