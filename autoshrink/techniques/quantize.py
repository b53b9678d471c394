"""Weight quantization: 2..8-bit signed symmetric integer codes per output channel, or float16.

Implemented as a fake-quantization parametrization with a straight-through estimator
(`weights.FakeQuant`), applied after pruning so pruned entries stay exactly zero.
"""
from __future__ import annotations

from torch import nn

from ..policy import LayerPolicy
from .layers import LayerwiseTechnique
from .registry import register
from ..weights import add_fake_quant


@register
class Quantize(LayerwiseTechnique):
    """Per-channel weight quantization (LayerPolicy.bits < 32)."""

    name = "quantize"
    order = 40

    def selects(self, lp: LayerPolicy) -> bool:
        return lp.bits != 32

    def apply_layer(self, layer: nn.Module, lp: LayerPolicy) -> None:
        add_fake_quant(layer, lp.bits)
