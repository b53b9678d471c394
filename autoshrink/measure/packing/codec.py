"""Per-tensor encodings of the packed artifact: layouts of symbol streams, fixed-width or entropy-coded.

Every tensor is a stream of `width`-bit symbols: quantized codes + qmax (after one bfloat16 scale per
output channel), float16 / float bit patterns, or raw bytes for non-floating tensors ("raw"). Floating
tensors take the smallest layout: "dense", "bitmap" (bitmask, then nonzeros) or "relidx" (relative
indices, bits.py); each stream fixed-width or, where smaller, entropy-coded (entropy.py; symbols <= 8
bits; `Encoded.coded`: coded byte lengths, 0 = fixed). An all-fixed relidx interleaves gaps and symbols
as version 1 did; coded relidx tries every k in 1..8. Ties keep the simpler choice, so a file never grows
against fixed-width packing. -0.0 is stored as +0.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...errors import PackError
from ...weights import QUANT_BITS, group_count, grouped_codes, grouped_value, qmax
from . import entropy
from .bits import (
    MAX_GAP_BITS,
    Gaps,
    ceil8,
    encode_relidx,
    pack_fields,
    relidx_values,
    stream_sizes,
)

ENCODINGS = ("raw", "dense", "bitmap", "relidx")
STREAMS = {"raw": (), "dense": ("values",), "bitmap": ("bitmap", "values"), "relidx": ("gaps", "values")}
ENTROPY_GAP_BITS = 8  # relidx gap widths tried with entropy coding: 1..8


def describe(encoding: str, coded: tuple[int, ...]) -> str:
    """ "dense", "bitmap (bitmap: fixed, values: entropy)", ...: the layout and how each stream is stored."""
    if not any(coded):
        return encoding
    return (
        f"{encoding} ("
        + ", ".join(f"{s}: {'entropy' if c else 'fixed'}" for s, c in zip(STREAMS[encoding], coded))
        + ")"
    )


@dataclass(frozen=True)
class Sized:
    """What the header and the size need of an encoded tensor: its layout and byte counts, no payload."""

    encoding: str
    width: int
    k: int
    count: int
    nnz: int
    nbytes: int  # payload bytes, the scales or codebook included
    coded: tuple[int, ...] = ()


@dataclass(frozen=True)
class Encoded:
    """One tensor's payload and how it is laid out."""

    encoding: str  # one of ENCODINGS
    width: int  # bits per stored symbol
    k: int  # gap bits (relidx only, else 0)
    count: int  # nonzeros (bitmap), entries (relidx), else 0
    nnz: int  # nonzero elements
    payload: bytes  # scales (quantized) then the stream(s)
    coded: tuple[int, ...] = ()  # per stream of the layout: its entropy-coded bytes, 0 = fixed width

    @property
    def streams(self) -> str:
        """How the payload's streams are stored, e.g. "relidx (gaps: entropy, values: fixed)"."""
        return describe(self.encoding, self.coded)

    @property
    def sized(self) -> Sized:
        return Sized(self.encoding, self.width, self.k, self.count, self.nnz, len(self.payload), self.coded)


def _byte_rows(t: Tensor) -> np.ndarray:
    """Raw little-endian bytes of `t`, one row per element."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().reshape(flat.numel(), flat.element_size())


def _canonical_zeros(t: Tensor) -> Tensor:
    return torch.where(t == 0, torch.zeros((), dtype=t.dtype), t)


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Equal values (NaNs in the same places count as equal)."""
    na, nb = torch.isnan(a), torch.isnan(b)
    return torch.equal(na, nb) and torch.equal(a[~na], b[~nb])


def _codebook_symbols(t: Tensor, qbits: int, name: str) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray, int, bool]:
    """A codebook weight: its 2^bits - 1 float16 values (ascending; unused places repeat the largest)
    as the prefix, then one symbol per element: 0 for zero, i for the i-th value."""
    if qbits not in QUANT_BITS or not t.is_floating_point():
        raise PackError(f"{name} is marked as a {qbits}-bit codebook; codebooks code 2..8-bit floating weights")
    flat = t.detach().cpu().float().reshape(-1)
    nonzero = flat != 0
    values = torch.unique(flat[nonzero])
    k = codebook_size(qbits)
    if values.numel() > k:
        raise PackError(f"{name} has {values.numel()} distinct nonzero values; a {qbits}-bit codebook holds {k}")
    if not torch.equal(values.half().float(), values):
        raise PackError(f"{name} is marked as a codebook but its values are not float16 values")
    table = torch.cat([values, values[-1:].repeat(k - values.numel())]) if values.numel() else torch.zeros(k)
    symbols = torch.zeros(flat.numel(), dtype=torch.int64)
    symbols[nonzero] = torch.searchsorted(values, flat[nonzero]) + 1
    prefix = table.half().numpy().astype("<f2").tobytes()
    rows = symbols.numpy().astype(np.uint8).reshape(-1, 1)
    return prefix, rows, nonzero.numpy(), np.zeros(1, np.uint8), qbits, True


