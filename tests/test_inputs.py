"""autoshrink/inputs.py: one tensor or a mapping of named tensors in, a tensor / ModelOutput / tuple out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoshrink.errors import TaskError
from autoshrink.inputs import batch_len, call, check_inputs, forward, logits, shown, take, tensors, to_device

transformers = pytest.importorskip("transformers")
from transformers.modeling_outputs import SequenceClassifierOutput  # noqa: E402

LOGITS = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
HIDDEN = torch.tensor([[9.0], [8.0]])


def batch() -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.arange(12).reshape(3, 4),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]),
    }


# -- logits ---------------------------------------------------------------------------------------------


def test_logits_of_a_tensor_is_the_tensor_itself() -> None:
    assert logits(LOGITS) is LOGITS


def test_logits_of_a_model_output_reads_its_logits_field_not_its_first_tensor() -> None:
    loss = torch.tensor(0.5)
    out = SequenceClassifierOutput(loss=loss, logits=LOGITS, hidden_states=(HIDDEN,))
    assert next(iter(out.values())) is loss  # the first field is the loss ...
    assert logits(out) is LOGITS  # ... but the logits are read


def test_logits_of_a_model_output_without_logits_is_its_first_tensor() -> None:
    out = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=HIDDEN)
    assert logits(out) is HIDDEN


def test_logits_of_a_dict_reads_logits_else_the_first_tensor() -> None:
    assert logits({"hidden": HIDDEN, "logits": LOGITS}) is LOGITS
    assert logits({"name": "x", "scores": LOGITS, "hidden": HIDDEN}) is LOGITS
    # a non-tensor `logits` entry is not read as the logits: the first tensor is
    assert logits({"logits": [1.0, 2.0], "hidden": HIDDEN}) is HIDDEN


def test_logits_of_a_tuple_or_list_is_its_first_element() -> None:
    assert logits((LOGITS, HIDDEN)) is LOGITS
    assert logits([HIDDEN, LOGITS]) is HIDDEN


@pytest.mark.parametrize(
    "output, shown_as",
    [
        ("text", "'text'"),
        ({"a": 1}, "{'a': 1}"),
        ((), "()"),
        (("no tensor", LOGITS), "('no tensor', tensor("),
        (None, "None"),
    ],
)
def test_an_output_with_no_tensor_to_read_is_one_task_error_naming_it_and_the_fix(output, shown_as) -> None:
    with pytest.raises(TaskError) as info:
        logits(output, where="Task.eval_data")
    text = str(info.value)
    assert text.startswith(f"Task.eval_data: the model returned {shown_as}")
    assert "a ModelOutput with `logits`" in text
    assert text.endswith("Fix: return the logits.")


def test_forward_calls_a_mapping_as_keywords_and_a_tensor_positionally() -> None:
    class Keywords(nn.Module):
        def forward(self, input_ids, attention_mask):
            return SequenceClassifierOutput(logits=(input_ids * attention_mask).sum(1, keepdim=True).float())

    class Positional(nn.Module):
        def forward(self, x):
            return (x * 2, x)

    x = batch()
    assert torch.equal(forward(Keywords(), x), torch.tensor([[6.0], [9.0], [8.0]]))
    assert isinstance(call(Keywords(), x), SequenceClassifierOutput)
    t = torch.tensor([[1.0, 2.0]])
    assert torch.equal(forward(Positional(), t), torch.tensor([[2.0, 4.0]]))


# -- batch_len / take / to_device / tensors / shown ------------------------------------------------------


def test_batch_len_is_the_first_dimension_of_the_first_tensor() -> None:
    assert batch_len(batch()) == 3
    assert batch_len({"note": "skip me", "pixel_values": torch.zeros(5, 3, 2, 2)}) == 5
    assert batch_len(torch.zeros(7, 2)) == 7
    assert batch_len(torch.tensor(1.0)) == 1
    assert batch_len({"note": "no tensor"}) == 1


def test_take_slices_every_tensor_of_a_mapping_and_keeps_other_values() -> None:
    x = {**batch(), "note": "kept"}
    rows = take(x, slice(1, 3))
    assert list(rows) == ["input_ids", "attention_mask", "note"]
    assert torch.equal(rows["input_ids"], torch.tensor([[4, 5, 6, 7], [8, 9, 10, 11]]))
    assert torch.equal(rows["attention_mask"], torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]))
    assert rows["note"] == "kept"
    picked = take(x, torch.tensor([2, 0]))
    assert torch.equal(picked["input_ids"], torch.tensor([[8, 9, 10, 11], [0, 1, 2, 3]]))
    assert torch.equal(picked["attention_mask"], torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]]))
    assert torch.equal(take(torch.arange(5), slice(3, None)), torch.tensor([3, 4]))


def test_to_device_moves_every_tensor_of_a_mapping_into_a_new_dict() -> None:
    x = {**batch(), "note": "kept"}
    moved = to_device(x, "meta")
    assert moved is not x and list(moved) == ["input_ids", "attention_mask", "note"]
    assert moved["input_ids"].device.type == "meta" and moved["attention_mask"].device.type == "meta"
    assert moved["input_ids"].shape == (3, 4) and moved["input_ids"].dtype == torch.int64
    assert moved["note"] == "kept"
    assert x["input_ids"].device.type == "cpu"  # the caller's mapping is left as it was
    assert to_device(torch.zeros(2), "meta").device.type == "meta"


def test_tensors_and_shown() -> None:
    x = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "note": "x", "mask": torch.ones(2, 3)}
    assert [t.shape for t in tensors(x)] == [(2, 3), (2, 3)]
    assert shown(x) == "{input_ids: shape [2, 3], torch.int64, note: 'x', mask: shape [2, 3], torch.float32}"
    assert shown(torch.zeros(1, 8, dtype=torch.float16)) == "shape [1, 8], torch.float16"


# -- check_inputs -----------------------------------------------------------------------------------------


def test_check_inputs_accepts_a_tensor_and_a_mapping_of_one_batch() -> None:
    check_inputs(torch.zeros(1, 4), "Task.example_input")
    check_inputs(batch(), "Task.example_input")
    check_inputs(batch(), "Task.example_input", batch=3)


def test_check_inputs_empty_mapping_names_the_field_and_the_two_accepted_forms() -> None:
    with pytest.raises(TaskError) as info:
        check_inputs({}, "Task.example_input")
    text = str(info.value)
    assert text.startswith("Task.example_input: got {}; expected a tensor shaped like one input batch")
    assert "torch.randn(1, 1, 28, 28)" in text
    assert "{'input_ids': ..., 'attention_mask': ...}" in text


def test_check_inputs_non_tensor_value_names_the_key_and_return_tensors_pt() -> None:
    with pytest.raises(TaskError) as info:
        check_inputs({"input_ids": torch.zeros(2, 3), "attention_mask": [[1, 1, 1], [1, 1, 0]]}, "Task.example_input")
    assert str(info.value) == (
        "Task.example_input['attention_mask']: got [[1, 1, 1], [1, 1, 0]]; every entry of a mapping input must be "
        "a tensor under a str key (e.g. return_tensors='pt')."
    )


def test_check_inputs_non_str_key_is_refused() -> None:
    with pytest.raises(TaskError, match=r"^Task.example_input\[0\]: got tensor"):
        check_inputs({0: torch.zeros(2, 3)}, "Task.example_input")


def test_check_inputs_mismatched_first_dimensions_shows_every_shape() -> None:
    x = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.ones(3, 5, dtype=torch.long)}
    with pytest.raises(TaskError) as info:
        check_inputs(x, "Task.example_input")
    assert str(info.value) == (
        "Task.example_input: the tensors' first dimensions differ ({input_ids: shape [2, 5], torch.int64, "
        "attention_mask: shape [3, 5], torch.int64}); they all hold the same batch."
    )


def test_check_inputs_batch_differing_from_the_labels_is_refused() -> None:
    with pytest.raises(TaskError, match=r"^Task.train_data inputs: the tensors' first dimensions differ"):
        check_inputs(batch(), "Task.train_data inputs", batch=4)


def test_check_inputs_zero_d_tensor_in_a_mapping_names_its_key_and_the_batch_fix() -> None:
    with pytest.raises(TaskError) as info:
        check_inputs({"input_ids": torch.zeros(2, 3), "token_type_ids": torch.tensor(0)}, "Task.example_input")
    assert str(info.value) == (
        "Task.example_input['token_type_ids']: shape [] holds no example; every tensor needs the batch first."
    )


@pytest.mark.parametrize("x, shape", [(torch.tensor(3.0), "[]"), (torch.zeros(0, 4), "[0, 4]")])
def test_check_inputs_tensor_without_an_example_names_the_field_and_the_fix(x, shape) -> None:
    with pytest.raises(TaskError) as info:
        check_inputs(x, "Task.example_input")
    assert str(info.value) == (
        f"Task.example_input: shape {shape} holds no example; give one batch of at least one input "
        "(its first dimension is the batch)."
    )


def test_check_inputs_of_something_else_names_what_it_got() -> None:
    with pytest.raises(TaskError, match=r"^Task.example_input: got \[1, 2\]; expected a tensor"):
        check_inputs([1, 2], "Task.example_input")
