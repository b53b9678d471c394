"""Model inputs and outputs as every stage sees them: one tensor, or a mapping of named tensors.

Hugging Face models take keyword tensors (input_ids, attention_mask, token_type_ids, pixel_values)
and return a `ModelOutput` (or a tuple); autoshrink's own models take one tensor and return logits.
These helpers are the one place that knows both: `call` runs a model on a batch (`model(**x)` for a
mapping), `logits` takes the tensor a loss or metric reads, `to_device` / `batch_len` / `take` handle
either form. The batch dimension is the first of every tensor of a mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .errors import TaskError, describe

Inputs = Tensor | Mapping[str, Tensor]


def is_mapping(x: Any) -> bool:
    """Whether `x` is a mapping of named inputs (a dict, a BatchEncoding, ...)."""
    return isinstance(x, Mapping)


def to_device(x: Inputs, device: torch.device | str) -> Inputs:
    """`x` (a tensor or a mapping of tensors) on `device`."""
    if is_mapping(x):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in x.items()}
    return x.to(device)


def call(model: nn.Module, x: Inputs) -> Any:
    """The model's raw output on one batch: `model(**x)` for a mapping, else `model(x)`."""
    return model(**x) if is_mapping(x) else model(x)


def logits(output: Any, where: str = "model") -> Tensor:
    """The tensor a loss or metric reads from a model's output: the output itself, a ModelOutput's
    (or dict's) `logits` (else its first tensor), or a tuple's first element."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):  # ModelOutput is an OrderedDict
        if isinstance(output.get("logits"), Tensor):
            return output["logits"]
        first = next((v for v in output.values() if isinstance(v, Tensor)), None)
        if first is not None:
            return first
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TaskError(
        f"{where}: the model returned {describe(output)}; autoshrink reads a tensor of outputs, a "
        "ModelOutput with `logits`, or a tuple whose first element is the outputs. Fix: return the logits."
    )


def forward(model: nn.Module, x: Inputs, where: str = "model") -> Tensor:
    """`logits(call(model, x))`: the outputs a loss or metric reads."""
    return logits(call(model, x), where)


def tensors(x: Inputs) -> list[Tensor]:
    """The tensors of `x`, in order."""
    return [v for v in x.values() if isinstance(v, Tensor)] if is_mapping(x) else [x]


def batch_len(x: Inputs) -> int:
    """The batch size of `x` (first dimension; 1 for a 0-d tensor)."""
    first = tensors(x)[0] if tensors(x) else None
    if first is None or first.dim() == 0:
        return 1
    return int(first.shape[0])


def take(x: Inputs, index: slice | Tensor) -> Inputs:
    """Rows `index` of every tensor of `x`."""
    if is_mapping(x):
        return {k: v[index] if isinstance(v, Tensor) else v for k, v in x.items()}
    return x[index]


def shown(x: Any) -> str:
    """A short description of inputs for error messages: shapes and dtypes."""
    if isinstance(x, Tensor):
        return f"shape {list(x.shape)}, {x.dtype}"
    if is_mapping(x):
        return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in x.items()) + "}"
    return describe(x)


def check_inputs(x: Any, field: str, *, batch: int | None = None) -> None:
    """One clear TaskError unless `x` is a tensor or a non-empty mapping of str -> tensor whose
    tensors share their (non-zero) first dimension (`batch` when given)."""
    if isinstance(x, Tensor):
        if x.dim() == 0 or x.shape[0] == 0:
            raise TaskError(
                f"{field}: shape {list(x.shape)} holds no example; give one batch of at least one input "
                "(its first dimension is the batch)."
            )
        return
    if not is_mapping(x) or not x:
        raise TaskError(
            f"{field}: got {describe(x)}; expected a tensor shaped like one input batch, e.g. "
            "torch.randn(1, 1, 28, 28), or a mapping of named tensors, e.g. a tokenizer's "
            "{'input_ids': ..., 'attention_mask': ...}."
        )
    sizes = set()
    for k, v in x.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise TaskError(
                f"{field}[{k!r}]: got {describe(v)}; every entry of a mapping input must be a tensor "
                "under a str key (e.g. return_tensors='pt')."
            )
        if v.dim() == 0 or v.shape[0] == 0:
            raise TaskError(
                f"{field}[{k!r}]: shape {list(v.shape)} holds no example; every tensor needs the batch first."
            )
        sizes.add(int(v.shape[0]))
    if len(sizes) > 1 or (batch is not None and sizes != {batch}):
        raise TaskError(f"{field}: the tensors' first dimensions differ ({shown(x)}); they all hold the same batch.")
