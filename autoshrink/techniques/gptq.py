"""GPTQ rounding (Frantar et al. 2023): linear codes chosen column by column, each column's rounding
error compensated on the columns not yet rounded, through the inverse Hessian of the layer-wise
reconstruction loss ||W X - Q X||^2 (H = X^T X from calibration.py).

Conventions (documented in docs/techniques.md):
- scales are fixed before rounding ("static groups"): max|w| / qmax of each output channel, or of each
  group of `group_size` consecutive inputs, from the weight as it enters (pruned entries zero), rounded
  to bfloat16 as every autoshrink scale is. They are stored, since the result need not reach qmax.
- dampening: DAMP times the mean of diag(H) is added to the diagonal (dead inputs, never nonzero in the
  calibration data, get 1), so the Cholesky factorization exists;
- act-order: columns are rounded in order of decreasing diag(H) (the inputs with the most energy
  first), which helps most at 3 bits and below; the result is put back in the layer's column order;
- pruned entries (mask False) are rounded to exactly zero and their error compensated like any other;
- lazy batch updates over BLOCK columns, as in the reference implementation (the same arithmetic).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..weights import expand_scales, group_scales, qmax

DAMP = 0.01
BLOCK = 128


def inverse_hessian_factor(hessian: Tensor, damp: float = DAMP) -> Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, dead inputs given diag 1:
    row i of U, divided by U[i, i], is the OBS update of the later columns for an error in column i."""
    h = hessian.clone().float()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True)


def gptq(
    weight: Tensor,
    hessian: Tensor,
    bits: int,
    *,
    group_size: int = 0,
    mask: Tensor | None = None,
    damp: float = DAMP,
    act_order: bool = True,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor]:
    """(quantized weight (the weight's shape, exactly codes * scales), scales (out, groups)).

    weight: (out, ...) with its inputs flattened to hessian's size; mask: the entries kept (bool, the
    weight's shape) or None."""
    shape = weight.shape
    w = weight.detach().float().reshape(shape[0], -1).clone()
    keep = None if mask is None else mask.reshape(shape[0], -1).to(w.device)
    if keep is not None:
        w = torch.where(keep, w, torch.zeros((), device=w.device))
    scales = group_scales(w.reshape(shape), bits, group_size)
    step = expand_scales(scales, shape, group_size).reshape(shape[0], -1).to(w.device)
    h = hessian.to(w.device)
    cols = w.shape[1]
    order = (
        torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else torch.arange(cols, device=w.device)
    )
    w, step, h = w[:, order], step[:, order], h[order][:, order]
    keep = None if keep is None else keep[:, order]
    u = inverse_hessian_factor(h, damp)
    q_max = qmax(bits)
    out = torch.zeros_like(w)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = w1[:, i]
            s = step[:, i1 + i]
            q = torch.clamp(torch.round(col / s), -q_max, q_max) * s
            if keep is not None:
                q = torch.where(keep[:, i1 + i], q, torch.zeros((), device=q.device))
            out[:, i1 + i] = q
            e = (col - q) / u1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    restored = torch.empty_like(out)
    restored[:, order] = out
    return restored.reshape(shape).to(weight.dtype), scales
