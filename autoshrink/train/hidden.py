"""Hidden-state distillation for transformers: each block's output of the student pulled towards the
teacher's (TinyBERT-style intermediate-layer distillation, on block outputs only).

Removing heads or FFN neurons narrows a block's inside, never its output (the model width), so block
i of the student and block i of the teacher compare as they are: the term is the mean over blocks of
||h_s - h_t||^2 / ||h_t||^2 over the real tokens (a mapping input's `attention_mask` leaves padding
out; every position counts otherwise). It is added, times FinetuneConfig.hidden, to the logit loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..inputs import is_mapping


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return getattr(output, "last_hidden_state", None)


@contextlib.contextmanager
def block_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """While open, the last forward's output of each named module (its first tensor), by name."""
    seen: dict[str, Tensor] = {}
    hooks = []
    for name in names:

        def grab(_m: nn.Module, _args: Any, output: Any, name: str = name) -> None:
            t = _first_tensor(output)
            if t is not None:
                seen[name] = t

        hooks.append(model.get_submodule(name).register_forward_hook(grab))
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def hidden_term(student: dict[str, Tensor], teacher: dict[str, Tensor], inputs: Any) -> Tensor:
    """Mean over the blocks both saw of the relative squared error of the student's block output."""
    mask = inputs.get("attention_mask") if is_mapping(inputs) else None
    terms = []
    for name, t in teacher.items():
        s = student.get(name)
        if s is None or s.shape != t.shape:
            continue
        diff = (s - t.detach()).pow(2).sum(-1)
        ref = t.detach().pow(2).sum(-1)
        if isinstance(mask, Tensor) and mask.shape == diff.shape:
            keep = mask.to(diff.dtype)
            diff, ref = diff * keep, ref * keep
        terms.append(diff.sum() / ref.sum().clamp_min(1e-12))
    if not terms:
        raise ValueError("hidden-state distillation: no block output of the student matches the teacher's")
    return torch.stack(terms).mean()
