"""Which output channels structured pruning removes: by weight magnitude, or activation-aware ("wanda").

"magnitude": the L2 norm of the channel's weights over its coupled group (torch-pruning's
GroupMagnitudeImportance). "wanda": removing output channel c of a layer removes feature c from the
inputs of every layer that reads it; to first order that takes ||W_K[:, c]||^2 * ||X_K,c||^2 from a
reader K's output -- its weight column(s) for the feature times the feature's energy over the
calibration inputs as K sees them (after BatchNorm and the activation). That is Wanda's score of K's
input feature summed over K's rows and kernel positions (the structured use of Wanda, as Wanda-sp and
FLAP rank channels); a channel's importance sums it over the group's readers (Linear, Conv1d/2d with
groups = 1). A group with no such reader is ranked by magnitude, and the skip says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .calibration import Batches, forward_over, input_rows, unsupported

_IN_FNS = (tp.pruner.function.prune_linear_in_channels, tp.pruner.function.prune_conv_in_channels)


def feature_energy(model: nn.Module, batches: Batches) -> dict[int, Tensor]:
    """{id(layer): the sum of squares of each input column over the calibration inputs} (float64, in the
    layout of input_rows: a Conv's channels times kernel positions) for every Linear and Conv1d/2d of
    `model` whose inputs can be unfolded; one forward pass in eval mode without gradients."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) and unsupported(m) is None]
    out = {id(m): torch.zeros(m.weight.shape[1:].numel(), dtype=torch.float64, device=m.weight.device) for m in layers}

    def hook(layer: nn.Module) -> Callable[..., None]:
        def add(module: nn.Module, args: tuple[Any, ...]) -> None:
            out[id(layer)] += input_rows(layer, args[0].detach()).double().pow(2).sum(0)

        return add

    hooks = [m.register_forward_pre_hook(hook(m)) for m in layers]
    try:
        forward_over(model, batches)
    finally:
        for h in hooks:
            h.remove()
    return out


def reader_scores(layer: nn.Module, energy: Tensor) -> Tensor | None:
    """Per input channel of `layer`: sum over its rows and kernel positions of W^2 times the input
    column's energy; None where the statistics do not match the layer's inputs (pruned since)."""
    w = layer.weight.detach()
    if energy.numel() != w.shape[1:].numel():
        return None
    per_col = w.double().pow(2).reshape(w.shape[0], -1).sum(0) * energy.to(w.device)  # (in * kernel,)
    return per_col.reshape(w.shape[1], -1).sum(1)


def activation_importance(group: Any, energy: dict[int, Tensor], channels: int) -> Tensor | None:
    """A score per root channel (of `channels`) of torch-pruning's `group` (see the module docstring),
    or None when no reader of the group has statistics."""
    found: list[tuple[Tensor, list[int]]] = []
    for i, (dep, idxs) in enumerate(group):
        layer = dep.layer
        if dep.pruning_fn not in _IN_FNS or id(layer) not in energy or getattr(layer, "groups", 1) != 1:
            continue
        scores = reader_scores(layer, energy[id(layer)])
        if scores is None:
            continue
        root = group[i].root_idxs
        keep = [(j, r) for j, r in zip(idxs, root) if r is not None]
        found.append((scores[[j for j, _ in keep]], [r for _, r in keep]))
    if not found:
        return None
    total = torch.zeros(channels, dtype=torch.float64)
    for scores, root in found:
        total.scatter_add_(0, torch.tensor(root), scores.cpu())
    return total


def channel_importance(group: Any, channels: int, energy: dict[int, Tensor] | None) -> tuple[Tensor | None, str | None]:
    """(score per channel of the group's root, lowest removed first; a note where "wanda" fell back to
    magnitude). `energy` None: magnitude."""
    if energy is not None:
        imp = activation_importance(group, energy, channels)
        if imp is not None:
            return imp, None
        note = "no Linear or Conv (groups = 1) reads its channels: ranked by magnitude, not activations"
    else:
        note = None
    return tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)(group), note
