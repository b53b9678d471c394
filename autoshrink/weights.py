"""The weight representation every stage reads: pruning masks, fake quantization, codes.

It sits below techniques/, measure/ and export/, so that measurement never imports a technique.
A compressed layer keeps its trainable weight as `parametrizations.weight.original` and computes with
`FakeQuant(PruneMask(original))`: masks stay in force and quantization simulated (straight-through)
through fine-tuning, bitwise the value the packed artifact decodes to. Quantization: b in 2..8 gives
symmetric codes in [-(2^(b-1)-1), 2^(b-1)-1], one scale per output channel (dim 0), max|w| / qmax
rounded to bfloat16 (2 bytes on disk; re-quantizing keeps codes and scales); b = 16 rounds to float16.
With a group size g, one such scale per g consecutive weights of a channel's flattened inputs (the
last group may be shorter). Scales are derived from the weight unless the quantizer holds them fixed
(GPTQ chooses codes for scales set before rounding, so they cannot be re-derived from the result).
"""

from __future__ import annotations

import math

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


def group_count(weight_shape: tuple[int, ...] | torch.Size, group_size: int) -> int:
    """Scales per output channel: 1 per channel, else ceil(inputs / group_size)."""
    cols = math.prod(weight_shape[1:])
    return max(1, -(-cols // group_size)) if group_size else 1


def group_scales(weight: Tensor, bits: int, group_size: int) -> Tensor:
    """Scales (out, groups), float32 holding bfloat16 values: max|w| / qmax of each group (1 where all zero)."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    if not group_size:
        return channel_scales(weight, bits).reshape(-1, 1)
    cols, groups = w.shape[1], group_count(weight.shape, group_size)
    padded = torch.nn.functional.pad(w.abs(), (0, groups * group_size - cols)).reshape(w.shape[0], groups, group_size)
    amax = padded.amax(dim=2)
    scale = _round_bf16(amax / qmax(bits))
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def expand_scales(scales: Tensor, weight_shape: tuple[int, ...] | torch.Size, group_size: int) -> Tensor:
    """The scale of every weight entry (the weight's shape) from (out, groups) scales."""
    cols = math.prod(weight_shape[1:])
    per = scales.reshape(weight_shape[0], group_count(weight_shape, group_size))
    full = per.repeat_interleave(group_size, dim=1)[:, :cols] if group_size else per.expand(-1, cols)
    return full.reshape(weight_shape)


def grouped_codes(weight: Tensor, bits: int, group_size: int, scales: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Integer codes (int8, the weight's shape) and (out, groups) scales: `scales` if given, else derived."""
    s = group_scales(weight, bits, group_size) if scales is None else scales.detach().float()
    q = qmax(bits)
    full = expand_scales(s, weight.shape, group_size)
    codes = torch.clamp(torch.round(weight.detach().float() / full), -q, q)
    return codes.to(torch.int8), s


def grouped_value(codes: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """codes * scale of each entry, computed exactly as the fake-quantized forward computes it."""
    return codes.float() * expand_scales(scales, codes.shape, group_size)


def quantize_codes(weight: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Integer codes (int8, same shape) and per-channel scales of `weight` at `bits` bits."""
    scale = channel_scales(weight, bits)
    q = qmax(bits)
    codes = torch.clamp(torch.round(weight.detach().float() / scale.view(_bshape(weight))), -q, q)
    return codes.to(torch.int8), scale


def dequantize(codes: Tensor, scale: Tensor) -> Tensor:
    """codes * scale, computed exactly as the fake-quantized forward computes it."""
    return codes.float() * scale.view(_bshape(codes))


def quantize_value(weight: Tensor, bits: int, group_size: int = 0, scales: Tensor | None = None) -> Tensor:
    """The float value a weight takes at `bits` bits (no gradient); with `group_size` or fixed `scales`,
    on that grid."""
    with torch.no_grad():
        if bits in QUANT_BITS and (group_size or scales is not None):
            full = expand_scales(
                group_scales(weight, bits, group_size) if scales is None else scales, weight.shape, group_size
            ).to(weight.dtype)
            q = qmax(bits)
            return torch.clamp(torch.round(weight / full), -q, q) * full
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


KMEANS_ITERS = 30


def kmeans_1d(values: Tensor, k: int, iters: int = KMEANS_ITERS) -> Tensor:
    """k centroids of `values` (1-D): initialised linearly over [min, max] (Han et al. 2016), then
    Lloyd's iterations (nearest centroid, mean of each cluster; an empty cluster keeps its place)."""
    values = values.detach().float().reshape(-1)
    if values.numel() == 0:
        return torch.zeros(k)
    centroids = torch.linspace(float(values.min()), float(values.max()), k)
    for _ in range(iters):
        idx = _nearest(values, centroids)
        sums = torch.zeros(k).index_add_(0, idx, values)
        counts = torch.bincount(idx, minlength=k)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids


def _nearest(values: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest of the (ascending) `centroids` for each value (the lower one on ties)."""
    mid = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, mid, right=False)


class _Lookup(torch.autograd.Function):
    """table[idx], whose backward sums the gradient per table entry with one histogram (bincount):
    indexing's own backward sorts the indices (CUDA) or scatters one by one (CPU), many times slower."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.k = table.numel()
        return table[idx]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        sums = torch.bincount(idx.reshape(-1), weights=grad.reshape(-1).float(), minlength=ctx.k)
        return sums.to(grad.dtype), None


REASSIGN_EVERY = 10


class Codebook(nn.Module):
    """Parametrization: each nonzero weight takes the nearest of 2^bits - 1 shared values, zero stays zero.

    Per layer, one codebook: code 0 is reserved for zero (pruned or exactly-zero weights; sparse
    layouts skip them), codes 1 .. 2^bits - 1 index the centroids. Centroids are float16 values
    (what is stored), trained: the gradient of a centroid is the sum of the gradients of the weights
    assigned to it. The weights keep a straight-through gradient. In training mode the assignment
    (which centroid each weight takes) is recomputed every `REASSIGN_EVERY` forwards, so it follows
    the weights as they train while the centroids move every step (Deep Compression keeps it fixed;
    finding the nearest centroid for every weight costs more than the rest of a small layer's step).
    Zeros are read fresh every forward, so gradual pruning's masks act at once. In eval mode every
    forward assigns each weight its nearest centroid: that is the model that is measured and packed.
    """

    def __init__(self, bits: int, centroids: Tensor) -> None:
        super().__init__()
        if bits not in QUANT_BITS:
            raise ValueError(f"Codebook bits must be 2..8, got {bits}")
        if centroids.numel() != 2**bits - 1:
            raise ValueError(f"a {bits}-bit codebook holds {2**bits - 1} centroids, got {centroids.numel()}")
        self.bits = int(bits)
        self.centroids = nn.Parameter(centroids.detach().float().half().float().clone())
        self._assigned: Tensor | None = None  # training mode's cached assignment (not state: never saved)
        self._uses = 0

    def table(self) -> Tensor:
        """The centroids on the float16 grid, ascending (gradient passes straight to them)."""
        c = self.centroids + (self.centroids.half().float() - self.centroids).detach()
        return torch.sort(c).values

    def assignment(self, weight: Tensor, table: Tensor) -> Tensor:
        """Index into `table` for each weight: nearest now in eval mode; in training mode the cached
        one, refreshed every REASSIGN_EVERY calls (and whenever the weight's shape or device changed)."""
        if not self.training:
            self._assigned = None
            return _nearest(weight, table)
        stale = (
            self._assigned is None
            or self._uses >= REASSIGN_EVERY
            or self._assigned.shape != weight.shape
            or self._assigned.device != weight.device
        )
        if stale:
            self._assigned, self._uses = _nearest(weight, table), 0
        self._uses += 1
        return self._assigned

    def forward(self, weight: Tensor) -> Tensor:
        table = self.table()
        w = weight.float()
        value = _Lookup.apply(table, self.assignment(w.detach(), table.detach()))
        out = torch.where(w != 0, value + (w - w.detach()), torch.zeros((), dtype=w.dtype))
        return out.to(weight.dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, centroids={self.centroids.numel()}"


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


def add_mask(module: nn.Module, mask: Tensor) -> None:
    """Attach (or combine with the existing) pruning mask; must precede quantization."""
    existing = weight_mask(module)
    if existing is not None:
        existing.mul_(mask.to(torch.bool))
        return
    if _quantized(module):
        raise RuntimeError("a pruning mask must be added before quantization (order: prune, then quantize)")
    parametrize.register_parametrization(module, "weight", PruneMask(mask), unsafe=True)


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
