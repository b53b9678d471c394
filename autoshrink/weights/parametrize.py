"""The parametrizations a compressed layer's weight computes with (PruneMask, FakeQuant, Codebook), and
how stages attach, find and strip them (see autoshrink.weights)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .codebook import Codebook, kmeans_1d
from .codes import QUANT_BITS, grouped_codes, quantize_value


class _StraightThrough(torch.autograd.Function):
    """Forward returns the quantized value; backward passes the gradient to the float weight."""

    @staticmethod
    def forward(ctx, weight: Tensor, quantized: Tensor) -> Tensor:  # type: ignore[override]
        return quantized

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class PruneMask(nn.Module):
    """Parametrization multiplying the weight by a fixed 0/1 mask (kept through training). `pattern`:
    "2:4" where the mask has that shape (the gradual ramp then leaves it as it is), else ""."""

    def __init__(self, mask: Tensor, pattern: str = "") -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.pattern = pattern

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask

    def extra_repr(self) -> str:
        return f"kept={int(self.mask.sum())}/{self.mask.numel()}"


class FakeQuant(nn.Module):
    """Parametrization: quantize to `bits` (2..8 integer codes, or 16 = float16), STE gradient.

    group_size: 0 = one scale per output channel, else per that many inputs of a channel. scales:
    (out, groups) fixed scales (a buffer, saved with the model), or None to derive them from the
    weight at every forward."""

    def __init__(self, bits: int, group_size: int = 0, scales: Tensor | None = None) -> None:
        super().__init__()
        if bits not in QUANT_BITS and bits != 16:
            raise ValueError(f"FakeQuant bits must be 2..8 or 16, got {bits}")
        if (group_size or scales is not None) and bits not in QUANT_BITS:
            raise ValueError(f"group scales need 2..8-bit codes, got {bits} bits")
        self.bits = int(bits)
        self.group_size = int(group_size)
        self.scales: Tensor | None
        self.register_buffer("scales", None if scales is None else scales.detach().float().clone())

    def forward(self, weight: Tensor) -> Tensor:
        return _StraightThrough.apply(weight, quantize_value(weight, self.bits, self.group_size, self.scales))

    def codes(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Integer codes and (out, groups) scales of `weight` under this quantizer."""
        return grouped_codes(weight, self.bits, self.group_size, self.scales)

    def extra_repr(self) -> str:
        extra = f", group_size={self.group_size}" if self.group_size else ""
        return f"bits={self.bits}{extra}" + (", fixed scales" if self.scales is not None else "")


def weight_parametrizations(module: nn.Module) -> list[nn.Module]:
    """The parametrizations on `module.weight`, outermost last (empty if none)."""
    if parametrize.is_parametrized(module, "weight"):
        return list(module.parametrizations["weight"])  # type: ignore[index]
    return []


def weight_mask(module: nn.Module) -> Tensor | None:
    """The pruning mask of `module.weight`, or None."""
    pm = _find(module, PruneMask)
    return None if pm is None else pm.mask


def weight_bits(module: nn.Module) -> int:
    """Bits of the weight's linear (per-channel integer) codes or float16 (32 if not linearly
    quantized; a codebook weight is 32 here, as its values are not on a linear grid -- runtimes and
    export treat it as the float weight it is; see `weight_codebook`)."""
    fq = weight_quantizer(module)
    return 32 if fq is None else fq.bits


def _find(module: nn.Module, kind: type[nn.Module]) -> nn.Module | None:
    return next((p for p in weight_parametrizations(module) if isinstance(p, kind)), None)


def weight_quantizer(module: nn.Module) -> FakeQuant | None:
    """The linear quantizer (FakeQuant) of `module.weight`, or None."""
    return _find(module, FakeQuant)  # type: ignore[return-value]


def per_channel(module: nn.Module) -> bool:
    """Whether the weight's codes have one scale per output channel (what int8 kernels run)."""
    fq = weight_quantizer(module)
    return fq is None or fq.group_size == 0


def weight_codebook(module: nn.Module) -> Codebook | None:
    """The codebook of `module.weight`, or None."""
    return _find(module, Codebook)  # type: ignore[return-value]


def _quantized(module: nn.Module) -> bool:
    return weight_bits(module) != 32 or weight_codebook(module) is not None


def set_weight(module: nn.Module, value: Tensor) -> None:
    """Write `value` into the weight's trainable tensor (the parametrization's original, if any)."""
    target = module.parametrizations["weight"].original if weight_parametrizations(module) else module.weight
    with torch.no_grad():
        target.copy_(value)


def add_mask(module: nn.Module, mask: Tensor, pattern: str = "") -> None:
    """Attach (or combine with the existing) pruning mask; must precede quantization. `pattern`: "2:4"
    where `mask` has that shape (PruneMask)."""
    existing = _find(module, PruneMask)
    if existing is not None:
        existing.mask.mul_(mask.to(torch.bool))
        existing.pattern = existing.pattern or pattern
        return
    if _quantized(module):
        raise RuntimeError("a pruning mask must be added before quantization (order: prune, then quantize)")
    parametrize.register_parametrization(module, "weight", PruneMask(mask, pattern), unsafe=True)


def add_fake_quant(module: nn.Module, bits: int, group_size: int = 0, scales: Tensor | None = None) -> None:
    """Attach fake quantization at `bits` to module.weight (group scales and fixed scales: FakeQuant)."""
    if _quantized(module):
        raise RuntimeError("weight is already quantized")
    fq = FakeQuant(bits, group_size, scales)
    parametrize.register_parametrization(module, "weight", fq, unsafe=True)


def add_codebook(module: nn.Module, bits: int, centroids: Tensor | None = None) -> Codebook:
    """Attach a `bits`-bit codebook to module.weight: `centroids` (2^bits - 1 values), or k-means of
    the weight's current nonzero values (`kmeans_1d`)."""
    if _quantized(module):
        raise RuntimeError("weight is already quantized")
    if centroids is None:
        w = module.weight.detach().float()
        centroids = kmeans_1d(w[w != 0], 2**bits - 1)
    book = Codebook(bits, centroids)
    parametrize.register_parametrization(module, "weight", book, unsafe=True)
    return book


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
                baked[name] = (
                    getattr(module, name).detach().clone(),
                    isinstance(original, nn.Parameter),
                    original.requires_grad,
                )
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
