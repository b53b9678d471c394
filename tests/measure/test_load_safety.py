"""Loading a hostile .ashz: no import, no call of the file's choosing, no memory bomb, no hang, and
every failure a PackError -- each route checked with a marker file that must stay absent."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import sys
import time
import tracemalloc
import uuid

import pytest
import torch
from torch import nn

from autoshrink.errors import PackError
from autoshrink.measure.packing import framing, limits, load_packed, save_packed, skeleton

MODULE_SOURCE = """
import pathlib
from torch import nn
pathlib.Path({marker!r}).write_text("imported")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)
"""


def _file(header: bytes, skel: bytes, payload: bytes = b"") -> bytes:
    head, sk = framing.deflate(header), framing.deflate(skel)
    return b"ASHZ\x02" + framing.varint(len(head)) + head + framing.varint(len(sk)) + sk + payload


def _user_module(tmp_path, monkeypatch) -> tuple[str, object]:
    """A module in a temp folder whose import writes a marker file; returns its name and the marker."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / f"{name}.imported"
    (tmp_path / f"{name}.py").write_text(MODULE_SOURCE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


def _bounded(fn, *, seconds: float = 5.0, megabytes: float = 64.0):
    """Run fn() and return what it raised; fail if it took longer or traced more memory than given."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    except PackError as exc:
        raised = exc
    else:
        raised = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < seconds
    assert peak < megabytes * 2**20, f"{peak / 2**20:.0f} MiB"
    assert raised is not None, "expected a PackError"
    return raised


def test_a_module_the_caller_did_not_import_is_never_imported(tmp_path, monkeypatch) -> None:
    name, marker = _user_module(tmp_path, monkeypatch)
    module = __import__(name)
    path = tmp_path / "net.ashz"
    model = module.Net()
    save_packed(model, path)
    marker.unlink()
    monkeypatch.delitem(sys.modules, name)
    with pytest.raises(
        PackError,
        match=rf"refers to {name}\.Net, but module {name} is not imported; loading never "
        rf"imports a module by itself: import it first, or pass allow=\['{name}'\]",
    ):
        load_packed(path)
    assert not marker.exists() and name not in sys.modules
    back = load_packed(path, allow=[name])  # the caller allows it: imported, and the model loads
    assert marker.exists() and type(back).__name__ == "Net"
    x = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_allow_names_a_package_and_its_submodules_only(tmp_path, monkeypatch) -> None:
    name, marker = _user_module(tmp_path, monkeypatch)
    skel = f"c{name}\nNet\n.".encode()
    with pytest.raises(PackError, match="is not imported"):
        load_packed(_write(tmp_path, _file(b"[]", skel)), allow=[name[:-1], f"{name}.sub"])
    assert not marker.exists()


def _write(tmp_path, data: bytes):
    path = tmp_path / f"{uuid.uuid4().hex[:6]}.ashz"
    path.write_bytes(data)
    return path


def test_unittest_main_is_not_imported_and_system_exit_never_escapes(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_user.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    sys.modules.pop("unittest.__main__", None)
    with pytest.raises(PackError, match="module unittest.__main__ is not imported"):
        load_packed(_write(tmp_path, _file(b"[]", b"cunittest.__main__\nmain\n.")))
    assert not (tmp_path / "ran").exists() and "unittest.__main__" not in sys.modules


class Quitter(nn.Module):
    """A module whose state restore raises SystemExit once armed (a hostile or buggy class already imported)."""

    armed = False

    def __setstate__(self, state):
        if Quitter.armed:
            raise SystemExit(3)
        super().__setstate__(state)


def test_base_exceptions_while_loading_become_pack_errors(tmp_path, monkeypatch) -> None:
    path = tmp_path / "q.ashz"
    save_packed(Quitter(), path)
    monkeypatch.setattr(Quitter, "armed", True)
    with pytest.raises(PackError, match=r"q\.ashz: the file is truncated or corrupt \(loading raised SystemExit: 3\)"):
        load_packed(path)


def test_a_module_getattr_is_never_run(tmp_path, monkeypatch) -> None:
    name = f"lazy_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "getattr-ran"
    (tmp_path / f"{name}.py").write_text(
        f"import pathlib\nfrom torch import nn\n\ndef __getattr__(attr):\n"
        f"    pathlib.Path({str(marker)!r}).write_text(attr)\n    return nn.Linear\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__(name)
    with pytest.raises(PackError, match=rf"refers to {name}\.Anything, which autoshrink does not load"):
        load_packed(_write(tmp_path, _file(b"[]", f"c{name}\nAnything\n.".encode())))
    assert not marker.exists()


@pytest.mark.parametrize(
    "skel, pattern",
    [
        (b"\x80\x02ctorch.nn\nLinear\nJ\xa0\x86\x01\x00J\xa0\x86\x01\x00\x86R.", "calls Linear with arguments"),
        (b"\x80\x02ctorch.nn\nLinear\n)\x81.", "uses pickle's NEWOBJ"),
        (b"\x80\x02ccollections\nOrderedDict\n)R}b.", "uses pickle's BUILD"),
        (b"\x80\x02ctorch\nSize\ncbuiltins\nrange\nJ\x00\x00\x00\x7f\x85R\x85R.", "calls Size with arguments"),
        (b"\x80\x02cbuiltins\nbytes\nJ\x00\x00\x00\x7f\x85R.", r"refers to builtins\.bytes"),
        (b"\x80\x02cbuiltins\nset\ncbuiltins\nrange\nJ\x00\x00\x00\x7f\x85R\x85R.", "calls set with arguments"),
    ],
    ids=["linear-constructor", "newobj", "build", "size-of-range", "bytes", "set-of-range"],
)
def test_no_call_of_the_files_choosing(tmp_path, skel, pattern) -> None:
    err = _bounded(lambda: load_packed(_write(tmp_path, _file(b"[]", skel))))
    assert __import__("re").search(pattern, str(err)), str(err)


def test_a_header_that_inflates_to_gigabytes_is_refused_early(tmp_path) -> None:
    path = _write(tmp_path, _file(b"[" + b" " * (limits.MAX_HEADER_BYTES + 10) + b"]", b"."))
    err = _bounded(lambda: load_packed(path), megabytes=2 * limits.MAX_HEADER_BYTES / 2**20 + 16)  # to the cap
    assert f"inflates to more than {limits.MAX_HEADER_BYTES:,} bytes" in str(err)


def test_a_huge_tensor_coded_in_a_few_bytes_is_refused_before_allocation(tmp_path) -> None:
    header = json.dumps([[[1 << 36], "float32", 0, 0, 0, 0, 0, [3]]]).encode()
    err = _bounded(lambda: load_packed(_write(tmp_path, _file(header, b".", b"abc"))))
    assert f"declares {(1 << 38):,} bytes of tensors, over the {limits.MAX_LOADED_BYTES:,}-byte limit" in str(err)
    assert "pass max_bytes=274877906944" in str(err)


def test_max_bytes_is_the_callers_limit(tmp_path) -> None:
    path = tmp_path / "m.ashz"
    save_packed(nn.Linear(100, 10), path)  # 4,040 bytes of float32
    with pytest.raises(PackError, match="declares 4,040 bytes of tensors, over the 4,000-byte limit"):
        load_packed(path, max_bytes=4000)
    assert isinstance(load_packed(path, max_bytes=4040), nn.Linear)


def _file_of(model: nn.Module, monkeypatch) -> bytes:
    """A file whose skeleton is `model` as the packer pickles it (no tensors), without interning, whose
    walk would follow every path: what a hostile writer can put in a file."""
    monkeypatch.setattr(skeleton, "_interned", lambda v: v)
    buf = io.BytesIO()
    skeleton.SkeletonPickler(buf, {}, []).dump(model)
    return _file(b"[]", buf.getvalue())


def test_exponential_sharing_is_refused(tmp_path, monkeypatch) -> None:
    shared: list = []
    for _ in range(40):
        shared = [shared, shared]  # 2^40 paths, 41 objects
    model = nn.ReLU()
    model.junk = shared
    err = _bounded(lambda: load_packed(_write(tmp_path, _file_of(model, monkeypatch))))
    assert f"reaches more than {limits.MAX_GRAPH_PATHS:,} objects along its shared references" in str(err)


def test_cycles_and_deep_nesting_are_refused(tmp_path, monkeypatch) -> None:
    loop: list = []
    loop.append(loop)
    model = nn.ReLU()
    model.junk = loop
    err = _bounded(lambda: load_packed(_write(tmp_path, _file_of(model, monkeypatch))))
    assert "refers back to itself (a cycle through a list)" in str(err)
    selfish = nn.Sequential(nn.ReLU())
    selfish._modules["again"] = selfish
    err = _bounded(lambda: load_packed(_write(tmp_path, _file_of(selfish, monkeypatch))))
    assert "a cycle through a Sequential" in str(err)
    deep: list = []
    for _ in range(limits.MAX_GRAPH_DEPTH + 5):
        deep = [deep]
    model.junk = deep
    err = _bounded(lambda: load_packed(_write(tmp_path, _file_of(model, monkeypatch))))
    assert f"nests deeper than {limits.MAX_GRAPH_DEPTH} levels" in str(err)
    model.junk = [[[[[]]]]]  # shallow nesting and a plain module load
    assert isinstance(load_packed(_write(tmp_path, _file_of(model, monkeypatch))), nn.ReLU)


def test_tied_modules_and_ordinary_sharing_still_load(tmp_path) -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    path = tmp_path / "tied.ashz"
    save_packed(model, path)
    back = load_packed(path)
    assert back[0] is back[2]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_device_is_refused_without_blocking(tmp_path) -> None:
    fifo = tmp_path / "pipe.ashz"
    os.mkfifo(fifo)
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("load_packed blocked on a FIFO"))
    signal.alarm(5)
    try:
        with pytest.raises(PackError, match=r"pipe\.ashz: not a regular file \(a FIFO, device or folder\)"):
            load_packed(fifo)
        with pytest.raises(PackError, match="/dev/zero: not a regular file"):
            load_packed("/dev/zero")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_trusted_keeps_loading_any_global(tmp_path) -> None:
    data = pickle.dumps(nn.Linear(2, 2), protocol=5)  # an ordinary pickle: NEWOBJ + BUILD, torch's rebuild calls
    path = _write(tmp_path, _file(b"[]", data))
    with pytest.raises(PackError, match="uses pickle's NEWOBJ"):
        load_packed(path)
    assert isinstance(load_packed(path, trusted=True), nn.Linear)  # a file you made: anything goes
