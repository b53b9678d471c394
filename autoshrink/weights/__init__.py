"""The weight representation every stage reads: pruning masks, fake quantization, codes.

It sits below techniques/, measure/ and export/, so that measurement never imports a technique.
A compressed layer keeps its trainable weight as `parametrizations.weight.original` and computes with
`FakeQuant(PruneMask(original))`: masks stay in force and quantization simulated (straight-through)
through fine-tuning, bitwise the value the packed artifact decodes to. Quantization: b in 2..8 gives
symmetric codes in [-(2^(b-1)-1), 2^(b-1)-1], one scale per output channel (dim 0), max|w| / qmax
rounded to bfloat16 (2 bytes on disk; re-quantizing keeps codes and scales); b = 16 rounds to float16.
With a group size g, one such scale per g consecutive weights of a channel's flattened inputs (the
last group may be shorter). Scales are derived from the weight unless the quantizer holds them fixed
(GPTQ chooses codes for scales set before rounding, so they cannot be re-derived from the result).

Modules: codes.py (scales and integer codes), codebook.py (k-means codebooks), parametrize.py (the
parametrizations and how stages attach, find and strip them); every name is re-exported here.
"""

from __future__ import annotations

from .codebook import (
    KMEANS_ITERS,
    REASSIGN_EVERY,
    Codebook,
    kmeans_1d,
)
from .codes import (
    QUANT_BITS,
    channel_scales,
    dequantize,
    expand_scales,
    group_count,
    group_scales,
    grouped_codes,
    grouped_value,
    qmax,
    quantize_codes,
    quantize_value,
)
from .parametrize import (
    FakeQuant,
    PruneMask,
    add_codebook,
    add_fake_quant,
    add_mask,
    per_channel,
    set_weight,
    strip_parametrizations,
    unparametrize,
    weight_bits,
    weight_codebook,
    weight_mask,
    weight_parametrizations,
    weight_quantizer,
)

__all__ = [
    "Codebook",
    "FakeQuant",
    "KMEANS_ITERS",
    "PruneMask",
    "QUANT_BITS",
    "REASSIGN_EVERY",
    "add_codebook",
    "add_fake_quant",
    "add_mask",
    "channel_scales",
    "dequantize",
    "expand_scales",
    "group_count",
    "group_scales",
    "grouped_codes",
    "grouped_value",
    "kmeans_1d",
    "per_channel",
    "qmax",
    "quantize_codes",
    "quantize_value",
    "set_weight",
    "strip_parametrizations",
    "unparametrize",
    "weight_bits",
    "weight_codebook",
    "weight_mask",
    "weight_parametrizations",
    "weight_quantizer",
]
