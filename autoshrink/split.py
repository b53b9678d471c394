"""The held-out split a Task makes of its evaluation data (`Task(holdout=...)`).

Deterministic (a fixed seed, so every process and every run splits alike) and stratified by label
where the labels are class indices: each class gives round(share * its count) examples (Python's
round: halves to even), at least one where it has two or more, to the held-out part, chosen by a seeded
permutation; order within each part is the data's own. Data without class labels (regression targets,
dict batches) is split by the same seeded permutation without strata.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from .task_data import in_memory, subset

SPLIT_SEED = 20261206


def _labels(data: Dataset) -> torch.Tensor | None:
    """Integer class labels of every example, or None where they are not class indices."""
    held = in_memory(data)
    if held is not None:
        y = held[1]
    else:
        try:
            ys = [data[i][1] for i in range(len(data))]  # type: ignore[arg-type]
            y = torch.as_tensor(ys)
        except (TypeError, ValueError, RuntimeError, IndexError, KeyError):
            return None
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or not len(y):
        return None
    return y


def held_out_indices(data: Dataset, share: float) -> tuple[list[int], list[int], bool]:
    """(selection indices, held-out indices, stratified) for `share` of `data` held out."""
    n = len(data)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    labels = _labels(data)
    held: list[int] = []
    if labels is None:
        order = torch.randperm(n, generator=generator).tolist()
        held = order[: round(share * n)]
    else:
        for cls in torch.unique(labels).tolist():
            members = torch.nonzero(labels == cls).flatten()
            k = round(share * len(members))
            if len(members) >= 2:
                k = min(max(k, 1), len(members) - 1)
            picked = members[torch.randperm(len(members), generator=generator)[:k]]
            held += picked.tolist()
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], sorted(held_set), labels is not None


def split(data: Dataset, share: float) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """(selection part, held-out part, a record of the split for studies and recipes)."""
    keep, held, stratified = held_out_indices(data, share)
    record = {"holdout": share, "selection": len(keep), "held_out": len(held), "stratified": stratified}
    return subset(data, keep), subset(data, held), record
