"""Entropy-coded streams (format version 2): exact decoding, never larger, old files still load."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import PackError
from autoshrink.measure.packing import codec, entropy, load_packed, pack, save_packed

FIXTURES = Path(__file__).parent / "fixtures"


def _streams() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)
    return {
        "peaked": (np.clip(np.round(rng.normal(7, 1.2, 20000)), 0, 15).astype(np.int64), 16),
        "uniform_256": (rng.integers(0, 256, 5000), 256),
        "geometric": (np.minimum(rng.geometric(0.3, 8000) - 1, 255), 256),
        "one_symbol": (np.full(3000, 9), 16),
        "single_element": (np.array([3]), 4),
        "two_extremes": (np.array([0, 255] * 50), 256),
        "every_symbol_once": (np.arange(256), 256),
        "binary_rare": ((rng.random(10000) < 0.001).astype(np.int64), 2),
    }


@pytest.mark.parametrize("name", list(_streams()))
def test_streams_decode_exactly(name: str) -> None:
    symbols, alphabet = _streams()[name]
    data = entropy.encode(symbols, alphabet)
    assert np.array_equal(entropy.decode(data, symbols.size, alphabet), symbols)


def test_code_length_is_close_to_the_entropy() -> None:
    symbols, alphabet = _streams()["peaked"]
    p = np.bincount(symbols, minlength=alphabet) / symbols.size
    bits = -(p[p > 0] * np.log2(p[p > 0])).sum() * symbols.size
    data = entropy.encode(symbols, alphabet)
    assert bits / 8 <= len(data) <= bits / 8 * 1.01 + 40  # within 1 % plus the table and the last words


def test_empty_or_too_large_alphabets_are_not_coded() -> None:
    assert entropy.encode(np.array([], dtype=np.int64), 16) is None
    assert entropy.encode(np.arange(10), 512) is None
    with pytest.raises(PackError, match="outside its 4-symbol alphabet"):
        entropy.encode(np.array([0, 4]), 4)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d + b"\x00\x00\x00\x00", "more code than its symbols use|does not decode"),
        (lambda d: d[:-1], "whole 32-bit words"),
        (lambda d: bytes([200, 1]) + d[2:], "covers symbols"),
    ],
)
def test_corrupt_streams_are_refused(mutate, message: str) -> None:
    symbols, alphabet = _streams()["peaked"]
    data = entropy.encode(symbols, alphabet)
    with pytest.raises(PackError, match=message):
        entropy.decode(mutate(data), symbols.size, alphabet)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    policy = ash.Policy(
        layers={
            "0": ash.LayerPolicy(sparsity=0.9, bits=4),
            "2": ash.LayerPolicy(sparsity=0.6, bits=6),
            "4": ash.LayerPolicy(bits=2),
        }
    )
    return ash.apply_policy(model, policy)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_file_never_grows_and_reloads_bitwise(seed: int, tmp_path) -> None:
    model = _model(seed)
    coded, report = pack(model)
    fixed, fixed_report = pack(model, entropy=False)
    assert len(coded) <= len(fixed)
    for t, f in zip(report, fixed_report):  # tensor by tensor, never larger
        assert t.name == f.name and t.nbytes <= f.nbytes
    assert any(t.coded for t in report)
    size = save_packed(model, tmp_path / "m.ashz")
    assert size == len(coded) == (tmp_path / "m.ashz").stat().st_size
    back = load_packed(tmp_path / "m.ashz")
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    save_packed(back, tmp_path / "again.ashz")
    assert (tmp_path / "again.ashz").read_bytes() == (tmp_path / "m.ashz").read_bytes()


def test_streams_say_how_they_are_stored() -> None:
    report = {t.name: t for t in pack(_model(0))[1]}
    t = report["0.weight"]
    assert t.streams.startswith(t.encoding) and ("entropy" in t.streams) == any(t.coded)
    assert codec.describe("relidx", (0, 17)) == "relidx (gaps: fixed, values: entropy)"
    assert codec.describe("dense", ()) == "dense"


def test_version_1_files_still_load(tmp_path) -> None:
    """The fixture was written by the version-1 packer (before entropy coding)."""
    raw = (FIXTURES / "v1_mlp.ashz").read_bytes()
    assert raw[4] == 1
    model = load_packed(FIXTURES / "v1_mlp.ashz")
    io = torch.load(FIXTURES / "v1_mlp_io.pt")
    # outputs recorded on this CPU build; another torch build or CPU may round the matmuls differently
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output"], rtol=1e-5, atol=1e-6)
    size = save_packed(model, tmp_path / "v2.ashz")
    assert (tmp_path / "v2.ashz").read_bytes()[4] == 2 and size <= len(raw)
    again = load_packed(tmp_path / "v2.ashz")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):  # re-saved exactly
        assert k == k2 and torch.equal(v, v2)


def test_header_entry_with_wrong_stream_lengths_is_refused() -> None:
    with pytest.raises(PackError, match="one per stream"):
        codec.payload_size((4, 4), torch.float32, 4, "bitmap", 0, 3, (5,))
    with pytest.raises(PackError, match="cannot be entropy-coded"):
        codec.payload_size((4, 4), torch.float32, 0, "dense", 0, 0, (7,))
    assert codec.payload_size((4, 4), torch.float32, 4, "relidx", 3, 5, (0, 9)) == 8 + math.ceil(5 * 3 / 8) + 9
