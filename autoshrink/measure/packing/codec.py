"""Per-tensor encodings of the packed artifact: bit packing, sparse positions, quantized codes.

Every stored tensor is a stream of *symbols*, one per element, each `width` bits wide:

- quantized weights (2..8 bits): code + qmax as an unsigned `bits`-bit integer, preceded by one
  2-byte bfloat16 scale per output channel (dim 0);
- float16 weights (bits 16): the float16 bit pattern;
- other floating tensors: their own bit pattern (float32 -> 32 bits, ...);
- non-floating tensors (num_batches_tracked, bool, ...): their raw bytes ("raw", never sparse).

Floating tensors are then stored in whichever of three layouts is smallest (exact byte counts):
"dense" (all symbols), "bitmap" (one bit per element, then the nonzero symbols) or "relidx"
(Deep Compression relative indices: entries of a k-bit gap and a symbol; a gap over 2^k-1 is
bridged by filler entries of gap 2^k-1 and the zero symbol). Every bit stream is packed LSB
first and rounded up to whole bytes. A zero is a value equal to 0, so -0.0 is stored (and
loads) as +0.0; torch.equal cannot tell the two apart. Everything is vectorized with numpy.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...errors import PackError
from ...weights import QUANT_BITS, dequantize, qmax, quantize_codes

ENCODINGS = ("raw", "dense", "bitmap", "relidx")
MAX_GAP_BITS = 16
_CHUNK = 1 << 16  # entries bit-packed at a time; a multiple of 8 keeps every chunk byte aligned


def _ceil8(bits: int) -> int:
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
            [np.unpackbits(rows[start:start + _CHUNK], axis=1, count=width, bitorder="little")
             for rows, width in fields], axis=1)
        out.append(np.packbits(bits.reshape(-1), bitorder="little").tobytes())
    return b"".join(out)


def unpack_fields(data: bytes | memoryview, n: int, fields: list[tuple[int, int]]) -> list[np.ndarray]:
    """Inverse of `pack_fields`: fields are (nbytes, width); returns uint8 rows (n, nbytes) each."""
    total = sum(width for _, width in fields)
    if len(data) != _ceil8(n * total):
        raise PackError(f"bit stream holds {len(data)} bytes, expected {_ceil8(n * total)}")
    buf = np.frombuffer(data, dtype=np.uint8)
    if len(fields) == 1 and fields[0][1] == 8 * fields[0][0]:
        return [buf.reshape(n, fields[0][0]).copy()]
    parts: list[list[np.ndarray]] = [[] for _ in fields]
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        chunk = buf[start * total // 8:_ceil8((start + m) * total)]
        bits = np.unpackbits(chunk, count=m * total, bitorder="little").reshape(m, total)
        offset = 0
        for i, (nbytes, width) in enumerate(fields):
            rows = np.packbits(bits[:, offset:offset + width], axis=1, bitorder="little")
            if rows.shape[1] < nbytes:
                rows = np.pad(rows, ((0, 0), (0, nbytes - rows.shape[1])))
            parts[i].append(rows)
            offset += width
    return [np.concatenate(p) if p else np.zeros((0, nbytes), np.uint8) for p, (nbytes, _) in zip(parts, fields)]


def gaps_of(positions: np.ndarray) -> np.ndarray:
    """Zeros skipped before each nonzero position (int64)."""
    return np.diff(positions.astype(np.int64), prepend=-1) - 1


def relidx_entries(gaps: np.ndarray, k: int) -> int:
    """Stored entries (nonzeros plus fillers) of relative indices with k-bit gaps."""
    return int(gaps.size + (gaps >> k).sum())


def stream_sizes(numel: int, gaps: np.ndarray, width: int) -> dict[str, tuple[int, int]]:
    """Bytes of each layout: {"dense": (bytes, 0), "bitmap": (bytes, 0), "relidx": (bytes, best k)}."""
    nnz = int(gaps.size)
    best = min(((_ceil8(relidx_entries(gaps, k) * (k + width)), k) for k in range(1, MAX_GAP_BITS + 1)))
    return {"dense": (_ceil8(numel * width), 0),
            "bitmap": (_ceil8(numel) + _ceil8(nnz * width), 0),
            "relidx": best}


def encode_relidx(positions: np.ndarray, values: np.ndarray, zero: np.ndarray, width: int, k: int) -> tuple[bytes, int]:
    """Relative-index stream of the nonzero `values` (rows) at `positions`; returns (bytes, entries)."""
    gaps = gaps_of(positions)
    fill = gaps >> k
    real = np.arange(gaps.size) + np.cumsum(fill)
    entries = int(gaps.size + fill.sum())
    gap_field = np.full(entries, (1 << k) - 1, dtype="<u2")
    gap_field[real] = gaps & ((1 << k) - 1)
    value_field = np.empty((entries, zero.size), np.uint8)
    value_field[:] = zero
    value_field[real] = values
    data = pack_fields([(gap_field.view(np.uint8).reshape(entries, 2), k), (value_field, width)])
    return data, entries


def decode_relidx(data: bytes | memoryview, entries: int, numel: int, zero: np.ndarray, width: int,
                  k: int) -> np.ndarray:
    """Symbol rows (numel, nbytes) of a relative-index stream."""
    gap_rows, values = unpack_fields(data, entries, [(2, k), (zero.size, width)])
    positions = np.cumsum(gap_rows.view("<u2").reshape(-1).astype(np.int64) + 1) - 1
    if entries and positions[-1] >= numel:
        raise PackError(f"relative indices reach position {int(positions[-1])} of a {numel}-element tensor")
    out = np.empty((numel, zero.size), np.uint8)
    out[:] = zero
    out[positions] = values
    return out


@dataclass(frozen=True)
class Encoded:
    """One tensor's payload and how it is laid out."""

    encoding: str  # one of ENCODINGS
    width: int  # bits per stored symbol
    k: int  # gap bits (relidx only, else 0)
    count: int  # nonzeros (bitmap), entries (relidx), else 0
    nnz: int  # nonzero elements
    payload: bytes  # scales (quantized) then the bit stream(s)


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


