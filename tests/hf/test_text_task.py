"""ash.hf.text_task: texts and labels through a real (tiny, offline) Hugging Face tokenizer into a Task."""

from __future__ import annotations

import pytest
import torch

import autoshrink as ash
from autoshrink.errors import TaskError

transformers = pytest.importorskip("transformers")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "very"]


@pytest.fixture
def tokenizer():
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def test_splits_are_padded_tokens_with_labels(tokenizer) -> None:
    task = ash.hf.text_task(
        tokenizer,
        train=(["good film", "bad plot", "very good"], [1, 0, 1]),
        eval=(["bad film", "good plot"], [0, 1]),
        test=(["very bad"], [0]),
        max_length=6,
        device="cpu",
    )
    assert (len(task.train_data), len(task.eval_data), len(task.test_data)) == (3, 2, 1)
    x, y = task.train_data.inputs, task.train_data.labels
    assert sorted(x) == ["attention_mask", "input_ids", "token_type_ids"]
    # [CLS] good film [SEP] [PAD] [PAD]
    assert x["input_ids"][0].tolist() == [2, 5, 7, 3, 0, 0]
    assert x["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0]
    assert y.tolist() == [1, 0, 1] and y.dtype == torch.long
    assert {k: list(v.shape) for k, v in task.example_input.items()} == {
        "input_ids": [1, 6],
        "token_type_ids": [1, 6],
        "attention_mask": [1, 6],
    }
    assert task.example_input["input_ids"][0].tolist() == [2, 6, 7, 3, 0, 0]  # the first eval text
    assert task.deploy_batch == 1


def test_unlabeled_texts_become_unlabeled_inputs(tokenizer) -> None:
    task = ash.hf.text_task(
        tokenizer, train=(["good"], [1]), eval=(["bad"], [0]), unlabeled=["very bad plot", "film"], max_length=6
    )
    assert task.unlabeled_count == 2 and task.unlabeled_data.labels.tolist() == [-1, -1]
    assert task.unlabeled_data.inputs["input_ids"].tolist() == [[2, 9, 6, 8, 3, 0], [2, 7, 3, 0, 0, 0]]
    assert ash.hf.text_task(tokenizer, train=(["good"], [1]), eval=(["bad"], [0])).unlabeled_data is None


def test_deploy_length_pads_only_the_example_input(tokenizer) -> None:
    task = ash.hf.text_task(
        tokenizer,
        train=(["good film"], [1]),
        eval=(["bad film", "good"], [0, 1]),
        max_length=5,
        deploy_length=12,
        deploy_batch=2,
        device="cpu",
    )
    assert list(task.eval_data.inputs["input_ids"].shape) == [2, 5]
    assert list(task.example_input["input_ids"].shape) == [2, 12]
    assert task.example_input["attention_mask"].sum(1).tolist() == [4, 3]
    assert task.deploy_batch == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train=(["good"], ["pos"])), "train labels must be integer class ids, got 'pos'"),
        (dict(train=(["good", "bad"], [1])), "train has 2 texts but 1 labels"),
        (dict(train=("good film", [1])), "train texts must be a sequence of strings"),
        (dict(train=([], [])), "train has no texts"),
        (dict(train=(["good"], [1]), max_length=0), "max_length=0; give a positive number of tokens"),
        (dict(train=(["good"], [1]), deploy_batch=3), "deploy_batch 3 is more than the 1 eval texts"),
        (dict(train=["good"]), "train=['good']; give a (texts, labels) pair"),
        (
            dict(train=(["good"], [1]), unlabeled="good film"),
            "unlabeled='good film'; give a sequence of texts, or None",
        ),
        (dict(train=(["good"], [1]), unlabeled=[]), "unlabeled has no texts; give at least one"),
    ],
)
def test_bad_input_is_one_clear_error(tokenizer, kwargs, message) -> None:
    settings = dict(eval=(["bad"], [0]), device="cpu") | kwargs
    with pytest.raises(TaskError) as err:
        ash.hf.text_task(tokenizer, **settings)
    assert message in str(err.value)


def test_a_tokenizer_that_is_not_one() -> None:
    with pytest.raises(TaskError, match="pass a Hugging Face tokenizer"):
        ash.hf.text_task("bert", train=(["a"], [0]), eval=(["b"], [1]))
