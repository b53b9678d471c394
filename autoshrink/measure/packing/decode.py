"""Decoding one tensor of the packed artifact: the inverse of `codec.encode_tensor`, checked against its
header entry (stream lengths, nonzero count, code range)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ...errors import PackError
from ...weights import QUANT_BITS, group_count, grouped_value, qmax
from . import entropy
from .bits import ceil8, decode_relidx, place_relidx, unpack_fields
from .codec import stream_lengths, value_layout


def _read(data: memoryview, coded: int, n: int, nbytes: int, width: int, alphabet: int) -> np.ndarray:
    """n symbol rows (n, nbytes) of one stream, fixed-width or entropy-coded."""
    if not coded:
        return unpack_fields(data, n, [(nbytes, width)])[0]
    symbols = entropy.decode(data, n, alphabet)
    return symbols.astype(np.uint8).reshape(n, 1)  # only symbols of <= 8 bits (nbytes 1) are ever coded


def read_scales(payload: bytes | memoryview, shape: tuple[int, ...], group_size: int) -> Tensor:
    """The (out, groups) bfloat16 scales at the front of a quantized tensor's payload, as float32."""
    n = shape[0] * group_count(shape, group_size)
    high = np.frombuffer(payload[: 2 * n], dtype="<i2").astype(np.int32) << 16
    return torch.from_numpy(high).view(torch.float32).reshape(shape[0], -1)


def decode_tensor(
    payload: bytes | memoryview,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    qbits: int,
    encoding: str,
    k: int,
    count: int,
    coded: tuple[int, ...] = (),
    codebook: bool = False,
    group_size: int = 0,
) -> Tensor:
    """Rebuild the tensor `encode_tensor` stored (payload must be exactly `payload_size` bytes)."""
    lengths = stream_lengths(shape, dtype, qbits, encoding, k, count, coded, codebook)
    width, nbytes, scale_bytes = value_layout(shape, dtype, qbits, codebook, group_size)
    if len(payload) != scale_bytes + sum(lengths):
        raise PackError(f"payload holds {len(payload)} bytes, expected {scale_bytes + sum(lengths)}")
    numel = math.prod(shape)
    data = memoryview(payload)[scale_bytes:]
    parts, at = [], 0
    for n in lengths:
        parts.append(data[at : at + n])
        at += n
    coded = tuple(coded) or (0,) * len(parts)
    zero = np.array([qmax(qbits)] if qbits in QUANT_BITS and not codebook else [0] * nbytes, np.uint8)
    alphabet = 1 << width if width <= 8 else 0
    if encoding in ("raw", "dense"):
        rows = _read(parts[0], coded[0], numel, nbytes, width, alphabet)
    elif encoding == "bitmap":
        if coded[0]:
            flags = np.unpackbits(
                entropy.decode(parts[0], ceil8(numel), 256).astype(np.uint8), count=numel, bitorder="little"
            )
        else:
            flags = unpack_fields(parts[0], numel, [(1, 1)])[0].reshape(-1)
        mask = flags.astype(bool)
        if int(mask.sum()) != count:
            raise PackError(f"bitmap marks {int(mask.sum())} nonzeros, header says {count}")
        values = _read(parts[1], coded[1], count, nbytes, width, alphabet)
        rows = np.empty((numel, nbytes), np.uint8)
        rows[:] = zero
        rows[mask] = values
    elif len(parts) == 1:
        rows = decode_relidx(parts[0], count, numel, zero, width, k)
    else:
        gaps = (
            entropy.decode(parts[0], count, 1 << k)
            if coded[0]
            else unpack_fields(parts[0], count, [(2, k)])[0].view("<u2").reshape(-1)
        )
        rows = place_relidx(gaps, _read(parts[1], coded[1], count, nbytes, width, alphabet), numel, zero)
    if codebook:
        table = torch.from_numpy(np.frombuffer(payload[:scale_bytes], dtype="<f2").astype(np.float32))
        return (
            torch.cat([torch.zeros(1), table])[torch.from_numpy(rows.reshape(-1).astype(np.int64))]
            .reshape(shape)
            .to(dtype)
        )
    if qbits in QUANT_BITS:
        q = qmax(qbits)
        if rows.size and int(rows.max()) > 2 * q:
            raise PackError(f"a {qbits}-bit code exceeds {2 * q}")
        codes = torch.from_numpy(rows.reshape(shape).astype(np.int16) - q).to(torch.int8)
        high = np.frombuffer(payload[:scale_bytes], dtype="<i2").astype(np.int32) << 16
        scales = torch.from_numpy(high.astype(np.int32)).view(torch.float32)
        return grouped_value(codes, scales, group_size).to(dtype)
    flat = torch.from_numpy(rows.reshape(-1).copy())
    if qbits == 16:
        return flat.view(torch.float16).reshape(shape).to(dtype)
    return flat.view(dtype).reshape(shape)