def _symbols(t: Tensor, qbits: int, name: str) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray, int, bool]:
    """(prefix bytes, symbol rows, nonzero flags, zero row, width, sparse allowed) of a tensor."""
    t = t.detach().cpu().contiguous()
    if qbits and not t.is_floating_point():
        raise PackError(f"{name} is {t.dtype} but marked as quantized to {qbits} bits; "
                        f"only floating weights are quantized")
    if qbits in QUANT_BITS:
        if t.dim() == 0:
            raise PackError(f"{name} is a scalar; quantization needs an output-channel dimension")
        codes, scales = quantize_codes(t, qbits)
        if not torch.equal(dequantize(codes, scales).to(t.dtype), t):
            raise PackError(f"{name} is not on its {qbits}-bit quantization grid (codes * scales != weight); "
                            f"pack the model as autoshrink.weights.add_fake_quant left it")
        raw = scales.contiguous().view(torch.int32)
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


def encode_tensor(t: Tensor, qbits: int = 0, name: str = "tensor") -> Encoded:
    """Encode `t` (quantized to `qbits` 2..8, float16 for 16, as is for 0) in its smallest layout."""
    prefix, rows, nonzero, zero, width, sparse = _symbols(t, qbits, name)
    numel = rows.shape[0]
    positions = np.flatnonzero(nonzero)
    nnz = int(positions.size)
    if not sparse:
        return Encoded("raw", width, 0, 0, nnz, prefix + pack_fields([(rows, width)]))
    sizes = stream_sizes(numel, gaps_of(positions), width)
    encoding = min(("dense", "bitmap", "relidx"), key=lambda e: sizes[e][0])  # ties keep the simpler
    if encoding == "dense":
        return Encoded("dense", width, 0, 0, nnz, prefix + pack_fields([(rows, width)]))
    if encoding == "bitmap":
        bitmap = pack_fields([(nonzero.astype(np.uint8).reshape(-1, 1), 1)])
        return Encoded("bitmap", width, 0, nnz, nnz, prefix + bitmap + pack_fields([(rows[positions], width)]))
    k = sizes["relidx"][1]
    data, entries = encode_relidx(positions, rows[positions], zero, width, k)
    return Encoded("relidx", width, k, entries, nnz, prefix + data)