def codebook_size(bits: int) -> int:
    """Shared values of a `bits`-bit codebook (code 0 is zero)."""
    return 2**bits - 1


def _symbols(
    t: Tensor, qbits: int, name: str, codebook: bool = False, group_size: int = 0, scales: Tensor | None = None
) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray, int, bool]:
    """(prefix bytes, symbol rows, nonzero flags, zero row, width, sparse allowed) of a tensor; `group_size`
    and fixed `scales` as the weight's quantizer has them (weights.FakeQuant)."""
    if codebook:
        return _codebook_symbols(t, qbits, name)
    t = t.detach().cpu().contiguous()
    if qbits and not t.is_floating_point():
        raise PackError(
            f"{name} is {t.dtype} but marked as quantized to {qbits} bits; only floating weights are quantized"
        )
    if qbits in QUANT_BITS:
        if t.dim() == 0:
            raise PackError(f"{name} is a scalar; quantization needs an output-channel dimension")
        if t.dim() < 2 and group_size:
            raise PackError(f"{name} has {t.dim()} dimension(s); group scales need (output, inputs...)")
        expected = group_count(t.shape, group_size) * t.shape[0]
        if scales is not None and scales.numel() != expected:
            raise PackError(f"{name} has {scales.numel()} fixed scales; {expected} expected for its shape and groups")
        codes, scales = grouped_codes(t, qbits, group_size, None if scales is None else scales.cpu())
        if not torch.equal(grouped_value(codes, scales, group_size).to(t.dtype), t):
            raise PackError(
                f"{name} is not on its {qbits}-bit quantization grid (codes * scales != weight); "
                f"pack the model as autoshrink.weights.add_fake_quant left it"
            )
        raw = scales.float().contiguous().reshape(-1).view(torch.int32)
        if bool((raw & 0xFFFF).any()):
            raise PackError(f"{name} has scales that are not bfloat16 values; use weights.channel_scales")
        prefix = (raw >> 16).to(torch.int16).numpy().astype("<i2").tobytes()
        q = qmax(qbits)
        flat = codes.reshape(-1).numpy()
        rows = (flat.astype(np.int16) + q).astype(np.uint8).reshape(-1, 1)
        return prefix, rows, flat != 0, np.array([q], np.uint8), qbits, True
    if qbits == 16:
        half = t.half()
        if not _same_bits(half.to(t.dtype), t):
            raise PackError(f"{name} is marked float16 but its values are not float16 values")
        t = half
    elif qbits != 0:
        raise PackError(f"{name} has quantization bits {qbits}; expected 2..8, 16 or none")
    elif not (t.is_floating_point() or t.is_complex()):
        rows = _byte_rows(t)
        return b"", rows, rows.any(axis=1), np.zeros(rows.shape[1], np.uint8), 8 * rows.shape[1], False
    t = _canonical_zeros(t)
    rows = _byte_rows(t)
    return b"", rows, (t != 0).reshape(-1).numpy(), np.zeros(rows.shape[1], np.uint8), 8 * rows.shape[1], True


def _coded(symbols: np.ndarray | None, alphabet: int, fixed: int, use_entropy: bool) -> bytes | None:
    """The stream's entropy code where it is smaller than its `fixed` bytes, else None."""
    if not use_entropy or symbols is None or entropy.bound(symbols, alphabet) >= fixed:
        return None
    coded = entropy.encode(symbols, alphabet)
    return coded if coded is not None and len(coded) < fixed else None


Candidate = tuple[int, int, Callable[[], Encoded]]  # (payload bytes, preference, build the Encoded)


