"""Bit-level streams of the packed artifact: LSB-first bit packing and relative indices.

Every bit stream is packed LSB first and rounded up to whole bytes. Relative indices (Deep
Compression) store entries of a k-bit gap and a symbol; a gap over 2^k-1 is bridged by filler
entries of gap 2^k-1 and the zero symbol. Everything is vectorized with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import PackError

MAX_GAP_BITS = 16
_CHUNK = 1 << 16  # entries bit-packed at a time; a multiple of 8 keeps every chunk byte aligned


def ceil8(bits: int) -> int:
    return (bits + 7) // 8


def pack_fields(fields: list[tuple[np.ndarray, int]]) -> bytes:
    """Bit-pack n entries made of fields, LSB first; each field is (uint8 rows (n, nbytes), width).

    A field's value is its row read as a little-endian integer, of which the low `width` bits are
    kept. Entries follow each other without padding; the stream is padded to a whole byte.
    """
    rows0, width0 = fields[0]
    n = rows0.shape[0]
    if len(fields) == 1 and width0 == 8 * rows0.shape[1]:
        return np.ascontiguousarray(rows0).tobytes()
    out = []
    for start in range(0, n, _CHUNK):
        bits = np.concatenate(
            [
                np.unpackbits(rows[start : start + _CHUNK], axis=1, count=width, bitorder="little")
                for rows, width in fields
            ],
            axis=1,
        )
        out.append(np.packbits(bits.reshape(-1), bitorder="little").tobytes())
    return b"".join(out)


def unpack_fields(data: bytes | memoryview, n: int, fields: list[tuple[int, int]]) -> list[np.ndarray]:
    """Inverse of `pack_fields`: fields are (nbytes, width); returns uint8 rows (n, nbytes) each."""
    total = sum(width for _, width in fields)
    if len(data) != ceil8(n * total):
        raise PackError(f"bit stream holds {len(data)} bytes, expected {ceil8(n * total)}")
    buf = np.frombuffer(data, dtype=np.uint8)
    if len(fields) == 1 and fields[0][1] == 8 * fields[0][0]:
        return [buf.reshape(n, fields[0][0]).copy()]
    parts: list[list[np.ndarray]] = [[] for _ in fields]
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        chunk = buf[start * total // 8 : ceil8((start + m) * total)]
        bits = np.unpackbits(chunk, count=m * total, bitorder="little").reshape(m, total)
        offset = 0
        for i, (nbytes, width) in enumerate(fields):
            rows = np.packbits(bits[:, offset : offset + width], axis=1, bitorder="little")
            if rows.shape[1] < nbytes:
                rows = np.pad(rows, ((0, 0), (0, nbytes - rows.shape[1])))
            parts[i].append(rows)
            offset += width
    return [np.concatenate(p) if p else np.zeros((0, nbytes), np.uint8) for p, (nbytes, _) in zip(parts, fields)]


def gaps_of(positions: np.ndarray) -> np.ndarray:
    """Zeros skipped before each nonzero position (int64), in one pass over the positions."""
    positions = positions.astype(np.int64, copy=False)
    gaps = np.empty_like(positions)
    if positions.size:
        gaps[0] = positions[0]
        np.subtract(positions[1:], positions[:-1], out=gaps[1:])
        gaps[1:] -= 1
    return gaps


@dataclass(frozen=True)
class Gaps:
    """The zeros skipped before each of `count` nonzeros, kept sparsely: the nonzeros after a run of
    zeros (`at`, ascending) and the run lengths (`size`); every other gap is 0. Built from the runs of
    zeros, so a tensor with few zeros (an embedding's padding row) costs its zeros, not its numel."""

    count: int
    at: np.ndarray
    size: np.ndarray

    @classmethod
    def of_mask(cls, nonzero: np.ndarray) -> Gaps:
        """From a flat boolean mask of nonzeros; zeros after the last nonzero are no gap."""
        zeros = np.flatnonzero(~nonzero.reshape(-1))
        count = int(nonzero.size - zeros.size)
        if not zeros.size or not count:
            return cls(count, np.zeros(0, np.int64), np.zeros(0, np.int64))
        breaks = np.flatnonzero(np.diff(zeros) != 1)
        starts = np.concatenate(([zeros[0]], zeros[breaks + 1]))
        ends = np.concatenate((zeros[breaks], [zeros[-1]])) + 1  # the nonzero after each run
        size = ends - starts
        at = ends - np.cumsum(size)  # that nonzero's index among the nonzeros
        keep = ends < nonzero.size
        return cls(count, at[keep].astype(np.int64), size[keep].astype(np.int64))

    @classmethod
    def of_positions(cls, positions: np.ndarray) -> Gaps:
        gaps = gaps_of(positions)
        at = np.flatnonzero(gaps)
        return cls(int(gaps.size), at, gaps[at])

    @property
    def widest(self) -> int:
        return int(self.size.max()) if self.size.size else 0

    def dense(self) -> np.ndarray:
        gaps = np.zeros(self.count, np.int64)
        gaps[self.at] = self.size
        return gaps

    def entries(self, k: int) -> int:
        """Stored entries (nonzeros plus fillers) of relative indices with k-bit gaps."""
        return self.count + int((self.size >> k).sum())

    def histogram(self, k: int) -> np.ndarray:
        """Counts of each k-bit gap symbol over all entries, fillers (symbol 2^k - 1) included."""
        mask = (1 << k) - 1
        counts = np.bincount(self.size & mask, minlength=mask + 1)
        counts[0] += self.count - self.size.size
        counts[mask] += self.entries(k) - self.count
        return counts

    def field(self, k: int) -> np.ndarray:
        """The gap field of relative indices with k-bit gaps: uint16 per entry, fillers included."""
        fill = self.size >> k
        real = self.at + np.cumsum(fill)  # the entry of each nonzero after a run
        field = np.zeros(self.entries(k), "<u2")
        field[real] = self.size & ((1 << k) - 1)
        if fill.any():
            n = int(fill.sum())
            first = np.repeat(real - fill, fill)  # each filler run ends just before its nonzero
            field[first + np.arange(n) - np.repeat(np.cumsum(fill) - fill, fill)] = (1 << k) - 1
        return field

    def real(self, k: int) -> np.ndarray:
        """The entry of every nonzero with k-bit gaps (int64)."""
        shift = np.zeros(self.count, np.int64)
        shift[self.at] = self.size >> k
        return np.arange(self.count) + np.cumsum(shift, out=shift)


def relidx_entries(gaps: np.ndarray, k: int) -> int:
    """Stored entries (nonzeros plus fillers) of relative indices with k-bit gaps."""
    return int(gaps.size + (gaps >> k).sum())


def stream_sizes(numel: int, gaps: Gaps, width: int) -> dict[str, tuple[int, int]]:
    """Bytes of each layout: {"dense": (bytes, 0), "bitmap": (bytes, 0), "relidx": (bytes, best k)}."""
    widest = gaps.widest
    best = (ceil8(gaps.entries(1) * (1 + width)), 1)
    for k in range(2, MAX_GAP_BITS + 1):
        if widest >> (k - 1) == 0:
            break  # no fillers from k - 1 on: a wider gap field only adds bits
        best = min(best, (ceil8(gaps.entries(k) * (k + width)), k))
    return {"dense": (ceil8(numel * width), 0), "bitmap": (ceil8(numel) + ceil8(gaps.count * width), 0), "relidx": best}


def relidx_gaps(gaps: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The gap field of relative indices with k-bit gaps (uint16 per entry, fillers included) and the
    entries that hold the nonzeros."""
    fill = gaps >> k
    real = np.arange(gaps.size) + np.cumsum(fill) if fill.any() else np.arange(gaps.size)
    gap_field = np.full(int(gaps.size + fill.sum()), (1 << k) - 1, dtype="<u2")
    gap_field[real] = gaps & ((1 << k) - 1)
    return gap_field, real


def relidx_values(real: np.ndarray, entries: int, values: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """The symbol rows per entry: the nonzeros' at `real`, the zero symbol at the fillers."""
    value_field = np.empty((entries, zero.size), np.uint8)
    value_field[:] = zero
    value_field[real] = values
    return value_field


def relidx_fields(positions: np.ndarray, values: np.ndarray, zero: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The entries of relative indices with k-bit gaps: (gap per entry as uint16, symbol rows per
    entry), fillers included."""
    gap_field, real = relidx_gaps(gaps_of(positions), k)
    return gap_field, relidx_values(real, gap_field.size, values, zero)


def encode_relidx(positions: np.ndarray, values: np.ndarray, zero: np.ndarray, width: int, k: int) -> tuple[bytes, int]:
    """Relative-index stream of the nonzero `values` (rows) at `positions`; returns (bytes, entries)."""
    gap_field, value_field = relidx_fields(positions, values, zero, k)
    entries = gap_field.size
    return pack_fields([(gap_field.view(np.uint8).reshape(entries, 2), k), (value_field, width)]), entries


def place_relidx(gaps: np.ndarray, values: np.ndarray, numel: int, zero: np.ndarray) -> np.ndarray:
    """Symbol rows (numel, nbytes) from the entries' gaps and symbol rows."""
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if positions.size and positions[-1] >= numel:
        raise PackError(f"relative indices reach position {int(positions[-1])} of a {numel}-element tensor")
    out = np.empty((numel, zero.size), np.uint8)
    out[:] = zero
    out[positions] = values
    return out


def decode_relidx(
    data: bytes | memoryview, entries: int, numel: int, zero: np.ndarray, width: int, k: int
) -> np.ndarray:
    """Symbol rows (numel, nbytes) of a relative-index stream."""
    gap_rows, values = unpack_fields(data, entries, [(2, k), (zero.size, width)])
    return place_relidx(gap_rows.view("<u2").reshape(-1), values, numel, zero)
