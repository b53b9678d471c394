"""Weight quantization: 2..8-bit signed symmetric integer codes per output channel, or float16.

Implemented as a fake-quantization parametrization with a straight-through estimator
(`weights.FakeQuant`), applied after pruning so pruned entries stay exactly zero.
"""
from __future__ import annotations

from torch import nn

from ..policy import LayerPolicy
from .layers import weight_layers
from .registry import Skipped, Technique, register
from .weights import add_fake_quant


@register
class Quantize(Technique):
    """Per-channel weight quantization (LayerPolicy.bits < 32)."""

    name = "quantize"
    order = 40

    def selects(self, lp: LayerPolicy) -> bool:
        return lp.bits != 32

    def apply(self, model: nn.Module, targets: dict[str, LayerPolicy], context: dict) -> list[Skipped]:
        skipped: list[Skipped] = []
        for name, lp in targets.items():
            layers = weight_layers(model.get_submodule(name))
            if isinstance(layers, str):
                skipped.append(Skipped(name, self.name, layers))
                continue
            for layer in layers:
                add_fake_quant(layer, lp.bits)
        return skipped
