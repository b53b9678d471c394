"""Least-squares refit of a transformer block's output projections after heads or FFN neurons go.

Removing heads (neurons) drops input columns of the attention output (FFN down) projection, and what they
added to the block's output is lost. A refit solves for the remaining columns and the bias that best
reproduce the untouched projection's outputs on the calibration tokens (the "mask tuning" of Kwon et al.
2022, A Fast Post-Training Pruning Framework for Transformers): with x~ = [x; 1] the projection's input
and G = sum x~ x~^T over the calibration tokens (padding left out), [W' b'] = [W b] G[:, K] (G[K, K] +
lambda I)^-1, K the kept columns and the constant, lambda = REFIT_DAMP x the mean of diag G[K, K] (as GPTQ
damps its Hessian). G is taken on the untouched model, like the importance ranks, so a search keeps it
across candidates (StatsCache); later blocks' inputs are those of the untouched model, not of one with
earlier blocks already shrunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .calibration import Batches, LayerInputs, StatsCache, forward_over, real_rows
from .transformer_blocks import Block

REFIT_DAMP = 0.01


def refit_stats(
    model: nn.Module, layers: Sequence[str], calibration: Batches, cache: StatsCache | None = None
) -> dict[str, LayerInputs]:
    """Layer name -> the Gram matrix of [input; 1] over the calibration tokens ((in + 1)^2, float32), for
    the named Linear layers of `model` as it is: from `cache` where it has them, the rest in one pass."""
    source = getattr(calibration, "key", None)
    key = lambda name: ("block-refit", name, source)  # noqa: E731
    out: dict[str, LayerInputs] = {}
    for name in layers:
        found = cache.get(key(name)) if cache is not None and source is not None else None
        if found is not None:
            out[name] = found
    missing = [n for n in layers if n not in out]
    if not missing:
        return out
    found = {}
    hooks = []
    for name in missing:
        layer = model.get_submodule(name)
        size = layer.in_features + 1
        found[name] = LayerInputs(torch.zeros(size, size, dtype=torch.float64, device=layer.weight.device), 0)
        hooks.append(layer.register_forward_pre_hook(_accumulate(found[name], layer)))
    try:
        forward_over(model, calibration)
    finally:
        for h in hooks:
            h.remove()
    for name, inputs in found.items():
        inputs.gram = inputs.gram.float()  # summed in float64, kept in float32 (as calibration.py does)
        if cache is not None and source is not None:
            cache.put(key(name), inputs)
        out[name] = inputs
    return out


def _accumulate(into: LayerInputs, layer: nn.Linear) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        rows = real_rows(layer, args[0].detach()).reshape(-1, layer.in_features).double()
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        into.gram += rows.T @ rows
        into.rows += rows.shape[0]

    return hook


def refit_weights(
    weight: Tensor, bias: Tensor | None, stats: LayerInputs, keep: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """The refitted (weight of the kept columns, bias) of a Linear whose input columns not in `keep` go:
    [W b] G[:, K] (G[K, K] + lambda I)^-1 (module docstring), in the weight's dtype and device. A layer
    without a bias gets one (the fit's constant)."""
    gram = stats.gram.double()
    n = weight.shape[1]
    if gram.shape != (n + 1, n + 1):
        raise ValueError(f"refit: statistics of {gram.shape[0] - 1} input columns for a layer with {n}")
    full = torch.cat([weight.detach().double(), _bias(weight, bias).double().unsqueeze(1)], dim=1).to(gram.device)
    k = torch.tensor([*keep, n], dtype=torch.long, device=gram.device)
    g_kk = gram.index_select(0, k).index_select(1, k)
    damp = REFIT_DAMP * g_kk.diagonal().mean().clamp(min=1e-12)
    g_kk = g_kk + damp * torch.eye(len(k), dtype=gram.dtype, device=gram.device)
    cross = full @ gram.index_select(1, k)  # (out, |K|)
    solved = torch.linalg.solve(g_kk, cross.T).T  # g_kk is symmetric: cross g_kk^-1
    solved = solved.to(device=weight.device, dtype=weight.dtype)
    return solved[:, :-1].contiguous(), solved[:, -1].contiguous()


def _bias(weight: Tensor, bias: Tensor | None) -> Tensor:
    return bias.detach() if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)


def set_linear(model: nn.Module, name: str, weight: Tensor, bias: Tensor) -> None:
    """Overwrites the Linear `name`'s weight (same shape) and bias (adding one where it had none)."""
    layer: nn.Linear = model.get_submodule(name)  # type: ignore[assignment]
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is None:
            layer.bias = nn.Parameter(bias.clone(), requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.copy_(bias)


def head_columns(block: Block, heads: Sequence[int]) -> list[int]:
    """The out projection's input columns kept when `heads` (indices into the block's heads) go."""
    gone = set(heads)
    d = block.head_size
    return [h * d + i for h in range(block.heads) if h not in gone for i in range(d)]


__all__ = ["REFIT_DAMP", "head_columns", "refit_stats", "refit_weights", "set_linear"]
