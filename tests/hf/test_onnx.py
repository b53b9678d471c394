"""ONNX export of a compressed Hugging Face model with keyword inputs: the graph takes input_ids and
attention_mask by name, any batch and any sequence length, and its query weights have the pruned shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import autoshrink as ash
from autoshrink.policy import BlockPolicy
from autoshrink.weights import quantize_codes

from .conftest import FAST, TupleBert, argmax_accuracy, bert_task, tiny_bert, tokens

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

QUERY0 = "bert.encoder.layer.0.attention.self.query.weight"
QUERY1 = "bert.encoder.layer.1.attention.self.query.weight"
PRUNED = ash.Policy(
    blocks={
        "bert.encoder.layer.0": BlockPolicy(heads=0.5, neurons=0.5),
        "bert.encoder.layer.1": BlockPolicy(heads=0.25),
    }
)


def padded_batch() -> dict[str, torch.Tensor]:
    """3 sequences of 40 tokens (longer than the 16 exported with), padded after random lengths."""
    x = tokens(3, seed=7, seq=40)
    x["attention_mask"][0, 10:] = 0  # at least one sequence is surely padded
    x["input_ids"][0, 10:] = 0
    return x


def session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def run(path: str, x: dict[str, torch.Tensor]) -> list[np.ndarray]:
    return session(path).run(None, {k: v.numpy() for k, v in x.items()})


def initializers(path: str) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def test_a_pruned_bert_exports_keyword_inputs_with_dynamic_batch_and_sequence(tmp_path) -> None:
    small = ash.apply_policy(tiny_bert(), PRUNED)
    out = ash.export_onnx(small, tmp_path / "m.onnx", example_input=tokens(1, 0))
    assert out.inputs == ("input_ids", "attention_mask") and out.outputs == ("logits",)
    proto = onnx.load(out.path)
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    assert dims == [["batch", "sequence"], ["batch", "sequence"]]

    x = padded_batch()
    assert x["attention_mask"].sum(1).tolist()[0] == 10 and x["input_ids"].shape == (3, 40)
    (got,) = run(out.path, x)
    with torch.no_grad():
        ref = small(**x).logits.numpy()
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)

    # the query projection reads its (pruned) weight initializer, transposed, in a MatMul
    (transpose,) = [n for n in proto.graph.node if QUERY0 in n.input]
    assert transpose.op_type == "Transpose"
    assert [n.op_type for n in proto.graph.node if transpose.output[0] in n.input] == ["MatMul"]
    inits = initializers(out.path)
    assert inits[QUERY0].shape == (16, 32)  # 2 of 4 heads of 8 left
    assert inits[QUERY1].shape == (24, 32)  # 3 of 4 heads left
    assert np.array_equal(inits[QUERY0], small.bert.encoder.layer[0].attention.self.query.weight.detach().numpy())
    assert inits["bert.encoder.layer.0.intermediate.dense.weight"].shape == (32, 32)
    assert inits["bert.encoder.layer.0.output.dense.weight"].shape == (32, 32)
    assert inits["bert.encoder.layer.1.intermediate.dense.weight"].shape == (64, 32)


def test_the_exported_graph_runs_the_batch_it_was_exported_with_too(tmp_path) -> None:
    small = ash.apply_policy(tiny_bert(), PRUNED)
    example = tokens(1, 0)
    out = ash.export_onnx(small, tmp_path / "m.onnx", example_input=example)
    (got,) = run(out.path, example)
    with torch.no_grad():
        ref = small(**example).logits.numpy()
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_int8_weights_of_a_pruned_bert_export_as_int8_initializers_of_the_pruned_shape(tmp_path) -> None:
    policy = ash.Policy(
        layers={
            "bert.encoder.layer.1.attention.self.query": ash.LayerPolicy(bits=8),
            "classifier": ash.LayerPolicy(bits=8),
        },
        blocks=PRUNED.blocks,
    )
    small = ash.apply_policy(tiny_bert(), policy)
    out = ash.export_onnx(small, tmp_path / "q.onnx", example_input=tokens(1, 0), activations="weights")
    assert set(out.qdq_weights) == {"bert.encoder.layer.1.attention.self.query", "classifier"}
    inits = initializers(out.path)
    codes, scales = quantize_codes(small.bert.encoder.layer[1].attention.self.query.weight.detach(), 8)
    assert inits[f"{QUERY1}_quantized"].dtype == np.int8 and inits[f"{QUERY1}_quantized"].shape == (24, 32)
    assert np.array_equal(inits[f"{QUERY1}_quantized"], codes.numpy())  # the exact codes of the 3 heads kept
    assert np.array_equal(inits[f"{QUERY1}_scale"], scales.numpy()) and inits[f"{QUERY1}_scale"].shape == (24,)
    assert QUERY1 not in inits  # no float copy of the weight
    assert inits[QUERY0].shape == (16, 32) and inits[QUERY0].dtype == np.float32
    x = padded_batch()
    (got,) = run(out.path, x)
    with torch.no_grad():
        ref = small(**x).logits.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_a_tuple_returning_wrapper_exports_both_outputs(tmp_path) -> None:
    small = ash.apply_policy(TupleBert().eval(), PRUNED)
    out = ash.export_onnx(small, tmp_path / "t.onnx", example_input=tokens(1, 0))
    assert out.inputs == ("input_ids", "attention_mask") and out.outputs == ("output_0", "output_1")
    x = padded_batch()
    logits, hidden = run(out.path, x)
    with torch.no_grad():
        ref_logits, ref_hidden = small(**x)
    assert logits.shape == (3, 2) and hidden.shape == (3, 32)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(hidden, ref_hidden.numpy(), atol=1e-4, rtol=0)


def test_keyword_inputs_in_a_tokenizers_order_are_named_right(tmp_path) -> None:
    """A tokenizer gives input_ids, token_type_ids, attention_mask; BERT's forward takes input_ids,
    attention_mask, token_type_ids. The graph's names follow the forward, so each feed lands where it
    belongs (named in the tokenizer's order, the mask was read as token types)."""
    model = tiny_bert()
    x = tokens(1, seed=3)
    example = {"input_ids": x["input_ids"], "token_type_ids": torch.zeros_like(x["input_ids"])}
    example["attention_mask"] = x["attention_mask"]
    ash.export_onnx(model, tmp_path / "m.onnx", example_input=example, activations="weights")
    s = session(str(tmp_path / "m.onnx"))
    assert [i.name for i in s.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    batch = padded_batch()
    batch = {"input_ids": batch["input_ids"], "token_type_ids": torch.zeros_like(batch["input_ids"])} | {
        "attention_mask": batch["attention_mask"]
    }
    out = s.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    with torch.no_grad():
        want = model(**batch).logits.numpy()
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)


def test_the_onnxruntime_runtime_times_and_scores_a_bert_through_the_session() -> None:
    """measure(runtime="onnxruntime") on keyword inputs: accuracy through the ORT session equals the float
    model's on these examples (float weights: the export computes what torch does), and the runtime is
    recorded."""
    model, task = tiny_bert(), bert_task()
    small = ash.apply_policy(model, PRUNED)
    m = ash.measure(small, task, runtime="onnxruntime", latency=FAST)
    assert m.runtime == "onnxruntime"
    assert m.accuracy == argmax_accuracy(small, task)
    assert m.latency_ms > 0


def test_a_quantized_embedding_table_is_gathered_by_row_then_dequantized(tmp_path) -> None:
    """A 4-bit word-embedding table: the graph gathers int8 codes and per-row scales (no DequantizeLinear
    of the whole table) and computes what torch does with the same codes."""
    model = tiny_bert()
    policy = ash.Policy(layers={"bert.embeddings.word_embeddings": ash.LayerPolicy(bits=4)})
    small = ash.apply_policy(model, policy)
    x = tokens(1, seed=3)
    info = ash.export_onnx(small, tmp_path / "m.onnx", example_input=x, activations="weights")
    assert info.gathered_weights == ("bert.embeddings.word_embeddings",) and info.qdq_weights == ()
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    table = "bert.embeddings.word_embeddings.weight"
    assert not [n for n in graph.node if n.op_type == "DequantizeLinear" and table in n.output]
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0].startswith(table)]
    assert sorted(n.input[0] for n in gathers) == [f"{table}_quantized", f"{table}_scale"]
    batch = padded_batch()
    with torch.no_grad():
        want = small(**batch).logits.numpy()
    np.testing.assert_allclose(run(str(tmp_path / "m.onnx"), batch)[0], want, atol=1e-5, rtol=0)
