"""Atomic file writes for every artifact autoshrink writes (packed models, recipes, reports, ONNX): a
temporary file beside the target, written in full and flushed to the disk, then renamed over it. A
failure -- a full disk, a folder that is not writable -- leaves neither a partial file nor the
temporary one, and is one error naming the file, the cause and the fix."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from .errors import AutoshrinkError

CHUNK = 1 << 20

FIXES = {
    errno.ENOSPC: "the disk is full: free space or write to another disk",
    errno.EDQUOT: "the disk quota is used up: free space or write to another disk",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f): raise the limit or write elsewhere",
    errno.EACCES: "the folder is not writable: fix its permissions or write elsewhere",
    errno.EPERM: "the folder is not writable: fix its permissions or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENOENT: "the folder does not exist: create it or write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder: write elsewhere",
}


def write_atomically(path: str | os.PathLike[str], data: bytes | str, what: str, error: type[AutoshrinkError]) -> int:
    """Write `data` (text as UTF-8) to `path` atomically; return the bytes written. On failure raise
    `error` ("<path>: cannot write the <what> (<cause>); Fix: ...") with nothing left behind."""
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    done = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view[:CHUNK]) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        done = True
    except OSError as exc:
        fix = FIXES.get(exc.errno or 0, "check the path and the disk")
        raise error(f"{target}: cannot write the {what} ({exc.strerror or exc}). Fix: {fix}.") from None
    finally:
        if not done:  # an error or an interrupt: no partial file left
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return len(payload)
