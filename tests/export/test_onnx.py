"""ONNX export: every technique as standard ONNX that ONNX Runtime loads, int8 codes as int8 initializers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.export import ExportError, export_onnx, ort_session, run_session, to_onnx
from autoshrink.weights import quantize_codes, weight_bits
from autoshrink.zoo.models import DigitsResNet
from tests.techniques.test_apply import TinyTransformer
from tests.techniques.test_structured import Separable

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

L = ash.LayerPolicy


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = (
            nn.Linear(64, 48),
            nn.Linear(48, 40),
            nn.Linear(40, 32),
            nn.Linear(32, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc4(torch.relu(self.fc3(x)))


EVERY = ash.Policy(
    layers={
        "fc1": L(rank=0.25, bits=4),
        "fc2": L(sparsity=0.8, bits=3),
        "fc3": L(sparsity=0.5, structured=True, bits=8),
        "fc4": L(bits=16),
    }
)


def _inits(proto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def _close(got: np.ndarray, ref: np.ndarray, rel: float) -> None:
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= rel * (1 + np.abs(ref).max()), np.abs(got - ref).max()


def _torch(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


def test_every_technique_exports_with_exact_int8_codes_and_a_dynamic_batch(tmp_path) -> None:
    torch.manual_seed(0)
    x1 = torch.randn(1, 1, 8, 8)
    small = ash.apply_policy(MLP(), EVERY, example_input=x1)
    x = torch.randn(7, 1, 8, 8)  # another batch size than the example's
    ref = _torch(small, x)
    out = export_onnx(small, tmp_path / "w.onnx", example_input=x1, activations="weights")
    assert out.qdq_weights == ("fc1.first", "fc1.second", "fc2", "fc3") and out.int8_kernels == ()
    assert out.float16_weights == ("fc4",) and out.size_bytes == (tmp_path / "w.onnx").stat().st_size
    assert out.inputs == ("input",) and out.outputs == ("output",)
    proto = onnx.load(out.path)
    inits = _inits(proto)
    modules = dict(small.named_modules())
    for name in ("fc1.first", "fc1.second", "fc2", "fc3"):
        m = modules[name]
        codes, scales = quantize_codes(m.weight, weight_bits(m))
        assert inits[f"{name}.weight_quantized"].dtype == np.int8
        assert np.array_equal(inits[f"{name}.weight_quantized"], codes.numpy())  # the exact codes
        assert np.array_equal(inits[f"{name}.weight_scale"], scales.numpy())
        assert f"{name}.weight" not in inits  # no float copy of a quantized weight
    assert int((inits["fc2.weight_quantized"] == 0).sum()) == round(0.8 * 48 * 40)  # pruned entries are code 0
    assert inits["fc3.weight_quantized"].shape == (16, 40)  # structured: the smaller layer
    assert inits["fc1.first.weight_quantized"].shape == (12, 64)  # low-rank: two factors (k = 0.25 x 48)
    assert inits["fc4.weight_fp16"].dtype == np.float16
    assert abs(inits["fc2.weight_quantized"]).max() <= 3 and abs(inits["fc1.first.weight_quantized"]).max() <= 7
    # float compute (ORT's basic optimizations): the PyTorch model's outputs up to summation order
    _close(run_session(ort_session(out.path, optimize="basic"), [x])[0], ref, 1e-5)
    _close(run_session(ort_session(out.path), [x])[0], ref, 1e-2)  # ORT may fuse DQ -> MatMul into its own kernel

    dyn = export_onnx(small, tmp_path / "d.onnx", example_input=x1)  # default: int8 kernels for Linear
    assert dyn.activations == "dynamic" and dyn.int8_kernels == ("fc1.first", "fc1.second", "fc2", "fc3")
    assert dyn.qdq_weights == ()
    proto = onnx.load(dyn.path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMulInteger") == 4 and ops.count("DynamicQuantizeLinear") == 4
    assert "DequantizeLinear" not in ops
    inits = _inits(proto)
    for name in dyn.int8_kernels:
        codes, _ = quantize_codes(modules[name].weight, weight_bits(modules[name]))
        assert np.array_equal(inits[f"{name}.weight_quantized_t"], codes.numpy().T)
    got = run_session(ort_session(dyn.path), [x])[0]
    _close(got, ref, 0.02)


def test_static_activations_use_calibrated_constant_scales(tmp_path) -> None:
    torch.manual_seed(0)
    x1 = torch.randn(1, 1, 8, 8)
    small = ash.apply_policy(MLP(), EVERY, example_input=x1)
    calib = [torch.randn(32, 1, 8, 8) for _ in range(3)]
    out = export_onnx(small, tmp_path / "s.onnx", example_input=x1, activations="static", calibration=calib)
    assert out.activations == "static" and out.int8_kernels == ("fc1.first", "fc1.second", "fc2", "fc3")
    proto = onnx.load(out.path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMulInteger") == 4 and ops.count("QuantizeLinear") == 4
    assert "DynamicQuantizeLinear" not in ops and "DequantizeLinear" not in ops
    inits = _inits(proto)
    # fc1.first's input is the flattened model input: its calibrated range, over 255 uint8 steps
    lo = min(0.0, min(float(c.min()) for c in calib))
    hi = max(0.0, max(float(c.max()) for c in calib))
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.name.startswith("fc1.first"))
    assert inits[q.input[1]] == pytest.approx((hi - lo) / 255) and int(inits[q.input[2]]) == round(
        -lo / ((hi - lo) / 255)
    )
    assert inits[q.input[2]].dtype == np.uint8 and "fc1.first.weight_scale" not in inits  # folded into the rescale
    x = torch.randn(7, 1, 8, 8)
    _close(run_session(ort_session(out.path), [x])[0], _torch(small, x), 0.05)


def test_measure_on_static_onnx_runtime_is_deterministic() -> None:
    from autoshrink.zoo import digits_task

    torch.manual_seed(0)
    task = digits_task(device="cpu")
    small = ash.apply_policy(MLP(), ash.Policy(layers={"fc1": L(bits=8), "fc2": L(sparsity=0.5, bits=4)}))
    fast = ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0.0)
    m = ash.measure(small, task, runtime="onnxruntime-static", latency=fast)
    f = ash.measure(small, task, runtime="float", latency=fast)
    assert m.runtime == "onnxruntime-static" and m.size_bytes == f.size_bytes
    assert abs(m.accuracy - f.accuracy) <= 0.03
    assert ash.measure(small, task, runtime="onnxruntime-static", latency=fast).accuracy == m.accuracy


def test_residual_structured_and_depthwise_convolutions(tmp_path) -> None:
    torch.manual_seed(0)
    res = DigitsResNet().eval()
    x1 = torch.randn(1, 1, 8, 8)
    convs = [n for n, m in res.named_modules() if isinstance(m, nn.Conv2d)]
    policy = ash.Policy(
        layers={
            convs[0]: L(sparsity=0.5, structured=True, bits=8),
            convs[1]: L(bits=4),
            convs[-1]: L(sparsity=0.5, bits=6),
        }
    )
    small = ash.apply_policy(res, policy, example_input=x1)
    x = torch.randn(5, 1, 8, 8)
    out = export_onnx(small, tmp_path / "r.onnx", example_input=x1)
    assert set(out.qdq_weights) == {convs[0], convs[1], convs[-1]} and out.int8_kernels == ()  # convs: QDQ weights
    _close(run_session(ort_session(out.path, optimize="basic"), [x])[0], _torch(small, x), 1e-5)

    sep = Separable().eval()
    x1 = torch.randn(1, 4, 8, 8)
    small = ash.apply_policy(
        sep,
        ash.Policy(layers={"dw": L(bits=4), "pw1": L(sparsity=0.5, structured=True), "fc": L(bits=8)}),
        example_input=x1,
    )
    assert small.dw.groups == 8  # the depthwise conv followed the pruned pointwise conv
    out = export_onnx(small, tmp_path / "s.onnx", example_input=x1)
    assert out.qdq_weights == ("dw",) and out.int8_kernels == ("fc",)
    x = torch.randn(3, 4, 8, 8)
    _close(run_session(ort_session(out.path), [x])[0], _torch(small, x), 0.02)


def test_attention_from_linear_and_token_id_inputs(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    ids = torch.randint(0, 100, (1, 6))
    policy = ash.Policy(
        layers={
            "embed": L(bits=8),
            "attn.q_proj": L(bits=4),
            "attn.v_proj": L(rank=0.25, bits=8),
            "attn.out_proj": L(sparsity=0.5, bits=8),
            "head": L(bits=6),
        }
    )
    small = ash.apply_policy(model, policy)
    out = export_onnx(small, tmp_path / "t.onnx", example_input=ids)
    assert out.qdq_weights == () and out.gathered_weights == ("embed",)  # rows gathered, then dequantized
    assert out.int8_kernels == ("attn.q_proj", "attn.v_proj.first", "attn.v_proj.second", "attn.out_proj", "head")
    many = torch.randint(0, 100, (4, 6))
    sess = ort_session(out.path)
    assert sess.get_inputs()[0].type == "tensor(int64)"
    _close(run_session(sess, [many])[0], _torch(small, many), 0.02)


def test_errors_are_one_clear_message_and_leave_no_file(tmp_path) -> None:
    small = ash.apply_policy(MLP(), ash.Policy(layers={"fc1": L(bits=4)}))
    x1 = torch.randn(1, 64)
    with pytest.raises(ExportError, match=r"activations='int4'; use one of dynamic, static, weights"):
        export_onnx(small, tmp_path / "a.onnx", example_input=x1, activations="int4")
    with pytest.raises(ExportError, match=r"activations='static' needs calibration=\[a few input batches\]"):
        export_onnx(small, tmp_path / "a.onnx", example_input=x1, activations="static")
    with pytest.raises(ExportError, match=r"example_input=\[\]; pass a tensor"):
        export_onnx(small, tmp_path / "a.onnx", example_input=[])
    with pytest.raises(ExportError, match=r"the model fails on example_input \(RuntimeError: .*\); pass one batch"):
        export_onnx(small, tmp_path / "a.onnx", example_input=torch.randn(1, 5))
    with pytest.raises(ExportError, match="is a directory"):
        export_onnx(small, tmp_path, example_input=x1)
    with pytest.raises(ExportError, match="does not exist; create it first"):
        export_onnx(small, tmp_path / "nope" / "a.onnx", example_input=x1)

    class Spectral(nn.Module):  # no ONNX operator computes singular values
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svdvals(self.fc(x).view(-1, 2, 4))

    with pytest.raises(ExportError, match="torch's ONNX exporter cannot export Spectral"):
        export_onnx(Spectral(), tmp_path / "b.onnx", example_input=torch.randn(1, 8))
    with pytest.raises(ExportError, match="ONNX Runtime cannot run this model"):
        ort_session(b"not an onnx model")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written by the failures


def test_to_onnx_is_deterministic() -> None:
    torch.manual_seed(0)
    small = ash.apply_policy(MLP(), EVERY, example_input=torch.randn(1, 64))
    a, _ = to_onnx(small, torch.randn(1, 64))
    b, _ = to_onnx(small, torch.randn(1, 64))
    assert a.SerializeToString() == b.SerializeToString()


def test_measure_on_onnx_runtime_runs_accuracy_and_latency_through_the_session() -> None:
    from autoshrink.zoo import digits_task

    torch.manual_seed(0)
    task = digits_task(device="cpu")
    model = MLP()
    small = ash.apply_policy(model, ash.Policy(layers={"fc1": L(bits=8), "fc2": L(sparsity=0.5, bits=4)}))
    fast = ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0.0)
    m = ash.measure(small, task, runtime="onnxruntime", latency=fast)
    assert m.runtime == "onnxruntime" and set(m.latency_by_runtime) == {"onnxruntime"} and m.latency_ms > 0
    f = ash.measure(small, task, runtime="float", latency=fast)
    assert m.size_bytes == f.size_bytes and m.macs == f.macs  # the same compressed model
    assert abs(m.accuracy - f.accuracy) <= 0.02  # int8 activations: within the export's tolerance
    again = ash.measure(small, task, runtime="onnxruntime", latency=fast)
    assert again.accuracy == m.accuracy  # deterministic


def test_a_search_on_onnx_runtime_measures_every_trial_there_and_recipes_replay(tmp_path) -> None:
    from autoshrink.zoo import digits_task

    torch.manual_seed(0)
    task = digits_task(device="cpu")
    space_file = tmp_path / "s.yaml"
    space_file.write_text("defaults:\n  sparsity: [0.0, 0.5]\n  bits: [32, 8, 4]\nfinetune: {steps: 3}\n")
    fast = ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0.0)
    model = MLP()
    r = ash.search(
        model,
        task,
        ash.load_space(space_file),
        objectives=("accuracy", "size", "latency"),
        n_trials=5,
        storage=f"sqlite:///{tmp_path}/o.db",
        study_name="o",
        runtime="onnxruntime",
        latency=fast,
        executor="local",
    )
    assert r.study.user_attrs["runtime"] == {"runtime": "onnxruntime", "decided_by": "the user"}
    done = [t for t in r.study.trials if t.state.name == "COMPLETE"]
    assert done and all(t.user_attrs["measurement"]["runtime"] == "onnxruntime" for t in done)
    recipe = r.recipe(done[-1].number)
    assert recipe.metrics.runtime == "onnxruntime" and recipe.measure_runtime == "onnxruntime"
    small = ash.apply_recipe(model, recipe, task=task)
    m = ash.measure(small, task, latency=fast)  # the recipe's runtime, remembered by apply_recipe
    assert m.runtime == "onnxruntime" and m.accuracy == recipe.metrics.accuracy


def test_codebook_weights_export_as_the_float_values_they_are(tmp_path) -> None:
    torch.manual_seed(2)
    x = torch.randn(5, 1, 8, 8)
    small = ash.apply_policy(
        MLP(),
        ash.Policy(layers={"fc1": L(sparsity=0.6, bits=4, codebook="kmeans"), "fc2": L(bits=3)}),
        example_input=x[:1],
    )
    out = export_onnx(small, tmp_path / "k.onnx", example_input=x[:1], activations="weights")
    assert out.qdq_weights == ("fc2",)  # a codebook is not a linear grid: no QDQ for fc1
    inits = _inits(onnx.load(str(tmp_path / "k.onnx")))
    fc1 = next(v for v in inits.values() if v.shape == (48, 64))
    assert np.unique(fc1).size <= 16  # its 15 shared values and zero
    from autoshrink.export.ort_session import ort_session, run_session

    got = run_session(ort_session(str(tmp_path / "k.onnx")), [x])[0]
    _close(got, _torch(small, x), 1e-5)


def test_gptq_weights_export_their_fixed_scales_and_group_scales_export_as_floats(tmp_path) -> None:
    from autoshrink.techniques import apply_policy_with_report
    from autoshrink.weights import weight_quantizer

    torch.manual_seed(3)
    x = torch.randn(64, 1, 8, 8)
    policy = ash.Policy(layers={"fc1": L(bits=4, rounding="gptq"), "fc2": L(bits=4, group_size=16), "fc3": L(bits=8)})
    small, _ = apply_policy_with_report(MLP(), policy, example_input=x[:1], calibration=lambda: [x])
    out = export_onnx(small, tmp_path / "g.onnx", example_input=x[:1], activations="weights")
    assert out.qdq_weights == ("fc1", "fc3")  # fc2's 3 scales a row are no per-channel DequantizeLinear
    inits = _inits(onnx.load(out.path))
    fq = weight_quantizer(small.fc1)
    assert np.array_equal(inits["fc1.weight_scale"], fq.scales.reshape(-1).numpy())  # the stored scales
    assert np.array_equal(
        inits["fc1.weight_quantized"] * inits["fc1.weight_scale"][:, None], small.fc1.weight.detach().numpy()
    )
    _close(run_session(ort_session(out.path, optimize="basic"), [x])[0], _torch(small, x), 1e-5)
    from autoshrink.measure.runtime import int8_runtime

    q = int8_runtime(small, torch.device("cpu"))
    if q is not None:  # the int8 kernels take fc1's own scales; fc2 (group scales) stays float
        assert type(q.fc2) is nn.Linear and type(q.fc1) is not nn.Linear
        assert torch.equal(q.fc1.weight().dequantize(), small.fc1.weight.detach())