def _candidates(
    rows: np.ndarray, nonzero: np.ndarray, zero: np.ndarray, width: int, use_entropy: bool, shortcut: bool = True
) -> list[Candidate]:
    """Every layout worth comparing, with its exact payload bytes (scales excluded); fixed-width
    streams are only packed for the winner. `shortcut`: leave out the layouts that cannot win."""
    numel = rows.shape[0]
    positions = np.flatnonzero(nonzero)
    nnz = int(positions.size)
    small = width <= 8  # symbols an entropy code can take (alphabet <= 256)
    alphabet = 1 << width if small else 0
    out: list[Candidate] = []

    dense = _coded(rows[:, 0] if small else None, alphabet, ceil8(numel * width), use_entropy)
    out.append(
        (
            len(dense) if dense else ceil8(numel * width),
            0,
            lambda: (
                Encoded("dense", width, 0, 0, nnz, dense, (len(dense),))
                if dense
                else Encoded("dense", width, 0, 0, nnz, pack_fields([(rows, width)]))
            ),
        )
    )

    if shortcut and nnz == numel:
        # No zeros: a sparse layout stores every value dense stores (the same symbols, so the same
        # code) plus a bitmap or gaps of at least one byte, or ties it fixed-width; dense wins.
        return out
    flags = nonzero.astype(np.uint8).reshape(-1, 1)
    bitmap = _coded(np.packbits(flags.reshape(-1), bitorder="little"), 256, ceil8(numel), use_entropy)
    values = _coded(rows[positions, 0] if small else None, alphabet, ceil8(nnz * width), use_entropy)

    def build_bitmap() -> Encoded:
        a = bitmap or pack_fields([(flags, 1)])
        b = values or pack_fields([(rows[positions], width)])
        coded = (len(bitmap or b""), len(values or b"")) if bitmap or values else ()
        return Encoded("bitmap", width, 0, nnz, nnz, a + b, coded)

    out.append(
        ((len(bitmap) if bitmap else ceil8(numel)) + (len(values) if values else ceil8(nnz * width)), 1, build_bitmap)
    )

    gaps_all = Gaps.of_mask(nonzero)
    size, k = stream_sizes(numel, gaps_all, width)["relidx"]
    out.append((size, 2, lambda k=k: _relidx_fixed(positions, rows, zero, width, k, nnz)))
    if use_entropy and nnz:
        best = min(c[0] for c in out)
        counts = np.bincount(rows[positions, 0], minlength=alphabet) if small else None
        widest = gaps_all.widest
        for k in range(1, min(ENTROPY_GAP_BITS, MAX_GAP_BITS) + 1):
            if k > 1 and widest >> (k - 1) == 0:
                break  # k - 1 needed no fillers: every wider k stores the same symbols in wider fixed gaps
            # the smallest any code of these streams can be, from their histograms alone (fillers:
            # gap symbol 2^k - 1 with a zero value), before the streams are built
            entries = gaps_all.entries(k)
            fixed_gaps, fixed_values = ceil8(entries * k), ceil8(entries * width)
            values_low = float(fixed_values)
            if counts is not None:
                c = counts.copy()
                c[int(zero[0])] += entries - nnz
                values_low = min(entropy.bound_counts(c), fixed_values)
            if values_low + min(entropy.bound_counts(gaps_all.histogram(k)), fixed_gaps) >= best:
                continue  # no code of these streams can beat the best layout so far
            gap_field = gaps_all.field(k)
            gaps = _coded(gap_field, 1 << k, fixed_gaps, True)
            vals = None
            if small:  # wider symbols are never coded: their field is built only for the winner
                real = gaps_all.real(k)
                vals = _coded(relidx_values(real, entries, rows[positions], zero)[:, 0], alphabet, fixed_values, True)
            if gaps is None and vals is None:
                continue
            total = (len(gaps) if gaps else fixed_gaps) + (len(vals) if vals else fixed_values)

            def build(k=k, gaps=gaps, vals=vals, gap_field=gap_field) -> Encoded:
                n = gap_field.size
                a = gaps or pack_fields([(gap_field.view(np.uint8).reshape(n, 2), k)])
                b = vals or pack_fields([(relidx_values(gaps_all.real(k), n, rows[positions], zero), width)])
                return Encoded("relidx", width, k, n, nnz, a + b, (len(gaps or b""), len(vals or b"")))

            out.append((total, 3, build))
            best = min(best, total)
    return out


def _relidx_fixed(positions: np.ndarray, rows: np.ndarray, zero: np.ndarray, width: int, k: int, nnz: int) -> Encoded:
    data, entries = encode_relidx(positions, rows[positions], zero, width, k)
    return Encoded("relidx", width, k, entries, nnz, data)


