"""The exact packed size of a model without re-encoding what was encoded before.

A file's size is its framing (magic, version, the deflated header and skeleton) plus each tensor's
payload. A tensor's encoding depends only on what is stored -- its bytes, dtype, shape, quantization
bits, codebook flag, group size, fixed scales and the entropy setting -- so `packed_size` keys each
encoding by a SHA-256 of exactly that (never the layer name) and reuses it: a candidate that changes
one layer encodes one layer. The header and skeleton are rebuilt every time (they are small), so the size equals
`len(pack(model)[0])` byte for byte. The cache is per process (each Ray actor has its own) and
bounded: CACHE_ENTRIES encodings, least recently used dropped first; an entry holds a few numbers,
never the payload.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch
from torch import nn

from . import codec
from .container import PackedTensor, Stored, encode, frame, header_entry, layout, packed_tensor, version_of

CACHE_ENTRIES = 65_536


class SizeCache:
    """Encodings by content key, least recently used first out (thread-safe)."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self._data: OrderedDict[bytes, codec.Sized] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: bytes) -> codec.Sized | None:
        with self._lock:
            found = self._data.get(key)
            if found is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: bytes, sized: codec.Sized) -> None:
        with self._lock:
            self._data[key] = sized
            self._data.move_to_end(key)
            while len(self._data) > self.entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0


CACHE = SizeCache()


def content_key(s: Stored, use_entropy: bool) -> bytes:
    """SHA-256 of what decides the tensor's encoding: its bytes, dtype, shape, bits, codebook flag, group
    size and fixed scales."""
    t = s.tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    h = hashlib.sha256(
        f"{t.dtype}|{tuple(s.tensor.shape)}|{s.qbits}|{s.codebook}|{s.group_size}|{use_entropy}|".encode()
    )
    if t.numel():
        h.update(t.view(torch.uint8).numpy().data)
    if s.scales is not None:  # fixed scales decide the codes too
        h.update(b"|scales|" + s.scales.detach().cpu().float().contiguous().reshape(-1).numpy().tobytes())
    return h.digest()


def payload_bytes(tensor: torch.Tensor, qbits: int = 0, *, cache: SizeCache | None = CACHE) -> int:
    """Exact payload bytes of `tensor` stored with `qbits` (see codec.encode_tensor), from `cache`
    where the same content was encoded before."""
    return _sized(Stored("tensor", tensor, qbits, False, 0), "payload_bytes()", True, cache).nbytes


def _sized(s: Stored, where: str, entropy: bool, cache: SizeCache | None) -> codec.Sized:
    if cache is None:
        return encode(s, where, entropy).sized
    key = content_key(s, entropy)
    sized = cache.get(key)
    if sized is None:
        sized = encode(s, where, entropy).sized
        cache.put(key, sized)
    return sized


def packed_size(
    model: nn.Module, *, entropy: bool = True, cache: SizeCache | None = CACHE, where: str = "packed_size()"
) -> tuple[int, list[PackedTensor]]:
    """(exact bytes of `pack(model)`'s artifact, what each stored tensor costs), encoding only the
    tensors `cache` has not seen; `cache=None` encodes every tensor."""
    found = layout(model, where)
    version = version_of(found.tensors)
    header, report, payload = [], [], 0
    for s in found.tensors:
        sized = _sized(s, where, entropy, cache)
        header.append(header_entry(s, sized, version))
        report.append(packed_tensor(s, sized))
        payload += sized.nbytes
    return len(frame(header, found.skeleton, version)) + payload, report
