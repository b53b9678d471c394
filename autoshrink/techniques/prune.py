"""Unstructured magnitude pruning: exactly round(s * n) weight entries of a layer set to zero.

The mask is a parametrization (`weights.PruneMask`), so pruned entries stay zero through
fine-tuning. Ties in magnitude are broken by position (stable sort), so results are deterministic.
"""

from __future__ import annotations

import torch
from torch import nn

from ..policy import LayerPolicy
from ..weights import add_mask
from .layers import LayerwiseTechnique
from .registry import register


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping all but the round(sparsity * n) smallest-magnitude entries."""
    return prune_smallest(weight, int(round(sparsity * weight.numel())))


def prune_smallest(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask dropping exactly the `k` smallest-magnitude entries (ties: lower position first)."""
    n = weight.numel()
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        mask[order[:k]] = False
    return mask.view_as(weight)


@register
class MagnitudePrune(LayerwiseTechnique):
    """Unstructured magnitude pruning (LayerPolicy.sparsity > 0, structured False)."""

    name = "prune"
    order = 30

    def selects(self, lp: LayerPolicy) -> bool:
        return lp.sparsity > 0 and not lp.structured

    def apply_layer(self, layer: nn.Module, lp: LayerPolicy) -> None:
        add_mask(layer, magnitude_mask(layer.weight, lp.sparsity))
