"""Codebook quantization: each nonzero weight takes the nearest of 2^bits - 1 shared, trained values
(k-means initialised, Deep Compression)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .codes import QUANT_BITS

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
