"""SparseGPT (Frantar & Alistarh 2023): unstructured pruning by the optimal brain surgeon, one column at a
time, each removed weight's error compensated on the columns not yet visited through the inverse
Hessian (the same factor GPTQ uses, gptq.inverse_hessian_factor); the weights kept are updated.

The mask is chosen per block of BLOCK columns from w^2 / U[i, i]^2 (the OBS saliency), at the block's
start, as the reference implementation does. Unlike it, the block quotas are exact: block b removes
round(s * n * end_b / cols) - round(s * n * start_b / cols) weights, so the layer ends with exactly
round(s * n) removed, as magnitude pruning does. Ties are broken by position.

`semi_structured`: the 2:4 pattern, as the reference's prunen/prunem mode: at every 4th column the mask
of the next 4 columns is chosen per row from the saliency of the weights as updated so far, dropping
the 2 lowest in each row (ties: the earlier position dropped).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gptq import BLOCK, DAMP, inverse_hessian_factor


def sparsegpt(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float,
    *,
    damp: float = DAMP,
    block: int = BLOCK,
    semi_structured: bool = False,
) -> tuple[Tensor, Tensor]:
    """(the updated weight, its pruned entries exactly zero; the mask of kept entries, bool)."""
    shape = weight.shape
    w = weight.detach().float().reshape(shape[0], -1).clone()
    rows, cols = w.shape
    if semi_structured and (cols % 4 or block % 4):
        raise ValueError(f"2:4 needs rows (here {cols}) and blocks (here {block}) of a multiple of 4 entries")
    total = int(round(sparsity * w.numel()))
    u = inverse_hessian_factor(hessian.to(w.device), damp)
    keep = torch.ones_like(w, dtype=torch.bool)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        quota = int(round(total * i2 / cols)) - int(round(total * i1 / cols))
        if quota and not semi_structured:
            saliency = (w1**2 / u1.diagonal().unsqueeze(0) ** 2).reshape(-1)
            drop = torch.argsort(saliency, stable=True)[:quota]
            k1 = keep[:, i1:i2].reshape(-1)
            k1[drop] = False
            keep[:, i1:i2] = k1.reshape(rows, i2 - i1)
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            if semi_structured and i % 4 == 0:
                saliency = w1[:, i : i + 4] ** 2 / u1.diagonal()[i : i + 4].unsqueeze(0) ** 2
                drop = torch.argsort(saliency, dim=1, stable=True)[:, :2]
                keep[:, i1 + i : i1 + i + 4].scatter_(1, drop, False)
            col = w1[:, i]
            q = torch.where(keep[:, i1 + i], col, torch.zeros((), device=col.device))
            e = (col - q) / u1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w.reshape(shape).to(weight.dtype), keep.reshape(shape)
