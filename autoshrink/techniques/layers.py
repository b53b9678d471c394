"""Which modules the weight techniques (pruning, quantization) can handle."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from torch import nn

from ..policy import LayerPolicy
from .lowrank import Factorized
from .registry import Skipped, Technique

# Types whose `weight` has output channels on dim 0 (the per-channel quantization axis).
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def weight_layers(module: nn.Module) -> list[nn.Module] | str:
    """The leaf layers whose weights a policy on `module` acts on, or why there are none.

    A Factorized module yields both factors; a supported layer yields itself.
    """
    if isinstance(module, Factorized):
        return [module.first, module.second]
    if isinstance(module, WEIGHT_LAYERS):
        return [module]
    names = ", ".join(t.__name__ for t in WEIGHT_LAYERS)
    return f"{type(module).__name__} is not supported (weight techniques handle {names})"


class LayerwiseTechnique(Technique):
    """A technique acting on each selected layer's weight(s) independently (pruning, quantization)."""

    def refuses(self, layer: nn.Module, lp: LayerPolicy) -> str | None:
        """Why this technique cannot act on `layer` as `lp` asks (it is then skipped), or None."""
        return None

    @abstractmethod
    def apply_layer(self, layer: nn.Module, lp: LayerPolicy, context: dict[str, Any]) -> None:
        """Apply the technique to one leaf layer's weight (`context`: as `apply` has it)."""

    def apply(self, model: nn.Module, targets: dict[str, LayerPolicy], context: dict[str, Any]) -> list[Skipped]:
        skipped: list[Skipped] = []
        for name, lp in targets.items():
            layers = weight_layers(model.get_submodule(name))
            if isinstance(layers, str):
                skipped.append(Skipped(name, self.name, layers))
                continue
            reasons = [why for why in map(lambda leaf: self.refuses(leaf, lp), layers) if why]
            if reasons:
                skipped.append(Skipped(name, self.name, reasons[0]))
                continue
            for layer in layers:
                self.apply_layer(layer, lp, context)
        return skipped
