"""The weight representation every stage reads: pruning masks, fake quantization, codes.

It sits below techniques/ (which attach these parametrizations), measure/ (which packs and times
what they leave) and export/, so that measurement never imports a technique.

A compressed layer keeps its trainable weight as `parametrizations.weight.original`; the weight
the layer computes with is `FakeQuant(PruneMask(original))`. Masks therefore stay in force and
quantization stays simulated (straight-through estimator) through fine-tuning, and the forward
value is bitwise the value the packed artifact decodes to.

Quantization: b in 2..8 gives signed symmetric integer codes in [-(2^(b-1)-1), 2^(b-1)-1], one
scale per output channel (dim 0), scale = max|w| / qmax rounded to the nearest bfloat16 value (2 bytes
on disk, and re-quantizing a quantized weight gives the same codes and scales). b = 16 rounds to
float16.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

QUANT_BITS = (2, 3, 4, 5, 6, 7, 8)


def qmax(bits: int) -> int:
    """Largest code magnitude for signed symmetric `bits`-bit codes."""
    return 2 ** (bits - 1) - 1


def _round_bf16(x: Tensor) -> Tensor:
    """Round float32 values to the nearest bfloat16 value (relative error <= 2^-9).

    With that error bound the largest |w| of a channel always maps to code +-qmax (qmax <= 127), so
    re-quantizing a quantized weight reproduces the same scale and codes exactly.
    """
    return x.to(torch.bfloat16).to(torch.float32)


def channel_scales(weight: Tensor, bits: int) -> Tensor:
    """Per-output-channel scales (float32 holding bfloat16 values) for `bits`-bit codes."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    amax = w.abs().amax(dim=1) if w.shape[1] else torch.zeros(w.shape[0])
    scale = _round_bf16(amax / qmax(bits))
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def _bshape(weight: Tensor) -> tuple[int, ...]:
    return (weight.shape[0],) + (1,) * (weight.dim() - 1)


def quantize_codes(weight: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Integer codes (int8, same shape) and per-channel scales of `weight` at `bits` bits."""
    scale = channel_scales(weight, bits)
    q = qmax(bits)
    codes = torch.clamp(torch.round(weight.detach().float() / scale.view(_bshape(weight))), -q, q)
    return codes.to(torch.int8), scale


def dequantize(codes: Tensor, scale: Tensor) -> Tensor:
    """codes * scale, computed exactly as the fake-quantized forward computes it."""
    return codes.float() * scale.view(_bshape(codes))


def quantize_value(weight: Tensor, bits: int) -> Tensor:
    """The float value a weight takes at `bits` bits (no gradient)."""
    with torch.no_grad():
        if bits == 16:
            return weight.half().to(weight.dtype)
        if bits in QUANT_BITS:
            scale = channel_scales(weight, bits).to(weight.dtype)
            q = qmax(bits)
            return torch.clamp(torch.round(weight / scale.view(_bshape(weight))), -q, q) * scale.view(_bshape(weight))
        return weight.detach().clone()


class _StraightThrough(torch.autograd.Function):
    """Forward returns the quantized value; backward passes the gradient to the float weight."""

    @staticmethod
    def forward(ctx, weight: Tensor, quantized: Tensor) -> Tensor:  # type: ignore[override]
        return quantized

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class PruneMask(nn.Module):
    """Parametrization multiplying the weight by a fixed 0/1 mask (kept through training)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask

    def extra_repr(self) -> str:
        return f"kept={int(self.mask.sum())}/{self.mask.numel()}"


class FakeQuant(nn.Module):
    """Parametrization: quantize to `bits` (2..8 integer codes, or 16 = float16), STE gradient."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        if bits not in QUANT_BITS and bits != 16:
            raise ValueError(f"FakeQuant bits must be 2..8 or 16, got {bits}")
        self.bits = int(bits)

    def forward(self, weight: Tensor) -> Tensor:
        return _StraightThrough.apply(weight, quantize_value(weight, self.bits))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def weight_parametrizations(module: nn.Module) -> list[nn.Module]:
    """The parametrizations on `module.weight`, outermost last (empty if none)."""
    if parametrize.is_parametrized(module, "weight"):
        return list(module.parametrizations["weight"])  # type: ignore[index]
    return []


def weight_mask(module: nn.Module) -> Tensor | None:
    """The pruning mask of `module.weight`, or None."""
    for p in weight_parametrizations(module):
        if isinstance(p, PruneMask):
            return p.mask
    return None


def weight_bits(module: nn.Module) -> int:
    """Bits the weight of `module` is quantized to (32 if not quantized)."""
    for p in weight_parametrizations(module):
        if isinstance(p, FakeQuant):
            return p.bits
    return 32


def add_mask(module: nn.Module, mask: Tensor) -> None:
    """Attach (or combine with the existing) pruning mask; must precede quantization."""
    existing = weight_mask(module)
    if existing is not None:
        existing.mul_(mask.to(torch.bool))
        return
    if weight_bits(module) != 32:
        raise RuntimeError("a pruning mask must be added before quantization (order: prune, then quantize)")
    parametrize.register_parametrization(module, "weight", PruneMask(mask), unsafe=True)


def add_fake_quant(module: nn.Module, bits: int) -> None:
    """Attach fake quantization at `bits` to module.weight."""
    if weight_bits(module) != 32:
        raise RuntimeError("weight is already quantized")
    parametrize.register_parametrization(module, "weight", FakeQuant(bits), unsafe=True)


def strip_parametrizations(model: nn.Module) -> nn.Module:
    """Bake every parametrization into a plain tensor, in place (values are kept exactly).

    torch's `remove_parametrizations` deletes the property from the module's injected class, and a
    deepcopy of a parametrized module shares that class with the original -- so stripping a copy
    that way would break the original. Here only the instance is changed.
    """
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        plist = module.parametrizations  # type: ignore[union-attr]
        baked: dict[str, tuple[Tensor, bool, bool]] = {}
        with torch.no_grad():
            for name in list(plist.keys()):
                original = plist[name].original
                baked[name] = (getattr(module, name).detach().clone(), isinstance(original, nn.Parameter),
                               original.requires_grad)
        module.__class__ = module.__class__.__bases__[0]
        del module._modules["parametrizations"]
        for name, (value, is_param, requires_grad) in baked.items():
            if is_param:
                module.register_parameter(name, nn.Parameter(value, requires_grad=requires_grad))
            else:
                module.register_buffer(name, value)
    return model


def unparametrize(model: nn.Module) -> None:
    """Remove every weight parametrization in place, keeping the trainable original as `weight`, with
    its pruning mask (if any) multiplied in, so pruned entries stay exactly zero. Quantization is
    dropped (re-attach it with `add_fake_quant`). The Parameter objects are kept (optimizer state
    stays valid). Used between the rounds of gradual structured pruning."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module, "weight"):
            continue
        original = module.parametrizations["weight"].original  # type: ignore[index]
        mask = weight_mask(module)
        with torch.no_grad():
            if mask is not None:
                original.mul_(mask)
        module.__class__ = module.__class__.__bases__[0]  # see strip_parametrizations: only this instance
        del module._modules["parametrizations"]
        module.register_parameter("weight", original)
