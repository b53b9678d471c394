"""BatchNorm re-estimation after the model's structure changed (structured pruning, low-rank).

Removing channels or factorizing a layer changes the activations every following BatchNorm sees,
so the running statistics it learnt on the full model are stale, and a model evaluated without
fine-tuning (sensitivity, screening) or fine-tuned from there starts from the wrong normalization.
Re-estimation: reset the statistics, run `batches` training batches forward with only the
BatchNorm layers in train mode (dropout and the rest stay in eval mode), no gradients, no
augmentation, batches drawn with a seeded generator, and a cumulative average (momentum=None):
running_mean = mean of the batch means, running_var = mean of the unbiased batch variances.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..inputs import batch_len, call, to_device
from ..task import Task, iterate_batches

_BN = nn.modules.batchnorm._BatchNorm


def recalibrate_batchnorm(model: nn.Module, task: Task, *, batches: int, seed: int = 0) -> int:
    """Re-estimate the running statistics of every BatchNorm layer in `model` (in place) on `batches`
    training batches. Returns the number of batches used (0 when the model has no BatchNorm that
    tracks statistics, or batches == 0). The model is left in eval mode."""
    layers = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not layers or batches <= 0:
        return 0
    device = task.torch_device
    momenta = [(m, m.momentum) for m in layers]
    generator = torch.Generator().manual_seed(seed)
    used = 0
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
            m.train()
        with torch.no_grad():
            source = iterate_batches(task.train_data, task.batch_size, shuffle=True, generator=generator)
            for x, _ in itertools.islice(source, batches):
                if batch_len(x) < 2:  # a batch of one has no variance (BatchNorm refuses it in train mode)
                    continue
                call(model, to_device(x, device))
                used += 1
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        model.eval()
    return used