def value_layout(shape: tuple[int, ...], dtype: torch.dtype, qbits: int) -> tuple[int, int, int]:
    """(width bits, symbol bytes, scale bytes) of a tensor stored with `qbits`."""
    if qbits in QUANT_BITS:
        if not shape:
            raise PackError("a quantized tensor has no output-channel dimension")
        return qbits, 1, 2 * shape[0]
    if qbits == 16:
        return 16, 2, 0
    if qbits != 0:
        raise PackError(f"quantization bits {qbits} is not 2..8, 16 or 0")
    size = torch.empty((), dtype=dtype).element_size()
    return 8 * size, size, 0


def payload_size(shape: tuple[int, ...], dtype: torch.dtype, qbits: int, encoding: str, k: int, count: int) -> int:
    """Exact payload bytes of a tensor with this header entry (raises PackError if inconsistent)."""
    numel = math.prod(shape)
    width, _, scale_bytes = value_layout(shape, dtype, qbits)
    if encoding in ("raw", "dense"):
        return scale_bytes + _ceil8(numel * width)
    if encoding == "bitmap":
        if not 0 <= count <= numel:
            raise PackError(f"bitmap claims {count} nonzeros in {numel} elements")
        return scale_bytes + _ceil8(numel) + _ceil8(count * width)
    if encoding == "relidx":
        if not (1 <= k <= MAX_GAP_BITS and 0 <= count <= numel):
            raise PackError(f"relative indices with k={k}, {count} entries for {numel} elements")
        return scale_bytes + _ceil8(count * (k + width))
    raise PackError(f"unknown encoding {encoding!r}")


def decode_tensor(payload: bytes | memoryview, shape: tuple[int, ...], dtype: torch.dtype, qbits: int,
                  encoding: str, k: int, count: int) -> Tensor:
    """Rebuild the tensor `encode_tensor` stored (payload must be exactly `payload_size` bytes)."""
    expected = payload_size(shape, dtype, qbits, encoding, k, count)
    if len(payload) != expected:
        raise PackError(f"payload holds {len(payload)} bytes, expected {expected}")
    numel = math.prod(shape)
    width, nbytes, scale_bytes = value_layout(shape, dtype, qbits)
    data = memoryview(payload)[scale_bytes:]
    zero = np.array([qmax(qbits)] if qbits in QUANT_BITS else [0] * nbytes, np.uint8)
    if encoding in ("raw", "dense"):
        (rows,) = unpack_fields(data, numel, [(nbytes, width)])
    elif encoding == "bitmap":
        cut = _ceil8(numel)
        (flags,) = unpack_fields(data[:cut], numel, [(1, 1)])
        mask = flags.reshape(-1).astype(bool)
        if int(mask.sum()) != count:
            raise PackError(f"bitmap marks {int(mask.sum())} nonzeros, header says {count}")
        (values,) = unpack_fields(data[cut:], count, [(nbytes, width)])
        rows = np.empty((numel, nbytes), np.uint8)
        rows[:] = zero
        rows[mask] = values
    else:
        rows = decode_relidx(data, count, numel, zero, width, k)
    if qbits in QUANT_BITS:
        q = qmax(qbits)
        if rows.size and int(rows.max()) > 2 * q:
            raise PackError(f"a {qbits}-bit code exceeds {2 * q}")
        codes = torch.from_numpy(rows.reshape(shape).astype(np.int16) - q).to(torch.int8)
        high = np.frombuffer(payload[:scale_bytes], dtype="<i2").astype(np.int32) << 16
        scales = torch.from_numpy(high.astype(np.int32)).view(torch.float32)
        return dequantize(codes, scales).to(dtype)
    flat = torch.from_numpy(rows.reshape(-1).copy())
    if qbits == 16:
        return flat.view(torch.float16).reshape(shape).to(dtype)
    return flat.view(dtype).reshape(shape)


