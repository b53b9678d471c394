"""The task checked once against the model, before anything runs or is written: the example input
runs, a first batch of the training and selection splits runs through the model and the loss, its
inputs match the example input's dtype, and (accuracy metric) its labels are class ids the model's
outputs can index; unlabeled inputs, where given, run as well. The held-out split is not read (a
search reads it only in its last stage); held as tensors, its dtype and labels are checked. Every
failure is one TaskError naming the field, what was found and the fix -- not a torch error from deep
inside a fine-tune or a measurement."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .errors import TaskError
from .inputs import call, is_mapping, logits, shown, tensors, to_device
from .task import Task, iterate_batches
from .task_data import in_memory

CHECK_BATCH = 8  # examples of each split run through the model and the loss


def check_task(model: nn.Module, task: Task) -> None:
    """Raise TaskError unless `task` fits `model` (see the module docstring). The model runs in eval
    mode without gradients; every module's training flag is restored, mixed modes included."""
    modes = [(m, m.training) for m in model.modules()]
    device = next(model.parameters(), torch.empty(0)).device
    try:
        with torch.no_grad():
            model.eval()
            out = _outputs(_example(model, task, device), "Task.example_input")
            classes = out.shape[1] if task.metric == "accuracy" and isinstance(out, Tensor) and out.dim() == 2 else None
            for field in ("train_data", "eval_data"):
                _split(model, task, field, getattr(task, field), device, classes)
            if task.unlabeled_data is not None:  # inputs only: no labels, no loss
                _split(model, task, "unlabeled_data", task.unlabeled_data, device, None, labelled=False)
            if task.test_data is not None:
                _held_out(model, task, classes)
    finally:
        for m, mode in modes:
            m.training = mode


def _shown(x: Any) -> str:
    return shown(x)


def _outputs(out: Any, field: str) -> Any:
    """The tensor the loss and metric read (ModelOutput logits, a tuple's first element); one TaskError
    where a model output has none. Other outputs pass as they are (a metric callable may read them)."""
    if isinstance(out, Tensor):
        return out
    try:
        return logits(out, field)
    except TaskError:
        return out


def _dtypes(x: Any) -> dict[str, torch.dtype]:
    """Input name (or "" for a tensor) -> dtype."""
    return {k: v.dtype for k, v in x.items() if isinstance(v, Tensor)} if is_mapping(x) else {"": x.dtype}


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _example(model: nn.Module, task: Task, device: torch.device) -> Any:
    x = task.example_input
    try:
        return call(model, to_device(x, device))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model cannot run the input: say so, with its words
        raise TaskError(
            f"Task.example_input: the model cannot run it ({_shown(x)}): {_said(exc)}. Fix: give a batch "
            f"shaped and typed as the model's input{_dtype_hint(model, x)}."
        ) from None


def _dtype_hint(model: nn.Module, x: Any) -> str:
    weight = next(model.parameters(), None)
    if is_mapping(x):
        return ""
    if weight is not None and weight.dtype.is_floating_point and not x.dtype.is_floating_point:
        if x.dtype != torch.long and x.dtype != torch.int:  # token ids are integers; images are not
            return f" (the model's weights are {weight.dtype}: e.g. x.float() / 255 for {x.dtype} images)"
        return f" (the model's weights are {weight.dtype}; integer inputs suit only an embedding layer)"
    return ""


def _split(
    model: nn.Module,
    task: Task,
    field: str,
    data: Any,
    device: torch.device,
    classes: int | None,
    labelled: bool = True,
) -> None:
    try:
        x, y = next(iterate_batches(data, min(task.batch_size, CHECK_BATCH)))
    except StopIteration:
        raise TaskError(f"Task.{field}: the dataset is empty; give at least one example.") from None
    except TaskError:
        raise TaskError(
            f"Task.{field}: each example must be an (input, target) pair; return (x, y) from __getitem__."
        ) from None
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's dataset failed to give a batch
        raise TaskError(f"Task.{field}: reading its first batch raised {_said(exc)}; fix the dataset.") from None
    example = task.example_input
    _same_kind(model, field, x, example)
    try:
        out = _outputs(call(model, to_device(x, device)), f"Task.{field}")
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TaskError(
            f"Task.{field}: the model cannot run its first batch ({_shown(x)}; example_input {_shown(example)}): "
            f"{_said(exc)}. Fix: give inputs shaped as example_input, batch first."
        ) from None
    if not labelled:
        return
    if classes is not None:
        _labels(field, data, y, classes)
    if not isinstance(y, Tensor):
        raise TaskError(f"Task.{field}: targets are {type(y).__name__}; give each target as a tensor (or a number).")
    if isinstance(out, Tensor) and out.is_floating_point():
        _loss(task, field, out, y.to(out.device))