def encode_tensor(
    t: Tensor,
    qbits: int = 0,
    name: str = "tensor",
    *,
    use_entropy: bool = True,
    codebook: bool = False,
    group_size: int = 0,
    scales: Tensor | None = None,
) -> Encoded:
    """Encode `t` (quantized to `qbits` 2..8, float16 for 16, as is for 0; a `qbits`-bit codebook
    with `codebook`) in its smallest layout; `use_entropy=False` keeps every stream fixed-width
    (format version 1's choices)."""
    prefix, rows, nonzero, zero, width, sparse = _symbols(t, qbits, name, codebook, group_size, scales)
    if not sparse:
        return Encoded("raw", width, 0, 0, int(nonzero.sum()), prefix + pack_fields([(rows, width)]))
    size, _, build = min(_candidates(rows, nonzero, zero, width, use_entropy), key=lambda c: (c[0], c[1]))
    best = build()
    if len(best.payload) != size:
        raise PackError(f"{name}: the {best.encoding} layout packed {len(best.payload)} bytes, {size} were computed")
    return Encoded(best.encoding, best.width, best.k, best.count, best.nnz, prefix + best.payload, best.coded)


def value_layout(
    shape: tuple[int, ...], dtype: torch.dtype, qbits: int, codebook: bool = False, group_size: int = 0
) -> tuple[int, int, int]:
    """(width bits, symbol bytes, prefix bytes: scales or the codebook) of a tensor stored with `qbits`
    (and one bfloat16 scale per `group_size` inputs of a channel, 0 = per channel)."""
    if group_size and (qbits not in QUANT_BITS or codebook or len(shape) < 2 or group_size < 0):
        raise PackError(f"group size {group_size} on a {qbits}-bit tensor of shape {list(shape)}")
    if codebook:
        if qbits not in QUANT_BITS:
            raise PackError(f"a codebook of {qbits} bits; codebooks have 2..8")
        return qbits, 1, 2 * codebook_size(qbits)
    if qbits in QUANT_BITS:
        if not shape:
            raise PackError("a quantized tensor has no output-channel dimension")
        return qbits, 1, 2 * shape[0] * group_count(shape, group_size)
    if qbits == 16:
        return 16, 2, 0
    if qbits != 0:
        raise PackError(f"quantization bits {qbits} is not 2..8, 16 or 0")
    size = torch.empty((), dtype=dtype).element_size()
    return 8 * size, size, 0


def _check_coded(encoding: str, coded: tuple[int, ...], width: int, k: int) -> None:
    if not coded:
        return
    names = STREAMS[encoding]
    if len(coded) != len(names) or not all(type(c) is int and c >= 0 for c in coded) or not any(coded):
        raise PackError(f"{encoding} has entropy lengths {list(coded)}; expected one per stream {list(names)}")
    for name, c in zip(names, coded):
        if c and ((name == "values" and width > 8) or (name == "gaps" and k > ENTROPY_GAP_BITS)):
            raise PackError(f"the {name} stream of {width}-bit symbols (k={k}) cannot be entropy-coded")


def stream_lengths(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    qbits: int,
    encoding: str,
    k: int,
    count: int,
    coded: tuple[int, ...] = (),
    codebook: bool = False,
) -> list[int]:
    """Bytes of each stream (after the scales) of a tensor with this header entry; PackError if inconsistent."""
    numel = math.prod(shape)
    width, _, _ = value_layout(shape, dtype, qbits, codebook)
    _check_coded(encoding, coded, width, k)
    if encoding in ("raw", "dense"):
        if encoding == "raw" and coded:
            raise PackError("a raw tensor is never entropy-coded")
        return [coded[0] if coded else ceil8(numel * width)]
    if encoding == "bitmap":
        if not 0 <= count <= numel:
            raise PackError(f"bitmap claims {count} nonzeros in {numel} elements")
        fixed = [ceil8(numel), ceil8(count * width)]
    elif encoding == "relidx":
        if not (1 <= k <= MAX_GAP_BITS and 0 <= count <= numel):
            raise PackError(f"relative indices with k={k}, {count} entries for {numel} elements")
        if not coded:
            return [ceil8(count * (k + width))]
        fixed = [ceil8(count * k), ceil8(count * width)]
    else:
        raise PackError(f"unknown encoding {encoding!r}")
    return [c or f for c, f in zip(coded, fixed)] if coded else fixed


def payload_size(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    qbits: int,
    encoding: str,
    k: int,
    count: int,
    coded: tuple[int, ...] = (),
    codebook: bool = False,
    group_size: int = 0,
) -> int:
    """Exact payload bytes of a tensor with this header entry (raises PackError if inconsistent)."""
    return value_layout(shape, dtype, qbits, codebook, group_size)[2] + sum(
        stream_lengths(shape, dtype, qbits, encoding, k, count, coded, codebook)
    )
