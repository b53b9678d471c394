"""What a Task accepts as data, turned into a torch Dataset of (input, target) pairs.

Accepted: a torch Dataset; an (X, y) pair where X is a tensor or a mapping of named tensors (a
tokenizer's output); a Hugging Face `datasets.Dataset` or a list of dicts, each example holding a
`label` (or `labels`) entry and its model inputs. Held in memory, data keeps a fast path: batches are
sliced, never collated example by example (`in_memory`).

Which columns of a `datasets.Dataset` or dict rows are model inputs: every column except the label
whose values are numbers or (nested) lists of numbers of one length (input_ids, attention_mask,
token_type_ids, pixel_values); text and other columns are left out, and so is a column of single
numbers other than the label (e.g. GLUE's `idx`). Sequences must be padded to one length
(tokenizer(..., padding="max_length", truncation=True, max_length=N)). Inputs without labels
(Task.unlabeled_data, `as_inputs`) take the same forms without a label, or X alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from .errors import TaskError, describe
from .inputs import batch_len, check_inputs

LABEL_KEYS = ("label", "labels")


class MappingDataset(Dataset):
    """Examples whose input is a mapping of named tensors (first dimension: the example)."""

    def __init__(self, inputs: Mapping[str, Tensor], labels: Tensor) -> None:
        self.inputs = dict(inputs)
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {k: v[i] for k, v in self.inputs.items()}, self.labels[i]


def in_memory(data: Any) -> tuple[Any, Tensor] | None:
    """(inputs, targets) of data held as tensors (a two-tensor TensorDataset or a MappingDataset),
    else None."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    if isinstance(data, MappingDataset):
        return data.inputs, data.labels
    return None


def subset(data: Dataset, indices: Sequence[int]) -> Dataset:
    """The examples of `data` at `indices`, in that order (data in memory stays so: its fast path)."""
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    if isinstance(data, TensorDataset):
        return TensorDataset(*(t[idx] for t in data.tensors))
    if isinstance(data, MappingDataset):
        return MappingDataset({k: v[idx] for k, v in data.inputs.items()}, data.labels[idx])
    return Subset(data, list(indices))


def _is_hf_dataset(data: Any) -> bool:
    return hasattr(data, "column_names") and hasattr(data, "features") and hasattr(data, "__getitem__")


def _column(values: Sequence[Any], name: str, field: str) -> Tensor | None:
    """The column as one tensor, or None where it holds no model input (text, ragged ...)."""
    first = values[0] if len(values) else None
    if isinstance(first, (Tensor, np.ndarray)):
        sizes = {tuple(v.shape) if isinstance(v, (Tensor, np.ndarray)) else None for v in values}
        if len(sizes) > 1:
            raise _ragged(name, field)
        if isinstance(first, np.ndarray):
            if first.dtype.kind not in "biuf":  # text or objects: not a model input
                return None
            column = torch.from_numpy(np.stack(list(values)))
            return column.float() if column.dtype == torch.float64 else column
        return torch.stack(list(values))
    if isinstance(first, (str, bytes, Mapping)) or first is None:
        return None
    try:
        column = torch.tensor(values)
    except (TypeError, ValueError, RuntimeError) as exc:
        if isinstance(first, (list, tuple)) and "expected sequence of length" in str(exc):
            raise _ragged(name, field) from None
        return None
    if column.dtype == torch.float64:
        column = column.float()
    return column


def _ragged(name: str, field: str) -> TaskError:
    return TaskError(
        f"Task.{field}: column {name!r} holds sequences of different lengths; pad them to one length, "
        "e.g. tokenizer(texts, padding='max_length', truncation=True, max_length=128)."
    )


def _from_columns(columns: Mapping[str, Sequence[Any]], field: str, labelled: bool = True) -> MappingDataset:
    label = next((k for k in LABEL_KEYS if k in columns), None)
    if not labelled:
        label = None
    elif label is None:
        raise TaskError(
            f"Task.{field}: the examples have no 'label' (or 'labels') entry; found {sorted(columns)}. Fix: "
            "name the target column 'label' (dataset.rename_column(old, 'label'))."
        )
    labels = _column(columns[label], label, field) if label is not None else None
    if labels is None and label is not None:
        raise TaskError(f"Task.{field}: the '{label}' entries are not numbers; give class ids (or regression targets).")
    inputs = {}
    for name, values in columns.items():
        if name in LABEL_KEYS:
            continue
        column = _column(values, name, field)
        if column is not None and column.dim() >= 2:
            inputs[name] = column
    if not inputs:
        raise TaskError(
            f"Task.{field}: no column holds model inputs (found {sorted(columns)}); tokenize the texts first, "
            "e.g. dataset.map(lambda b: tokenizer(b['text'], padding='max_length', truncation=True), batched=True)."
        )
    if labels is None:
        labels = _no_labels(batch_len(inputs))
    return MappingDataset(inputs, labels)


