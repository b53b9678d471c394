"""The deploy runtime's activation rounding simulated in the fine-tune (FinetuneConfig.activations):
each simulation against the runtime it names, the hooks' lifetime, "auto" and the config."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import ConfigError
from autoshrink.evaluate import compress
from autoshrink.measure.gpu_runtime import Int8Linear
from autoshrink.measure.runtime import int8_available, int8_runtime, integer_linears
from autoshrink.techniques import apply_policy_with_report
from autoshrink.train import FinetuneConfig
from autoshrink.train.activations import ActivationRounding, per_row, per_tensor, resolve
from autoshrink.weights import weight_quantizer
from autoshrink.zoo import digits_task

finetune_module = importlib.import_module("autoshrink.train.finetune")  # the package re-exports a function


def _inputs() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.cat([torch.randn(3, 5, 16) * 2 + 0.5, torch.full((1, 5, 16), 7.0)])  # one outlier batch row


def _int8_linear() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 8))
    small, _ = apply_policy_with_report(model, ash.Policy(layers={"0": ash.LayerPolicy(bits=8)}))
    return small


def _dequantized(small: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    fq = weight_quantizer(small[0])
    codes, scales = fq.codes(small[0].weight.detach())
    return codes, scales.reshape(-1)


@pytest.mark.skipif(not int8_available(torch.device("cpu")), reason="no int8 engine on this CPU")
def test_int8_mode_is_what_torchs_dynamic_int8_linear_computes() -> None:
    small = _int8_linear()
    x = _inputs()
    with torch.no_grad():
        runtime = int8_runtime(small, torch.device("cpu"))(x)
        simulated = small(per_tensor(x, 128))  # the fake-quantized weights on the 7-bit inputs
        eight_bit = small(per_tensor(x, 256))
    assert torch.allclose(simulated, runtime, rtol=0, atol=1e-5)
    assert (eight_bit - runtime).abs().max() > 1e-3  # the kernel's inputs are 7-bit, not 8-bit


def test_int8_full_mode_is_what_the_int8_full_runtime_computes() -> None:
    from autoshrink.measure.runtime import int8_full_available
    from autoshrink.train.activations import ROUNDING

    if not int8_full_available(torch.device("cpu")):
        pytest.skip("this CPU's int8 kernel is not exact with 8-bit inputs")
    small = _int8_linear()
    x = _inputs()
    with torch.no_grad():
        runtime = int8_runtime(small, torch.device("cpu"), full=True)(x)
        simulated = small(ROUNDING["int8-full"](x))
    assert torch.allclose(simulated, runtime, rtol=0, atol=1e-5)


def test_onnxruntime_mode_is_dynamic_quantize_linear() -> None:
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "dql",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5, 16])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = _inputs()
    (y,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(per_tensor(x, 256).numpy(), y, rtol=0, atol=1e-6)


def test_cuda_int8_mode_is_int8linears_per_row_rounding() -> None:
    small = _int8_linear()
    codes, scales = _dequantized(small)
    kernel = Int8Linear(codes, scales, small[0].bias, dtype=torch.float32)
    x = _inputs()
    try:
        with torch.no_grad():
            got = kernel(x)
    except RuntimeError as e:  # torch._int_mm without a CPU kernel for these sizes
        pytest.skip(f"torch._int_mm does not run here: {e}")
    with torch.no_grad():
        want = small(per_row(x))
    assert torch.allclose(want, got, rtol=0, atol=1e-4)


def test_the_rounding_passes_gradients_straight_through() -> None:
    x = _inputs().requires_grad_(True)
    for rounded in (per_tensor(x, 128), per_tensor(x, 256), per_row(x)):
        (grad,) = torch.autograd.grad((rounded * 3).sum(), x)
        assert torch.equal(grad, torch.full_like(x, 3.0))


def test_per_tensor_rounding_of_a_known_tensor() -> None:
    x = torch.tensor([-1.0, 0.0, 0.5, 3.0])  # range [-1, 3]: 4 / 255 a step, zero point 64
    step = 4.0 / 255
    want = (torch.round(x / step) + 64).clamp(0, 255).sub(64) * step
    assert torch.equal(per_tensor(x, 256), want)
    positive = torch.tensor([2.0, 3.0])  # the range reaches down to 0: step 3 / 255, zero point 0
    assert torch.equal(per_tensor(positive, 256), torch.round(positive / (3.0 / 255)) * (3.0 / 255))


def test_auto_follows_the_runtime_and_explicit_modes_stay() -> None:
    assert resolve("auto", "int8") == resolve("auto", "int8-dynamic") == "int8"  # measure's name, the recorded one
    assert resolve("auto", "onnxruntime") == "onnxruntime"
    assert resolve("auto", "int8-full") == "int8-full"
    assert resolve("auto", "cuda-int8") == "cuda-int8"
    for runtime in ("float", "onnxruntime-static", "cuda-graph", None):
        assert resolve("auto", runtime) == "float"
    assert resolve("int8", "float") == "int8" and resolve("float", "int8") == "float"


def test_hooks_sit_on_the_integer_linears_only_during_the_fine_tune(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    policy = ash.Policy(
        layers={"1": ash.LayerPolicy(bits=8), "3": ash.LayerPolicy(bits=4, group_size=8), "5": ash.LayerPolicy(bits=6)}
    )
    small, _ = apply_policy_with_report(model, policy)
    assert integer_linears(small) == ["1", "5"]  # group-wise scales (3) run float
    seen: list[int] = []
    attach = ActivationRounding.attach
    monkeypatch.setattr(ActivationRounding, "attach", lambda self, m: seen.append(attach(self, m)) or seen[-1])
    cfg = FinetuneConfig(steps=3, schedule="oneshot", activations="int8")
    finetune_module.run_finetune(small, digits_task(device="cpu"), cfg)
    assert seen == [2]
    assert all(not m._forward_pre_hooks for m in small.modules())  # none left behind


def test_a_structured_round_hooks_the_layers_that_replaced_the_old(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    policy = ash.Policy(
        layers={"1": ash.LayerPolicy(bits=8, sparsity=0.5, structured=True), "3": ash.LayerPolicy(bits=8)}
    )
    hooked: list[list[int]] = []
    attach = ActivationRounding.attach

    def spy(self: ActivationRounding, m: nn.Module) -> int:
        n = attach(self, m)
        layers = [m.get_submodule(name) for name in integer_linears(m)]
        hooked.append([id(layer) for layer in layers if layer._forward_pre_hooks])
        return n

    monkeypatch.setattr(ActivationRounding, "attach", spy)
    cfg = FinetuneConfig(steps=6, ramp=0.5, ramp_updates=2, activations="int8")
    small, _ = compress(model, policy, task=digits_task(device="cpu"), finetune_config=cfg)
    assert len(hooked) >= 2 and all(len(ids) == 2 for ids in hooked)  # both Linears, every time
    assert small[1].out_features == 16 and all(not m._forward_pre_hooks for m in small.modules())


def test_auto_fine_tunes_as_the_measured_runtime_and_differs_from_float() -> None:
    task = digits_task(device="cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    policy = ash.Policy(layers={"1": ash.LayerPolicy(bits=8), "3": ash.LayerPolicy(bits=8)})

    def weights(activations: str, runtime: str | None) -> torch.Tensor:
        cfg = FinetuneConfig(steps=5, schedule="oneshot", activations=activations)
        small, _ = compress(model, policy, task=task, finetune_config=cfg, runtime=runtime)
        return small[1].parametrizations.weight.original.detach().clone()

    floats = weights("float", "int8")
    assert torch.equal(weights("auto", "int8"), weights("int8", None))
    assert torch.equal(weights("auto", "float"), floats) and torch.equal(weights("auto", None), floats)
    assert not torch.equal(weights("int8", None), floats)
    assert not torch.equal(weights("onnxruntime", None), weights("int8", None))


def test_the_setting_is_checked_and_written_only_when_set() -> None:
    assert "activations" not in FinetuneConfig().to_dict()  # files and studies from before read the same
    on = FinetuneConfig(activations="auto")
    assert on.to_dict()["activations"] == "auto" and FinetuneConfig.from_dict(on.to_dict()) == on
    with pytest.raises(ConfigError, match=r"^finetune\.activations: got 'int4'; use one of float, auto, int8, "):
        FinetuneConfig(activations="int4")


@pytest.mark.skipif(not int8_available(torch.device("cpu")), reason="no int8 engine on this CPU")
@pytest.mark.parametrize("runtime", ["int8", "int8-full"])
def test_a_search_and_its_recipe_simulate_the_study_runtime(tmp_path, runtime: str) -> None:
    from autoshrink.measure.runtime import int8_full_available
    from tests.search.conftest import FAST, Tiny

    if runtime == "int8-full" and not int8_full_available(torch.device("cpu")):
        pytest.skip("this CPU's int8 kernel is not exact with 8-bit inputs")

    task = digits_task(device="cpu")
    torch.manual_seed(0)
    model = Tiny()
    ash.finetune(model, task, steps=100, lr=3e-3)
    space = tmp_path / "s.yaml"
    space.write_text("defaults:\n  bits: [8]\ndistill: [false]\nfinetune: {steps: 5, activations: auto}\n")
    result = ash.search(
        model,
        task,
        ash.load_space(space),
        runtime=runtime,
        n_trials=1,
        storage=f"sqlite:///{tmp_path}/a.db",
        study_name="a",
        latency=FAST,
        refine_top=0,
    )
    (trial,) = [t.number for t in result.study.trials if t.state.name == "COMPLETE" and t.number >= 0]
    recipe = result.recipe(trial)
    assert recipe.finetune.activations == "auto" and recipe.measure_runtime == runtime
    recorded = result.study.trials[trial].user_attrs["measurement"]["runtime"]
    assert recorded == {"int8": "int8-dynamic"}.get(runtime, runtime)
    replayed = ash.apply_recipe(model, recipe, task=task)
    explicit, _ = compress(
        model, recipe.policy, task=task, finetune_config=dataclasses.replace(recipe.finetune, activations=runtime)
    )
    plain, _ = compress(
        model, recipe.policy, task=task, finetune_config=dataclasses.replace(recipe.finetune, activations="float")
    )
    state = lambda m: m.fc1.parametrizations.weight.original  # noqa: E731
    assert torch.equal(state(replayed), state(explicit)) and not torch.equal(state(replayed), state(plain))
    assert ash.measure(replayed, task).accuracy == result.study.trials[trial].user_attrs["measurement"]["accuracy"]
    saved = tmp_path / "r.yaml"
    recipe.save(saved)
    assert ash.Recipe.load(saved).measure_runtime == runtime
