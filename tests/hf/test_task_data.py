"""Task data in the Hugging Face forms: (mapping, y), datasets.Dataset, lists of dicts (task_data.py), and
check_task's refusals of inputs that do not fit the example input (task_check.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import autoshrink as ash
from autoshrink.task import iterate_batches
from autoshrink.task_check import check_task
from autoshrink.task_data import MappingDataset, as_dataset

from .conftest import SEQ, labels_of, tiny_bert, tokens

datasets = pytest.importorskip("datasets")

PAD_FIX = "pad them to one length, e.g. tokenizer(texts, padding='max_length', truncation=True, max_length=128)."


def glue_like(n: int = 6, seq: int = 5) -> datasets.Dataset:
    """A tokenized GLUE-style dataset: a text column, an `idx` column, three token columns and a label."""
    ids = [[101 + i, 7 + i, 8, 0, 0][:seq] for i in range(n)]
    return datasets.Dataset.from_dict(
        {
            "sentence": [f"text {i}" for i in range(n)],
            "idx": list(range(n)),
            "input_ids": ids,
            "token_type_ids": [[0] * seq for _ in range(n)],
            "attention_mask": [[1, 1, 1, 0, 0][:seq] for _ in range(n)],
            "label": [i % 2 for i in range(n)],
        }
    )


# -- what becomes of each form ------------------------------------------------------------------------------


def test_mapping_and_labels_become_a_mapping_dataset_of_the_same_tensors() -> None:
    x = tokens(10, seed=1)
    y = labels_of(x)
    data = as_dataset((x, y), "train_data")
    assert isinstance(data, MappingDataset) and len(data) == 10
    assert list(data.inputs) == ["input_ids", "attention_mask"]
    assert data.inputs["input_ids"] is x["input_ids"] and data.labels is y  # held as given: no copy
    example, label = data[3]
    assert torch.equal(example["input_ids"], x["input_ids"][3]) and torch.equal(label, y[3])


def test_a_datasets_dataset_keeps_the_token_columns_and_drops_text_and_idx() -> None:
    data = as_dataset(glue_like(), "train_data")
    assert isinstance(data, MappingDataset)
    assert list(data.inputs) == ["input_ids", "token_type_ids", "attention_mask"]
    assert {k: (tuple(v.shape), v.dtype) for k, v in data.inputs.items()} == {
        "input_ids": ((6, 5), torch.int64),
        "token_type_ids": ((6, 5), torch.int64),
        "attention_mask": ((6, 5), torch.int64),
    }
    assert data.inputs["input_ids"][:, 0].tolist() == [101, 102, 103, 104, 105, 106]
    assert data.labels.tolist() == [0, 1, 0, 1, 0, 1] and data.labels.dtype == torch.int64


def test_a_dataset_in_torch_format_reads_the_same() -> None:
    plain = as_dataset(glue_like(), "train_data")
    formatted = as_dataset(glue_like().with_format("torch"), "train_data")
    assert list(formatted.inputs) == list(plain.inputs)
    assert all(torch.equal(formatted.inputs[k], plain.inputs[k]) for k in plain.inputs)
    assert torch.equal(formatted.labels, plain.labels)


def test_float_columns_of_pixels_become_float32_inputs() -> None:
    rows = [{"pixel_values": [[[0.5, 1.0], [0.25, 0.0]]], "label": i} for i in range(3)]
    data = as_dataset(rows, "train_data")
    assert list(data.inputs) == ["pixel_values"]
    assert data.inputs["pixel_values"].shape == (3, 1, 2, 2) and data.inputs["pixel_values"].dtype == torch.float32
    assert data.inputs["pixel_values"][2, 0].tolist() == [[0.5, 1.0], [0.25, 0.0]]


def test_a_list_of_dicts_reads_lists_and_tensors_alike() -> None:
    rows = [{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 0], "label": 1} for _ in range(4)]
    data = as_dataset(rows, "eval_data")
    assert list(data.inputs) == ["input_ids", "attention_mask"]
    assert data.inputs["input_ids"].tolist() == [[1, 2, 3]] * 4
    assert data.labels.tolist() == [1, 1, 1, 1]
    as_tensors = [{"input_ids": torch.tensor([1, 2, 3]), "label": torch.tensor(i)} for i in range(3)]
    data = as_dataset(as_tensors, "eval_data")
    assert data.inputs["input_ids"].shape == (3, 3) and data.labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize("key", ["label", "labels"])
def test_the_label_column_may_be_label_or_labels(key) -> None:
    rows = [{"input_ids": [i, i + 1], key: 2.5 * i} for i in range(3)]
    data = as_dataset(rows, "train_data")
    assert list(data.inputs) == ["input_ids"]  # the label column is never an input
    assert data.labels.tolist() == [0.0, 2.5, 5.0] and data.labels.dtype == torch.float32  # regression targets


def test_label_is_preferred_when_both_label_and_labels_are_there() -> None:
    rows = [{"input_ids": [1, 2], "labels": [9, 9], "label": i} for i in range(2)]
    data = as_dataset(rows, "train_data")
    assert list(data.inputs) == ["input_ids"] and data.labels.tolist() == [0, 1]


# -- refusals -------------------------------------------------------------------------------------------------


def test_no_label_column_names_what_was_found_and_the_rename() -> None:
    ds = glue_like().remove_columns("label")
    with pytest.raises(ash.TaskError) as info:
        ash.Task(train_data=ds, eval_data=glue_like(), example_input=tokens(1, 0))
    assert str(info.value) == (
        "Task.train_data: the examples have no 'label' (or 'labels') entry; found ['attention_mask', 'idx', "
        "'input_ids', 'sentence', 'token_type_ids']. Fix: name the target column 'label' "
        "(dataset.rename_column(old, 'label'))."
    )


def test_text_labels_are_refused() -> None:
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2]] * 2, "label": ["pos", "neg"]})
    with pytest.raises(ash.TaskError) as info:
        as_dataset(ds, "eval_data")
    assert str(info.value) == (
        "Task.eval_data: the 'label' entries are not numbers; give class ids (or regression targets)."
    )


def test_text_only_examples_say_tokenize_first() -> None:
    with pytest.raises(ash.TaskError) as info:
        as_dataset([{"text": "a", "idx": 0, "label": 0}], "eval_data")
    assert str(info.value).startswith(
        "Task.eval_data: no column holds model inputs (found ['idx', 'label', 'text']); tokenize the texts first"
    )


@pytest.mark.parametrize(
    "data",
    [
        datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "label": [0, 1]}),
        [{"input_ids": [1, 2, 3], "label": 0}, {"input_ids": [4, 5], "label": 1}],
        [{"input_ids": [1, 2], "label": 0}, {"input_ids": [4, 5, 6], "label": 1}],
        [{"input_ids": torch.tensor([1, 2, 3]), "label": 0}, {"input_ids": torch.tensor([4, 5]), "label": 1}],
    ],
    ids=["dataset", "longer-first", "shorter-first", "tensors"],
)
def test_ragged_sequences_are_refused_with_the_padding_fix(data) -> None:
    with pytest.raises(ash.TaskError) as info:
        as_dataset(data, "train_data")
    assert str(info.value) == f"Task.train_data: column 'input_ids' holds sequences of different lengths; {PAD_FIX}"


@pytest.mark.filterwarnings("ignore:Creating a tensor from a list of numpy.ndarrays")
def test_ragged_numpy_rows_are_refused_with_the_padding_fix() -> None:
    rows = [{"input_ids": np.array([1, 2, 3]), "label": 0}, {"input_ids": np.array([4, 5]), "label": 1}]
    with pytest.raises(ash.TaskError) as info:
        as_dataset(rows, "train_data")
    assert str(info.value) == f"Task.train_data: column 'input_ids' holds sequences of different lengths; {PAD_FIX}"


def test_rows_with_other_keys_are_refused_naming_the_row() -> None:
    rows = [{"input_ids": [1, 2], "label": 0}, {"input_ids": [3, 4], "target": 1}]
    with pytest.raises(ash.TaskError) as info:
        as_dataset(rows, "train_data")
    assert str(info.value) == (
        "Task.train_data[1]: got {'input_ids': [3, 4], 'target': 1}; every example of a list must be a dict "
        "with the same keys as the first (['input_ids', 'label'])."
    )


def test_rows_with_the_same_keys_in_another_order_are_accepted() -> None:
    data = as_dataset([{"input_ids": [1, 2], "label": 0}, {"label": 1, "input_ids": [3, 4]}], "train_data")
    assert data.inputs["input_ids"].tolist() == [[1, 2], [3, 4]] and data.labels.tolist() == [0, 1]


def test_mapping_inputs_and_labels_of_different_lengths_name_both_counts() -> None:
    x = tokens(4, seed=1)
    with pytest.raises(ash.TaskError) as info:
        as_dataset((x, torch.zeros(5, dtype=torch.long)), "train_data")
    assert "4" in str(info.value) and "y has 5" in str(info.value)


def test_mapping_inputs_of_different_lengths_are_refused() -> None:
    x = {"input_ids": torch.zeros(4, 3, dtype=torch.long), "attention_mask": torch.ones(3, 3, dtype=torch.long)}
    with pytest.raises(ash.TaskError, match=r"^Task.train_data inputs: the tensors' first dimensions differ"):
        as_dataset((x, torch.zeros(4, dtype=torch.long)), "train_data")


def test_an_empty_dataset_is_refused() -> None:
    empty = glue_like().select([])
    with pytest.raises(ash.TaskError) as info:
        as_dataset(empty, "eval_data")
    assert str(info.value) == "Task.eval_data: the dataset is empty; give at least one example."


# -- splits and batches ---------------------------------------------------------------------------------------


def holdout_data() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """20 examples whose first token names them (1..20), 12 of class 0 and 8 of class 1, shuffled."""
    x = tokens(20, seed=4)
    x["input_ids"][:, 0] = torch.arange(20) + 1
    y = torch.tensor([0] * 12 + [1] * 8)[torch.randperm(20, generator=torch.Generator().manual_seed(5))]
    return x, y


def holdout_task() -> ash.Task:
    x, y = holdout_data()
    return ash.Task(train_data=(x, y), eval_data=(x, y), example_input=tokens(1, 0), holdout=0.25, device="cpu")


def test_holdout_splits_a_mapping_dataset_stratified_with_exact_counts() -> None:
    task = holdout_task()
    sel, held = task.eval_data, task.test_data
    assert isinstance(sel, MappingDataset) and isinstance(held, MappingDataset)
    assert task.split_record() == {"holdout": 0.25, "selection": 15, "held_out": 5, "stratified": True}
    # per class: round(0.25 * 12) = 3 and round(0.25 * 8) = 2 held out
    assert torch.bincount(held.labels, minlength=2).tolist() == [3, 2]
    assert torch.bincount(sel.labels, minlength=2).tolist() == [9, 6]
    ids_sel, ids_held = sel.inputs["input_ids"][:, 0].tolist(), held.inputs["input_ids"][:, 0].tolist()
    assert sorted(ids_sel + ids_held) == list(range(1, 21))  # a partition of the examples
    assert ids_sel == sorted(ids_sel) and ids_held == sorted(ids_held)  # each part in the data's own order
    x, y = holdout_data()
    for part in (sel, held):  # every row travels whole: its inputs and its label
        rows = part.inputs["input_ids"][:, 0] - 1
        assert torch.equal(part.inputs["input_ids"], x["input_ids"][rows])
        assert torch.equal(part.inputs["attention_mask"], x["attention_mask"][rows])
        assert torch.equal(part.labels, y[rows])
    assert list(held.inputs) == ["input_ids", "attention_mask"]
    assert task.train_data.inputs["input_ids"].shape == (20, SEQ)  # the training split is not touched


def test_the_holdout_split_is_the_same_every_time() -> None:
    a, b = holdout_task(), holdout_task()
    assert torch.equal(a.test_data.inputs["input_ids"], b.test_data.inputs["input_ids"])


def test_batches_of_a_mapping_dataset_are_mappings_of_exact_slices() -> None:
    x = tokens(10, seed=1)
    y = labels_of(x)
    task = ash.Task(train_data=(x, y), eval_data=(x, y), example_input=tokens(1, 0), batch_size=4, device="cpu")
    batches = list(iterate_batches(task.train_data, 4))
    assert [tuple(b["input_ids"].shape) for b, _ in batches] == [(4, SEQ), (4, SEQ), (2, SEQ)]
    assert [tuple(b["attention_mask"].shape) for b, _ in batches] == [(4, SEQ), (4, SEQ), (2, SEQ)]
    assert all(list(b) == ["input_ids", "attention_mask"] for b, _ in batches)
    assert torch.equal(torch.cat([b["input_ids"] for b, _ in batches]), x["input_ids"])
    assert torch.equal(torch.cat([t for _, t in batches]), y)
    g = torch.Generator().manual_seed(0)
    shuffled = list(iterate_batches(task.train_data, 4, shuffle=True, generator=g))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(shuffled[0][0]["input_ids"], x["input_ids"][order[:4]])
    assert torch.equal(shuffled[0][1], y[order[:4]])
    assert task.deploy_batch == 1


def test_a_task_built_from_a_dataset_passes_check_task_on_bert() -> None:
    ds = datasets.Dataset.from_dict(
        {
            "text": ["t"] * 8,
            "idx": list(range(8)),
            **{k: v.tolist() for k, v in tokens(8, 1).items()},
            "label": [0, 1] * 4,
        }
    )
    task = ash.Task(train_data=ds, eval_data=ds, example_input=tokens(1, 0), device="cpu")
    check_task(tiny_bert(), task)  # no error


# -- check_task: inputs that do not fit the example input -----------------------------------------------------


def test_check_task_refuses_train_inputs_of_another_dtype_than_the_example() -> None:
    x = tokens(8, 1)
    example = {k: v.int() for k, v in tokens(1, 0).items()}  # int32, which BERT runs too
    task = ash.Task(train_data=(x, labels_of(x)), eval_data=(x, labels_of(x)), example_input=example, device="cpu")
    with pytest.raises(ash.TaskError) as info:
        check_task(tiny_bert(), task)
    assert str(info.value) == (
        "Task.train_data: inputs['input_ids'] are torch.int64 but example_input['input_ids'] is torch.int32; "
        "give both as the model's input dtype."
    )


def test_check_task_refuses_eval_inputs_with_other_names_than_the_example() -> None:
    x = tokens(8, 1)
    ev = {**tokens(8, 2), "token_type_ids": torch.zeros(8, SEQ, dtype=torch.long)}
    task = ash.Task(
        train_data=(x, labels_of(x)), eval_data=(ev, labels_of(ev)), example_input=tokens(1, 0), device="cpu"
    )
    with pytest.raises(ash.TaskError) as info:
        check_task(tiny_bert(), task)
    assert str(info.value) == (
        "Task.eval_data: inputs are {input_ids: shape [8, 16], torch.int64, attention_mask: shape [8, 16], "
        "torch.int64, token_type_ids: shape [8, 16], torch.int64} but example_input is {input_ids: shape [1, 16], "
        "torch.int64, attention_mask: shape [1, 16], torch.int64}; give both in the same form (the same names, "
        "for a mapping)."
    )


def test_check_task_refuses_a_tensor_example_for_mapping_data() -> None:
    x = tokens(8, 1)
    task = ash.Task(
        train_data=(x, labels_of(x)), eval_data=(x, labels_of(x)), example_input=torch.zeros(1, SEQ, dtype=torch.long)
    )
    with pytest.raises(ash.TaskError) as info:
        check_task(tiny_bert(), task)
    assert str(info.value).startswith("Task.train_data: inputs are {input_ids: shape [8, 16], torch.int64")
    assert str(info.value).endswith(
        "but example_input is shape [1, 16], torch.int64; give both in the same form (the same names, for a mapping)."
    )


def test_check_task_refuses_held_out_inputs_of_another_dtype_without_running_them() -> None:
    x = tokens(8, 1)
    test_x = {k: v.int() for k, v in tokens(4, 2).items()}
    task = ash.Task(
        train_data=(x, labels_of(x)),
        eval_data=(x, labels_of(x)),
        test_data=(test_x, labels_of(test_x)),
        example_input=tokens(1, 0),
        device="cpu",
    )
    with pytest.raises(ash.TaskError) as info:
        check_task(tiny_bert(), task)
    assert str(info.value) == (
        "Task.test_data: inputs['input_ids'] are torch.int32 but example_input['input_ids'] is torch.int64; "
        "give both as the model's input dtype."
    )


def test_check_task_refuses_labels_beyond_the_classes() -> None:
    x = tokens(8, 1)
    y = torch.tensor([0, 1, 2, 0, 1, 0, 1, 0])
    task = ash.Task(train_data=(x, y), eval_data=(x, labels_of(x)), example_input=tokens(1, 0), device="cpu")
    with pytest.raises(ash.TaskError) as info:
        check_task(tiny_bert(), task)
    assert str(info.value) == (
        "Task.train_data: labels span 0..2, but the model outputs 2 classes (labels 0..1); fix the labels or "
        "the model's last layer."
    )