def _no_labels(n: int) -> Tensor:
    """The targets of unlabeled inputs: never read (a distillation term needs none), -1 so none is a class."""
    return torch.full((n,), -1, dtype=torch.long)


def _from_rows(rows: Sequence[Any], field: str, labelled: bool = True) -> MappingDataset:
    keys = list(rows[0])
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or set(row) != set(keys):
            raise TaskError(
                f"Task.{field}[{i}]: got {describe(row)}; every example of a list must be a dict with the "
                f"same keys as the first ({keys})."
            )
    return _from_columns({k: [row[k] for row in rows] for k in keys}, field, labelled)


def as_inputs(data: Any, field: str) -> Dataset:
    """Model inputs without labels (Task.unlabeled_data) as a Dataset of (input, -1) pairs: a tensor or a
    mapping of named tensors (a tokenizer's output), a Hugging Face `datasets.Dataset` or a list of dicts
    (a label column, if any, is ignored), or a torch Dataset of (input, target) pairs (targets ignored)."""
    if isinstance(data, Tensor):
        if data.dim() == 0 or data.shape[0] == 0:
            raise TaskError(f"Task.{field}: got a tensor of shape {tuple(data.shape)}; give at least one example.")
        return TensorDataset(data, _no_labels(data.shape[0]))
    if isinstance(data, Mapping):
        check_inputs(data, f"Task.{field}")
        if batch_len(data) == 0:
            raise TaskError(f"Task.{field}: the inputs hold no example; give at least one.")
        return MappingDataset(dict(data), _no_labels(batch_len(data)))
    if _is_hf_dataset(data):
        if len(data) == 0:
            raise TaskError(f"Task.{field}: the dataset is empty; give at least one example.")
        return _from_columns(data.to_dict(), field, labelled=False)
    if isinstance(data, list) and data and isinstance(data[0], Mapping):
        return _from_rows(data, field, labelled=False)
    if isinstance(data, Dataset):
        if len(data) == 0:  # type: ignore[arg-type]
            raise TaskError(f"Task.{field}: the dataset is empty; give at least one example.")
        return data
    raise TaskError(
        f"Task.{field}: got {describe(data)}; expected model inputs without labels: a tensor, a mapping of named "
        "tensors (a tokenizer's output), a Hugging Face datasets.Dataset or a list of dicts."
    )


def as_dataset(data: Any, field: str) -> Dataset:
    """`data` as a torch Dataset of (input, target) pairs (see the module docstring)."""
    if _is_hf_dataset(data):
        if len(data) == 0:
            raise TaskError(f"Task.{field}: the dataset is empty; give at least one example.")
        return _from_columns(data.to_dict(), field)
    if isinstance(data, Dataset):
        return data
    if isinstance(data, list) and data and isinstance(data[0], Mapping):
        return _from_rows(data, field)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], Tensor):
        x, y = data
        if isinstance(x, Tensor):
            if x.shape[0] != y.shape[0]:
                raise TaskError(f"Task.{field}: X has {x.shape[0]} rows but y has {y.shape[0]}; they must match.")
            return TensorDataset(x, y)
        if isinstance(x, Mapping):
            check_inputs(x, f"Task.{field} inputs")
            rows = batch_len(x)
            if rows != y.shape[0]:
                raise TaskError(f"Task.{field}: X has {rows} rows but y has {y.shape[0]}; they must match.")
            return MappingDataset({k: v for k, v in x.items()}, y)
    raise TaskError(
        f"Task.{field}: got {describe(data)}; expected a torch Dataset, an (X, y) tuple of tensors (X may be a "
        "mapping of named tensors, e.g. a tokenizer's output), a Hugging Face datasets.Dataset or a list of "
        "dicts with a 'label' entry."
    )
