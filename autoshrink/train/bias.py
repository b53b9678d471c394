"""Bias correction for candidates evaluated without a fine-tune (FinetuneConfig.bias_correction).

Pruning or quantizing a layer changes its weight from W to W'; on inputs x its output moves by
(W' - W) x, whose mean over the data shifts every following activation (Nagel et al. 2019, "Data-Free
Quantization", empirical bias correction). Here: one forward pass of the compressed model over the
calibration inputs records each such layer's mean input row x̄ (a Linear's input vector, a Conv's
unfolded patch, as the compressed model feeds it), and its bias gets (W - W') x̄, so the layer's mean
output on the calibration inputs is what the untouched weight gives on the same inputs. Layers: Linear
and Conv1d/2d (groups = 1) with a bias, whose weight has the untouched model's shape (low-rank and
structurally pruned layers are left as they are). A fine-tune learns the biases itself: this is for
post-training candidates only. BatchNorm re-estimation (which follows) absorbs such a shift where a
BatchNorm follows the layer; a transformer's LayerNorm does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..techniques.calibration import Batches, forward_over, input_rows, unsupported
from ..weights import weight_parametrizations


def correct_biases(small: nn.Module, source: nn.Module, batches: Batches) -> list[str]:
    """Correct the biases of `small`'s compressed layers (in place; see the module docstring) against
    `source`, the untouched model; return the corrected layers' names."""
    originals = dict(source.named_modules())
    layers: dict[str, nn.Module] = {}
    for name, m in small.named_modules():
        ref = originals.get(name)
        if (
            isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
            and unsupported(m) is None
            and m.bias is not None
            and weight_parametrizations(m)
            and isinstance(m, type(ref))
            and ref.weight.shape == m.weight.shape
        ):
            layers[name] = m
    if not layers:
        return []
    sums: dict[str, list[Any]] = {n: [None, 0] for n in layers}

    def hook(name: str, layer: nn.Module) -> Callable[..., None]:
        def add(module: nn.Module, args: tuple[Any, ...]) -> None:
            rows = input_rows(layer, args[0].detach()).double()
            total = rows.sum(0)
            sums[name][0] = total if sums[name][0] is None else sums[name][0] + total
            sums[name][1] += rows.shape[0]

        return add

    hooks = [m.register_forward_pre_hook(hook(n, m)) for n, m in layers.items()]
    try:
        forward_over(small, batches)
    finally:
        for h in hooks:
            h.remove()
    done = []
    with torch.no_grad():
        for name, m in layers.items():
            total, count = sums[name]
            if total is None or count == 0:
                continue
            mean: Tensor = total / count
            change = originals[name].weight.detach().double() - m.weight.detach().double()
            m.bias.add_((change.reshape(change.shape[0], -1) @ mean.to(change.device)).to(m.bias.dtype))
            done.append(name)
    return done
