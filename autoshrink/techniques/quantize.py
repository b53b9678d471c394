"""Weight quantization: 2..8-bit signed symmetric integer codes per output channel, float16, or a
trained k-means codebook (LayerPolicy.codebook = "kmeans": 2^bits - 1 shared values per layer).

Implemented as parametrizations (`weights.FakeQuant`, straight-through estimator; `weights.Codebook`,
centroids trained), applied after pruning so pruned entries stay exactly zero.
"""

from __future__ import annotations

from torch import nn

from ..policy import LayerPolicy
from ..weights import add_codebook, add_fake_quant
from .layers import LayerwiseTechnique
from .registry import register


def quantize_layer(layer: nn.Module, lp: LayerPolicy) -> None:
    """Attach the quantization `lp` asks for (nothing at 32 bits)."""
    if lp.bits == 32:
        return
    if lp.codebook == "kmeans":
        add_codebook(layer, lp.bits)
    else:
        add_fake_quant(layer, lp.bits)


@register
class Quantize(LayerwiseTechnique):
    """Per-channel weight quantization or a codebook (LayerPolicy.bits < 32)."""

    name = "quantize"
    order = 40

    def selects(self, lp: LayerPolicy) -> bool:
        return lp.bits != 32

    def apply_layer(self, layer: nn.Module, lp: LayerPolicy) -> None:
        quantize_layer(layer, lp)