# ----------------------------------------------------------------------------- container metadata

def varint(n: int) -> bytes:
    """Unsigned LEB128: 1 byte below 128, 2 below 16384, ..."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise PackError("a length field runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


# Preset deflate dictionary of the header and skeleton streams: the strings a pickled module tree
# and the JSON header are made of, framed as pickle writes them, most common last. It is part of
# format version 1 and must never change (a new dictionary needs a new format version). It saves
# ~80-130 bytes a model, a third of the fixed overhead.
_ZDICT_CLASSES = (
    ("torch.nn.modules.transformer", ("TransformerEncoderLayer", "TransformerDecoderLayer")),
    ("torch.nn.modules.container", ("ModuleList", "ModuleDict", "Sequential")),
    ("torch.nn.modules.sparse", ("Embedding",)),
    ("torch.nn.modules.dropout", ("Dropout",)),
    ("torch.nn.modules.flatten", ("Flatten",)),
    ("torch.nn.modules.pooling", ("AdaptiveAvgPool2d", "AvgPool2d", "MaxPool2d")),
    ("torch.nn.modules.normalization", ("GroupNorm", "LayerNorm")),
    ("torch.nn.modules.batchnorm", ("BatchNorm1d", "BatchNorm2d")),
    ("torch.nn.modules.activation", ("MultiheadAttention", "Softmax", "Sigmoid", "Tanh", "SiLU", "GELU", "ReLU")),
    ("torch.nn.modules.conv", ("Conv1d", "Conv2d")),
    ("autoshrink.techniques.lowrank", ("Factorized",)),
    ("torch.nn.modules.linear", ("NonDynamicallyQuantizableLinear", "Identity", "Linear")),
    ("autoshrink.measure.packing.skeleton", ("_new_module", "_set_module_state")),
)
_ZDICT_NAMES = (
    "activation_relu_or_gelu", "norm_first", "linear1", "linear2", "norm1", "norm2", "dropout1", "dropout2",
    "self_attn", "_qkv_same_embed_dim", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_weight",
    "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "batch_first", "embed_dim", "num_heads", "head_dim",
    "kdim", "vdim", "dropout", "out_proj", "num_embeddings", "embedding_dim", "padding_idx", "max_norm",
    "norm_type", "scale_grad_by_freq", "sparse", "approximate", "none", "start_dim", "end_dim", "p",
    "ceil_mode", "return_indices", "output_size", "normalized_shape", "elementwise_affine", "num_features",
    "eps", "momentum", "affine", "track_running_stats", "running_mean", "running_var", "num_batches_tracked",
    "_buffers", "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
    "transposed", "output_padding", "padding_mode", "zeros", "_reversed_padding_repeated_twice", "first",
    "second", "inplace", "_modules", "in_features", "out_features", "bias", "weight", "_parameters", "training",
)


def _zdict() -> bytes:
    def text(s: str) -> bytes:
        return b"\x8c" + bytes([len(s)]) + s.encode()
    parts = [b'[[[],"bool","int64","float16",0,1,2,3,4,5,6,7,8,16,0,0,0],[[],"float32",0,3,1,0,0],[[']
    parts += [text(module) + text(name) + b"\x93\x94" for module, names in _ZDICT_CLASSES for name in names]
    parts += [text(name) + b"\x94" for name in _ZDICT_NAMES]
    return b"".join(parts)


_ZDICT = _zdict()


def deflate(raw: bytes) -> bytes:
    """zlib (level 9) with the format's preset dictionary."""
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    return c.compress(raw) + c.flush()


def inflate(data: bytes) -> bytes:
    """Inverse of `deflate`; PackError if the stream is corrupt, cut short or followed by bytes."""
    d = zlib.decompressobj(zdict=_ZDICT)
    try:
        raw = d.decompress(data) + d.flush()
    except zlib.error as exc:
        raise PackError(f"does not decompress: {exc}") from None
    if not d.eof or d.unused_data:
        raise PackError("is cut short or followed by stray bytes")
    return raw
