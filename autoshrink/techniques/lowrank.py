"""Low-rank factorization by truncated SVD.

Linear(in, out) -> Linear(in, k, bias=False) then Linear(k, out).
Conv{1,2}d(cin, cout, kernel) -> Conv(cin, k, kernel, same stride/padding/dilation, no bias) then
a 1x1 Conv(k, cout). k = max(1, round(rank * min(out, cin * prod(kernel)))).
Applied only where the two factors hold fewer parameters than the original weight; grouped
convolutions and other layer types are skipped and reported.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..policy import LayerPolicy
from .registry import Skipped, Technique, register


class Factorized(nn.Module):
    """A layer replaced by two factors: `second(first(x))`."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first = first
        self.second = second

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))


def target_rank(weight_shape: tuple[int, ...], rank: float) -> int:
    """Number of singular values kept for a weight of this shape at rank fraction `rank`."""
    out = weight_shape[0]
    inner = math.prod(weight_shape[1:])
    return max(1, int(round(rank * min(out, inner))))


def factor_params(weight_shape: tuple[int, ...], k: int) -> int:
    """Weight parameters of the two factors (biases excluded)."""
    return k * (math.prod(weight_shape[1:]) + weight_shape[0])


def svd_factors(weight: Tensor, k: int) -> tuple[Tensor, Tensor]:
    w = weight.detach().double().reshape(weight.shape[0], -1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:k].sqrt()
    a = (root[:, None] * vh[:k]).to(weight.dtype)  # k x inner
    b = (u[:, :k] * root[None, :]).to(weight.dtype)  # out x k
    return a, b


def factorize(layer: nn.Module, rank: float) -> nn.Module | str:
    """Return the factorized replacement of `layer`, or a reason why it is left as is."""
    if isinstance(layer, nn.Linear):
        shape = tuple(layer.weight.shape)
        k = target_rank(shape, rank)
        if factor_params(shape, k) >= layer.weight.numel():
            return (
                f"rank {rank} keeps {k} of {min(shape)} singular values: {factor_params(shape, k)} factor weights "
                f">= {layer.weight.numel()} original; no saving"
            )
        a, b = svd_factors(layer.weight, k)
        dev, dt = layer.weight.device, layer.weight.dtype
        first = nn.Linear(layer.in_features, k, bias=False, device=dev, dtype=dt)
        second = nn.Linear(k, layer.out_features, bias=layer.bias is not None, device=dev, dtype=dt)
        with torch.no_grad():
            first.weight.copy_(a)
            second.weight.copy_(b)
            if layer.bias is not None:
                second.bias.copy_(layer.bias)
        return Factorized(first, second)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and type(layer) in (nn.Conv1d, nn.Conv2d):
        if layer.groups != 1:
            return f"grouped convolution (groups={layer.groups}) is not factorized"
        if layer.padding_mode != "zeros":
            return f"padding_mode={layer.padding_mode!r} is not supported for factorization"
        shape = tuple(layer.weight.shape)
        k = target_rank(shape, rank)
        if factor_params(shape, k) >= layer.weight.numel():
            return (
                f"rank {rank} keeps {k} channels: {factor_params(shape, k)} factor weights "
                f">= {layer.weight.numel()} original; no saving"
            )
        a, b = svd_factors(layer.weight, k)
        conv = type(layer)
        dev, dt = layer.weight.device, layer.weight.dtype
        first = conv(
            layer.in_channels,
            k,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=False,
            device=dev,
            dtype=dt,
        )
        second = conv(k, layer.out_channels, 1, bias=layer.bias is not None, device=dev, dtype=dt)
        with torch.no_grad():
            first.weight.copy_(a.reshape(first.weight.shape))
            second.weight.copy_(b.reshape(second.weight.shape))
            if layer.bias is not None:
                second.bias.copy_(layer.bias)
        return Factorized(first, second)
    return f"{type(layer).__name__} is not factorized (only Linear, Conv1d and Conv2d)"


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@register
class LowRank(Technique):
    """Truncated-SVD factorization (LayerPolicy.rank < 1)."""

    name = "lowrank"
    order = 10

    def selects(self, lp: LayerPolicy) -> bool:
        return lp.rank < 1.0

    def apply(self, model: nn.Module, targets: dict[str, LayerPolicy], context: dict) -> list[Skipped]:
        skipped: list[Skipped] = []
        done: list[str] = context.setdefault("factorized", [])
        for name, lp in targets.items():
            layer = model.get_submodule(name)
            result = factorize(layer, lp.rank)
            if isinstance(result, str):
                skipped.append(Skipped(name, self.name, result))
            else:
                _set_submodule(model, name, result)
                done.append(name)
        return skipped
