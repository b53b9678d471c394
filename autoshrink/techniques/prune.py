"""Unstructured pruning: exactly round(s * n) weight entries of a layer set to zero, chosen by the
layer policy's criterion.

"magnitude": the smallest |w|. "wanda" (Sun et al. 2024): the smallest |w| * ||X_j|| (the norm of the
entry's input feature over the calibration data), compared within each output row: every row loses
the same count, the first rows one more where round(s * n) does not divide evenly. "sparsegpt":
sparsegpt.py, which also updates the weights kept. The mask is a parametrization (`weights.PruneMask`),
so pruned entries stay zero through fine-tuning. Ties are broken by position (stable sort), so results
are deterministic. A layer without calibration statistics (calibration.py says why) is pruned by
magnitude.

Sparsity "2:4" (semi-structured): in every row of the weight (flattened to (out, in)), each group of 4
consecutive entries keeps its 2 highest-scoring entries, the score being the criterion's (|w|, or
|w| * ||X_j|| for "wanda"; "sparsegpt" chooses per group of 4 columns as it goes). Rows whose length is
not a multiple of 4 cannot hold the pattern: such a layer is skipped, with the reason.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..policy import SEMI_STRUCTURED, LayerPolicy
from ..weights import add_mask, set_weight
from .calibration import pop_stats
from .layers import LayerwiseTechnique
from .registry import register
from .sparsegpt import sparsegpt


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


def semi_structured_mask(score: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping, in each row (dims after the first flattened) and each group of 4 consecutive
    entries, the 2 of highest `score` (ties: the later position kept, as the stable sort drops the first)."""
    rows = score.detach().float().reshape(score.shape[0], -1)
    if rows.shape[1] % 4:
        raise ValueError(f"rows of {rows.shape[1]} entries cannot hold the 2:4 pattern (not a multiple of 4)")
    groups = rows.reshape(rows.shape[0], -1, 4)
    order = torch.argsort(groups, dim=-1, stable=True)
    mask = torch.ones_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order[..., :2], False)
    return mask.view_as(score)


def wanda_mask(weight: torch.Tensor, feature_norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask dropping the round(sparsity * n) entries of smallest |w| * ||X_j||, row by row: each of
    the `out` rows drops total // out, the first total % out rows one more."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    rows = w.shape[0]
    total = int(round(sparsity * w.numel()))
    score = w.abs() * feature_norms.to(w.device).float().unsqueeze(0)
    order = torch.argsort(score, dim=1, stable=True)
    counts = torch.full((rows,), total // rows, device=w.device)
    counts[: total % rows] += 1
    drop = torch.arange(w.shape[1], device=w.device).unsqueeze(0) < counts.unsqueeze(1)  # in score order
    mask = torch.ones_like(w, dtype=torch.bool)
    mask.scatter_(1, order, ~drop)
    return mask.view_as(weight)


@register
class Prune(LayerwiseTechnique):
    """Unstructured pruning (LayerPolicy.sparsity > 0, structured False) by the policy's criterion."""

    name = "prune"
    order = 30

    def selects(self, lp: LayerPolicy) -> bool:
        return lp.sparsity > 0 and not lp.structured

    def refuses(self, layer: nn.Module, lp: LayerPolicy) -> str | None:
        inputs = layer.weight[0].numel()
        if lp.semi_structured and inputs % 4:
            return f"{SEMI_STRUCTURED} needs rows of a multiple of 4 weights; this layer's rows have {inputs}"
        return None

    def apply_layer(self, layer: nn.Module, lp: LayerPolicy, context: dict[str, Any]) -> None:
        stats = None
        pattern = lp.pattern
        if lp.criterion != "magnitude":
            stats = pop_stats(context, layer, keep=lp.calibrated and lp.rounding == "gptq")
        if stats is None:
            w = layer.weight
            mask = semi_structured_mask(w.abs()) if pattern else magnitude_mask(w, lp.sparsity)
            add_mask(layer, mask, pattern=pattern)
        elif lp.criterion == "wanda":
            norms = stats.feature_norms
            if pattern:
                w = layer.weight.detach().float().reshape(layer.weight.shape[0], -1)
                mask = semi_structured_mask(w.abs() * norms.to(w.device).float().unsqueeze(0)).view_as(layer.weight)
            else:
                mask = wanda_mask(layer.weight, norms, lp.sparsity)
            add_mask(layer, mask, pattern=pattern)
        else:
            updated, keep = sparsegpt(layer.weight, stats.hessian(), lp.sparsity, semi_structured=bool(pattern))
            set_weight(layer, updated)
            add_mask(layer, keep, pattern=pattern)
