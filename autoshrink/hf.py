"""Hugging Face front door: a text-classification Task from a tokenizer, texts and labels.

A `transformers` model is compressed as it is -- no wrapper module: Task batches are mappings of
named tensors (`model(**batch)`), and a ModelOutput's `logits` are what the metric and loss read
(task_data.py, inputs.py). This module only tokenizes; it never imports `transformers` itself (the
tokenizer is the caller's), so it needs the `hf` extra only where the caller does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import TaskError, describe
from .task import Task

Split = tuple[Sequence[str], Sequence[int]]


def _labels(labels: Any, field: str, n: int) -> Tensor:
    values = list(labels) if not isinstance(labels, Tensor) else labels.tolist()
    if len(values) != n:
        raise TaskError(f"hf.text_task: {field} has {n} texts but {len(values)} labels; give one label per text.")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        bad = next(v for v in values if not (isinstance(v, int) and not isinstance(v, bool)))
        raise TaskError(
            f"hf.text_task: {field} labels must be integer class ids, got {describe(bad)}; map names to ids "
            "first, e.g. [classes.index(name) for name in names]."
        )
    return torch.tensor(values, dtype=torch.long)


def _encode(tokenizer: Any, split: Any, field: str, max_length: int) -> tuple[dict[str, Tensor], Tensor]:
    if not (isinstance(split, (tuple, list)) and len(split) == 2):
        raise TaskError(f"hf.text_task: {field}={describe(split)}; give a (texts, labels) pair.")
    texts, labels = split
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TaskError(f"hf.text_task: {field} texts must be a sequence of strings, got {describe(texts)}.")
    if not len(texts):
        raise TaskError(f"hf.text_task: {field} has no texts; give at least one.")
    y = _labels(labels, field, len(texts))
    try:
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    except Exception as exc:  # noqa: BLE001 - the caller's tokenizer: one clear error with its words
        raise TaskError(
            f"hf.text_task: the tokenizer failed on {field}: {type(exc).__name__}: {exc}. Fix: pass a Hugging "
            "Face tokenizer (AutoTokenizer.from_pretrained(...))."
        ) from None
    return {k: v for k, v in enc.items() if isinstance(v, Tensor)}, y


def text_task(
    tokenizer: Any,
    *,
    train: Split,
    eval: Split,  # noqa: A002 - the split's name, as everywhere in autoshrink
    test: Split | None = None,
    unlabeled: Sequence[str] | None = None,
    max_length: int = 128,
    deploy_length: int | None = None,
    batch_size: int = 32,
    deploy_batch: int = 1,
    device: str = "auto",
) -> Task:
    """A classification Task over tokenized texts: every split padded (and truncated) to `max_length`
    tokens. `example_input` -- what latency is timed on -- is the first `deploy_batch` texts of `eval`
    padded to `deploy_length` tokens (default `max_length`): the deployment's shape, which may be longer
    than the texts need. `train` fine-tunes and calibrates, `eval` is the selection split, `test` (held
    out) is read only to report the final front and the picks, `unlabeled` (texts without labels) only by
    a fine-tune that distils (Task.unlabeled_data). Labels are integer class ids."""
    for name, value in (("max_length", max_length), ("deploy_length", deploy_length or max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TaskError(f"hf.text_task: {name}={describe(value)}; give a positive number of tokens, e.g. 128.")
    if isinstance(deploy_batch, bool) or not isinstance(deploy_batch, int) or deploy_batch < 1:
        raise TaskError(f"hf.text_task: deploy_batch={describe(deploy_batch)}; give a positive batch size, e.g. 1.")
    if not callable(tokenizer):
        raise TaskError(
            f"hf.text_task: tokenizer={describe(tokenizer)}; pass a Hugging Face tokenizer, e.g. "
            "AutoTokenizer.from_pretrained(path)."
        )
    train_x, train_y = _encode(tokenizer, train, "train", max_length)
    eval_x, eval_y = _encode(tokenizer, eval, "eval", max_length)
    test_data = None if test is None else _encode(tokenizer, test, "test", max_length)
    if unlabeled is not None and (isinstance(unlabeled, str) or not isinstance(unlabeled, Sequence)):
        raise TaskError(f"hf.text_task: unlabeled={describe(unlabeled)}; give a sequence of texts, or None.")
    extra = (
        None if unlabeled is None else _encode(tokenizer, (unlabeled, [0] * len(unlabeled)), "unlabeled", max_length)
    )
    if deploy_batch > len(eval_y):
        raise TaskError(f"hf.text_task: deploy_batch {deploy_batch} is more than the {len(eval_y)} eval texts.")
    if deploy_length is None or deploy_length == max_length:
        example = {k: v[:deploy_batch].clone() for k, v in eval_x.items()}
    else:
        example, _ = _encode(tokenizer, (list(eval[0])[:deploy_batch], eval_y[:deploy_batch]), "eval", deploy_length)
    return Task(
        train_data=(train_x, train_y),
        eval_data=(eval_x, eval_y),
        test_data=test_data,
        unlabeled_data=None if extra is None else extra[0],
        example_input=example,
        batch_size=batch_size,
        device=device,
    )


__all__ = ["text_task"]
