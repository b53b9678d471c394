"""Quantization codes and scales: b in 2..8 gives symmetric codes in [-(2^(b-1)-1), 2^(b-1)-1], one scale
per output channel (dim 0) or per group of a channel's flattened inputs, max|w| / qmax rounded to bfloat16;
b = 16 rounds to float16 (see autoshrink.weights)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

QUANT_BITS = (2, 3, 4, 5, 6, 7, 8)


def qmax(bits: int) -> int:
    """Largest code magnitude for signed symmetric `bits`-bit codes."""
    return 2 ** (bits - 1) - 1


def _round_bf16(x: Tensor) -> Tensor:
    """Round float32 values to the nearest bfloat16 value (relative error <= 2^-9).

    With that error bound the largest |w| of a channel always maps to code +-qmax (qmax <= 127), so
    re-quantizing a quantized weight reproduces the same scale and codes exactly.
    """
    return x.to(torch.bfloat16).to(torch.float32)


def channel_scales(weight: Tensor, bits: int) -> Tensor:
    """Per-output-channel scales (float32 holding bfloat16 values) for `bits`-bit codes."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    amax = w.abs().amax(dim=1) if w.shape[1] else torch.zeros(w.shape[0])
    scale = _round_bf16(amax / qmax(bits))
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def _bshape(weight: Tensor) -> tuple[int, ...]:
    return (weight.shape[0],) + (1,) * (weight.dim() - 1)


def group_count(weight_shape: tuple[int, ...] | torch.Size, group_size: int) -> int:
    """Scales per output channel: 1 per channel, else ceil(inputs / group_size)."""
    cols = math.prod(weight_shape[1:])
    return max(1, -(-cols // group_size)) if group_size else 1


def group_scales(weight: Tensor, bits: int, group_size: int) -> Tensor:
    """Scales (out, groups), float32 holding bfloat16 values: max|w| / qmax of each group (1 where all zero)."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    if not group_size:
        return channel_scales(weight, bits).reshape(-1, 1)
    cols, groups = w.shape[1], group_count(weight.shape, group_size)
    padded = torch.nn.functional.pad(w.abs(), (0, groups * group_size - cols)).reshape(w.shape[0], groups, group_size)
    amax = padded.amax(dim=2)
    scale = _round_bf16(amax / qmax(bits))
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def expand_scales(scales: Tensor, weight_shape: tuple[int, ...] | torch.Size, group_size: int) -> Tensor:
    """The scale of every weight entry (the weight's shape) from (out, groups) scales."""
    cols = math.prod(weight_shape[1:])
    per = scales.reshape(weight_shape[0], group_count(weight_shape, group_size))
    full = per.repeat_interleave(group_size, dim=1)[:, :cols] if group_size else per.expand(-1, cols)
    return full.reshape(weight_shape)


def grouped_codes(weight: Tensor, bits: int, group_size: int, scales: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Integer codes (int8, the weight's shape) and (out, groups) scales: `scales` if given, else derived."""
    s = group_scales(weight, bits, group_size) if scales is None else scales.detach().float()
    q = qmax(bits)
    full = expand_scales(s, weight.shape, group_size)
    codes = torch.clamp(torch.round(weight.detach().float() / full), -q, q)
    return codes.to(torch.int8), s


def grouped_value(codes: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """codes * scale of each entry, computed exactly as the fake-quantized forward computes it."""
    return codes.float() * expand_scales(scales, codes.shape, group_size)


def quantize_codes(weight: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Integer codes (int8, same shape) and per-channel scales of `weight` at `bits` bits."""
    scale = channel_scales(weight, bits)
    q = qmax(bits)
    codes = torch.clamp(torch.round(weight.detach().float() / scale.view(_bshape(weight))), -q, q)
    return codes.to(torch.int8), scale


def dequantize(codes: Tensor, scale: Tensor) -> Tensor:
    """codes * scale, computed exactly as the fake-quantized forward computes it."""
    return codes.float() * scale.view(_bshape(codes))


def quantize_value(weight: Tensor, bits: int, group_size: int = 0, scales: Tensor | None = None) -> Tensor:
    """The float value a weight takes at `bits` bits (no gradient); with `group_size` or fixed `scales`,
    on that grid."""
    with torch.no_grad():
        if bits in QUANT_BITS and (group_size or scales is not None):
            full = expand_scales(
                group_scales(weight, bits, group_size) if scales is None else scales, weight.shape, group_size
            ).to(weight.dtype)
            q = qmax(bits)
            return torch.clamp(torch.round(weight / full), -q, q) * full
        if bits == 16:
            return weight.half().to(weight.dtype)
        if bits in QUANT_BITS:
            scale = channel_scales(weight, bits).to(weight.dtype)
            q = qmax(bits)
            return torch.clamp(torch.round(weight / scale.view(_bshape(weight))), -q, q) * scale.view(_bshape(weight))
        return weight.detach().clone()
