"""Weight quantization: 2..8-bit signed symmetric integer codes per output channel or per group of
inputs, float16, or a trained k-means codebook (LayerPolicy.codebook = "kmeans": 2^bits - 1 shared
values per layer).

Implemented as parametrizations (`weights.FakeQuant`, straight-through estimator; `weights.Codebook`,
centroids trained), applied after pruning so pruned entries stay exactly zero. rounding="gptq" sets
the codes by GPTQ (gptq.py) from the layer's calibration statistics and fixes the scales it used; a
layer without statistics (calibration.py says why) is rounded to nearest.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..policy import LayerPolicy
from ..weights import add_codebook, add_fake_quant, set_weight, weight_mask
from .calibration import LayerInputs, pop_stats
from .gptq import gptq
from .layers import LayerwiseTechnique
from .registry import register


def quantize_layer(layer: nn.Module, lp: LayerPolicy, stats: LayerInputs | None = None) -> None:
    """Attach the quantization `lp` asks for (nothing at 32 bits); GPTQ codes where `lp` asks for them
    and `stats` are given, else codes rounded to nearest."""
    if lp.bits == 32:
        return
    if lp.codebook == "kmeans":
        add_codebook(layer, lp.bits)
        return
    if lp.rounding == "gptq" and stats is not None and lp.bits <= 8:
        mask = weight_mask(layer)
        q, scales = gptq(layer.weight, stats.hessian(), lp.bits, group_size=lp.group_size, mask=mask)
        set_weight(layer, q)
        add_fake_quant(layer, lp.bits, lp.group_size, scales)
        return
    add_fake_quant(layer, lp.bits, lp.group_size)


@register
class Quantize(LayerwiseTechnique):
    """Per-channel or group-wise weight quantization, or a codebook (LayerPolicy.bits < 32)."""

    name = "quantize"
    order = 40

    def selects(self, lp: LayerPolicy) -> bool:
        return lp.bits != 32

    def apply_layer(self, layer: nn.Module, lp: LayerPolicy, context: dict[str, Any]) -> None:
        stats = pop_stats(context, layer) if lp.rounding == "gptq" else None
        quantize_layer(layer, lp, stats)
