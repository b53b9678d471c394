"""Task: the data, metric, loss and example input a model is compressed for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .errors import TaskError, describe, finite_number
from .inputs import batch_len, check_inputs, take
from .split import split as split_data
from .task_data import as_dataset, as_inputs, in_memory
from .task_data import subset as subset

MetricFn = Callable[[nn.Module, DataLoader, torch.device], float]
LossFn = Callable[[Tensor, Tensor], Tensor]
DataLike = Dataset | tuple

METRICS = ("accuracy",)
LOSSES = ("cross_entropy", "mse")


def _resolve_device(device: Any) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TaskError(
            f"Task.device: got {describe(device)}; use 'auto', 'cpu', 'cuda' or 'cuda:N' ({exc})."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TaskError(f"Task.device: got {device!r} but CUDA is not available here; use 'auto' or 'cpu'.")
    return dev


@dataclass(frozen=True, kw_only=True)
class Task:
    """What a model is compressed for.

    train_data / eval_data: torch Datasets, (X, y) tuples (X a tensor or a mapping of named tensors such
    as a tokenizer's output), Hugging Face `datasets.Dataset`s or lists of dicts with a `label` entry
    (task_data.py says which columns are inputs). eval_data is the selection split:
    every decision of a search reads it. test_data (optional): held out, read only to report the final
    front and the picks -- or `holdout` (a share in (0, 1)) splits it off eval_data (autoshrink/split.py:
    deterministic, stratified by label); neither given: no held-out figures. example_input: one batch
    shaped like the model's input -- a tensor, or a mapping of named tensors passed as keywords
    (`model(**x)`); its first dimension is the deployment batch size used for latency, and for text
    its sequence length is the one timed. Models may return a tensor, a ModelOutput (its `logits`
    are read) or a tuple (its first element). metric: "accuracy" or callable(model, loader, device) ->
    float, higher is better. loss: "cross_entropy", "mse" or callable(outputs, targets) -> loss.
    train_transform: optional augmentation, called as `inputs, targets = transform(inputs, targets)`
    on every fine-tuning batch on the training device (never on eval_data, never on the batches
    that re-estimate BatchNorm statistics). It should draw its randomness from torch's global
    generator (the fine-tune seeds it, so runs replay); it travels to Ray workers by pickling, and
    its name (`transform_name`) is recorded in studies and recipes. unlabeled_data (optional): more
    model inputs of the task's kind without labels (task_data.as_inputs: a tensor, a mapping of named
    tensors, a `datasets.Dataset` or a list of dicts), read only by a fine-tune that distils from a
    teacher (the refine, `finetune(teacher=...)`): its batches come between train_data's, in proportion
    to their sizes, and their loss is the distillation term alone (the teacher's outputs are the
    targets). Never read to calibrate, select or report. Its example count is recorded in studies and
    recipes.
    """

    train_data: Any
    eval_data: Any
    example_input: Any
    metric: str | MetricFn = "accuracy"
    loss: str | LossFn = "cross_entropy"
    batch_size: int = 128
    device: Any = "auto"
    train_transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
    test_data: Any = None
    holdout: float | None = None
    unlabeled_data: Any = None
    split: dict[str, Any] | None = field(default=None, init=False, compare=False)  # see split_record()

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_data", as_dataset(self.train_data, "train_data"))
        object.__setattr__(self, "eval_data", as_dataset(self.eval_data, "eval_data"))
        if len(self.eval_data) == 0:  # type: ignore[arg-type]
            raise TaskError("Task.eval_data: the dataset is empty; give at least one example.")
        if self.holdout is not None:
            if self.test_data is not None:
                raise TaskError(
                    "Task.holdout: test_data is given too; give held-out test_data or a holdout share of "
                    "eval_data, not both."
                )
            if not finite_number(self.holdout) or not 0 < self.holdout < 1:
                raise TaskError(
                    f"Task.holdout: got {describe(self.holdout)}; use the share of eval_data to hold out, in "
                    "(0, 1), e.g. 0.5."
                )
            if len(self.eval_data) < 2:  # type: ignore[arg-type]
                raise TaskError("Task.holdout: eval_data has fewer than 2 examples; nothing can be held out.")
            selection, held_out, record = split_data(self.eval_data, float(self.holdout))
            object.__setattr__(self, "eval_data", selection)
            object.__setattr__(self, "test_data", held_out)
            object.__setattr__(self, "split", record)
        elif self.test_data is not None:
            object.__setattr__(self, "test_data", as_dataset(self.test_data, "test_data"))
            if len(self.test_data) == 0:  # type: ignore[arg-type]
                raise TaskError("Task.test_data: the dataset is empty; give at least one example, or None.")
            record = {"holdout": None, "selection": len(self.eval_data), "held_out": len(self.test_data)}
            object.__setattr__(self, "split", record)
        if self.unlabeled_data is not None:
            object.__setattr__(self, "unlabeled_data", as_inputs(self.unlabeled_data, "unlabeled_data"))
        check_inputs(self.example_input, "Task.example_input")
        if isinstance(self.metric, str) and self.metric not in METRICS:
            raise TaskError(
                f"Task.metric: got {self.metric!r}; use one of {METRICS} or a callable(model, loader, device) -> float."
            )
        if not isinstance(self.metric, str) and not callable(self.metric):
            raise TaskError(f"Task.metric: got {describe(self.metric)}; expected a name or a callable.")
        if isinstance(self.loss, str) and self.loss not in LOSSES:
            raise TaskError(
                f"Task.loss: got {self.loss!r}; use one of {LOSSES} or a callable(outputs, targets) -> loss."
            )
        if not isinstance(self.loss, str) and not callable(self.loss):
            raise TaskError(f"Task.loss: got {describe(self.loss)}; expected a name or a callable.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise TaskError(f"Task.batch_size: got {describe(self.batch_size)}; it must be a positive integer.")
        if self.train_transform is not None and not callable(self.train_transform):
            raise TaskError(
                f"Task.train_transform: got {describe(self.train_transform)}; expected a callable "
                "(inputs, targets) -> (inputs, targets), e.g. autoshrink.zoo.random_shift(2), or None."
            )
        _resolve_device(self.device)

    @property
    def transform_name(self) -> str | None:
        """How studies and recipes name `train_transform`: its `name` attribute when it has one (the
        zoo helpers do, e.g. "random_shift(pixels=2)"), else module.qualname; None without one."""
        return transform_name(self.train_transform)

    @property
    def torch_device(self) -> torch.device:
        """The device models are fine-tuned, evaluated and timed on."""
        return _resolve_device(self.device)

    @property
    def deploy_batch(self) -> int:
        """Batch size of `example_input` (its first dimension)."""
        return batch_len(self.example_input)

    def loss_fn(self) -> LossFn:
        if callable(self.loss):
            return self.loss
        if self.loss == "mse":
            return nn.functional.mse_loss
        return nn.functional.cross_entropy

    def eval_loader(self) -> DataLoader:
        return DataLoader(self.eval_data, batch_size=self.batch_size, shuffle=False)

    def test_loader(self) -> DataLoader:
        """The held-out split's loader (a TaskError without one)."""
        if self.test_data is None:
            raise TaskError("Task.test_data: this task has no held-out split; give test_data= or holdout=.")
        return DataLoader(self.test_data, batch_size=self.batch_size, shuffle=False)

    def with_holdout(self, share: float) -> Task:
        """This task with `share` of its eval_data held out as test_data (see `holdout`)."""
        if self.test_data is not None:
            raise TaskError(
                f"holdout {share!r}: the task already has a held-out split ({len(self.test_data)} examples); "
                "drop holdout, or build the task without test_data."
            )
        return replace(self, holdout=share)

    @property
    def unlabeled_count(self) -> int | None:
        """How many unlabeled inputs distillation may read (None: none given); studies and recipes record it."""
        return None if self.unlabeled_data is None else len(self.unlabeled_data)

    def split_record(self) -> dict[str, Any] | None:
        """What studies and recipes record of the held-out split: its share (None: given as test_data),
        the example counts of both splits (and, for a holdout, whether it was stratified); None without."""
        return None if self.split is None else dict(self.split)