def _same_kind(model: nn.Module, field: str, x: Any, example: Any) -> None:
    """The split's inputs are of the example input's kind: a tensor of its dtype, or a mapping with its
    names and dtypes."""
    if is_mapping(x) != is_mapping(example) or (is_mapping(x) and set(x) != set(example)):
        raise TaskError(
            f"Task.{field}: inputs are {_shown(x)} but example_input is {_shown(example)}; give both in the "
            "same form (the same names, for a mapping)."
        )
    if not all(isinstance(t, Tensor) for t in tensors(x)):
        return
    got, want = _dtypes(x), _dtypes(example)
    for name, dtype in got.items():
        if dtype != want.get(name, dtype):
            what = f"inputs[{name!r}] are" if name else "inputs are"
            ex = f"example_input[{name!r}] is" if name else "example_input is"
            raise TaskError(
                f"Task.{field}: {what} {dtype} but {ex} {want[name]}; give both as the model's input "
                f"dtype{_dtype_hint(model, x)}."
            )


def _held_out(model: nn.Module, task: Task, classes: int | None) -> None:
    """The held-out split is never read before the search's last stage (no example of it goes through
    the model or its Dataset here); held as tensors, its dtype and labels are checked."""
    data = task.test_data
    held = in_memory(data)
    if held is None:
        return
    x, y = held
    _same_kind(model, "test_data", x, task.example_input)
    if classes is not None:
        _labels("test_data", data, y, classes)


def _labels(field: str, data: Any, y: Any, classes: int) -> None:
    """Accuracy compares the argmax with the label: labels must be integer class ids in 0..classes-1
    (all of a TensorDataset's, the first batch's otherwise)."""
    held = in_memory(data)
    if held is not None:
        y = held[1]
    if not isinstance(y, Tensor) or y.dim() != 1 or not y.numel():
        return
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TaskError(
            f"Task.{field}: labels are {y.dtype}, but the accuracy metric compares them with class "
            "indices; give integer class ids (e.g. y.long())."
        )
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise TaskError(
            f"Task.{field}: labels span {low}..{high}, but the model outputs {classes} classes "
            f"(labels 0..{classes - 1}); fix the labels or the model's last layer."
        )


def _loss(task: Task, field: str, out: Tensor, y: Tensor) -> None:
    name = task.loss if isinstance(task.loss, str) else getattr(task.loss, "__name__", "the loss callable")
    if task.loss == "mse" and out.shape != y.shape:  # torch would broadcast them, with a warning, into nonsense
        raise TaskError(
            f"Task.{field}: the loss 'mse' needs targets shaped as the model's outputs; got outputs "
            f"{_shown(out)} and targets {_shown(y)}. Fix: targets of shape {list(out.shape)}, or "
            "loss='cross_entropy' for class ids."
        )
    try:
        value = task.loss_fn()(out, y)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001
        fix = (
            "targets as int64 class ids (y.long()) for cross_entropy, or loss='mse' for regression"
            if task.loss == "cross_entropy"
            else "targets the loss can take with the model's outputs"
        )
        raise TaskError(
            f"Task.{field}: the loss {name!r} cannot take the model's outputs ({_shown(out)}) and the "
            f"targets ({_shown(y)}): {_said(exc)}. Fix: {fix}."
        ) from None
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise TaskError(f"Task.loss: {name!r} returned {_shown(value)}; it must return one number (a 0-d tensor).")
    if not math.isfinite(float(value)):
        raise TaskError(
            f"Task.{field}: the loss of the untouched model on its first batch is {float(value)}; "
            "check the data for NaN or inf values."
        )