def iterate_batches(
    data: Dataset, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[Any, Tensor]]:
    """One pass over `data` in batches; slices tensors directly for data held in memory (fast path)."""
    held = in_memory(data)
    if held is not None:
        x, y = held
        n = y.shape[0]
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            idx = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            yield take(x, idx), y[idx]
        return
    loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TaskError("Task data: each example must be an (input, target) pair.")
        yield batch[0], batch[1]


def subsample_indices(total: int, n: int, seed: int = 0) -> tuple[int, ...]:
    """`n` of `total` example indices drawn without replacement by `seed`, in ascending order (the same
    every call, so a driver and its workers agree)."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    return tuple(sorted(int(i) for i in order))


def transform_name(transform: Any) -> str | None:
    """A stable, human-readable name of an augmentation callable (None for None)."""
    if transform is None:
        return None
    name = getattr(transform, "name", None)
    if isinstance(name, str) and name:
        return name
    target = transform if hasattr(transform, "__qualname__") else type(transform)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(transform).__name__)}"


def apply_transform(task: Task, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Run the task's train_transform on one training batch; its output must be an (inputs, targets) pair."""
    if task.train_transform is None:
        return x, y
    out = task.train_transform(x, y)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TaskError(
            f"Task.train_transform {task.transform_name!r} returned {describe(out)}; it must return "
            "an (inputs, targets) pair."
        )
    return out[0], out[1]


def require_model_and_task(model: Any, task: Any, who: str) -> None:
    """The model and task arguments of a public function are what it needs (one clear error if not)."""
    from .errors import ConfigError

    if not isinstance(model, nn.Module):
        raise ConfigError(f"{who}: model must be a torch.nn.Module, got {describe(model)}.")
    if not isinstance(task, Task):
        raise TaskError(
            f"{who}: task must be an autoshrink.Task, got {describe(task)}; build one with "
            "ash.Task(train_data=..., eval_data=..., example_input=...)."
        )
