from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.measure.macs import count_macs
from autoshrink.measure.runtime import int8_full_available, int8_runtime, materialize

L = ash.LayerPolicy


def test_measurement_fields_and_exact_macs(digits_mlp, digits_cnn, digits, fast_latency) -> None:
    m = ash.measure(digits_mlp, digits, latency=fast_latency)
    assert m.macs == 64 * 256 + 256 * 128 + 128 * 10 == 50432
    assert m.params == 50826 and m.nonzero_params == 50826
    assert m.device == "cpu" and m.threads == torch.get_num_threads() and m.batch_size == 1
    assert m.latency_ms > 0 and m.runtime == "float" and set(m.latency_by_runtime) == {"float"}
    assert 0.95 <= m.accuracy <= 1.0
    c = ash.measure(digits_cnn, digits, latency=fast_latency)
    assert c.macs == 64 * 32 * 9 + 64 * 64 * 32 * 9 + 1024 * 128 + 128 * 10 == 1330432


def test_size_bytes_equals_the_packed_file(digits_cnn, digits, tmp_path, fast_latency) -> None:
    policy = ash.Policy(layers={"conv2": L(sparsity=0.8, bits=4), "fc1": L(sparsity=0.95, bits=4), "fc2": L(bits=8)})
    small = ash.apply_policy(digits_cnn, policy)
    m = ash.measure(small, digits, latency=fast_latency)
    path = tmp_path / "small.ashz"
    assert ash.save_packed(small, path) == m.size_bytes == os.path.getsize(path)
    base = ash.measure(digits_cnn, digits, latency=fast_latency)
    assert base.size_bytes > 4 * 151498  # fp32 weights plus BN buffers plus header
    assert base.size_bytes / m.size_bytes > 10
    fc1 = next(layer for layer in m.layers if layer.name == "fc1.weight")
    assert (fc1.params, fc1.bits) == (1024 * 128, 4) and fc1.nonzero <= round(0.05 * 131072)
    loaded = ash.load_packed(path)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(loaded.eval()(x), small.eval()(x))


def test_macs_count_attention_matmuls() -> None:
    class Attn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x @ x.transpose(-1, -2)) @ x

    assert count_macs(Attn(), torch.randn(2, 5, 8)) == 2 * (5 * 5 * 8) * 2


def test_structured_and_lowrank_cut_macs(digits_cnn, digits, fast_latency) -> None:
    small = ash.apply_policy(
        digits_cnn,
        ash.Policy(layers={"conv2": L(sparsity=0.5, structured=True), "fc1": L(rank=0.25)}),
        example_input=digits.example_input,
    )
    m = ash.measure(small, digits, latency=fast_latency)
    # conv1 unchanged; conv2 32 -> 32 channels; fc1 512 -> 32 -> 128; fc2 unchanged
    assert m.macs == 64 * 32 * 9 + 64 * 32 * 32 * 9 + 512 * 32 + 32 * 128 + 128 * 10


def test_int8_runtime_uses_real_int8_kernels_with_our_codes(digits_mlp, digits) -> None:
    small = ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(bits=8), "fc2": L(bits=4)}))
    q = int8_runtime(small, torch.device("cpu"))
    import torch.ao.nn.quantized.dynamic as nnqd

    int8_layers = [n for n, m in q.named_modules() if isinstance(m, nnqd.Linear)]
    assert int8_layers == ["fc1", "fc2"]  # the <= 8-bit Linears, and only those
    assert torch.equal(q.fc2.weight().int_repr(), ash.weights.quantize_codes(small.fc2.weight, 4)[0])
    assert type(q.fc3) is nn.Linear
    x = digits.eval_data.tensors[0][:64]
    ref = materialize(small)(x)
    assert (q(x) - ref).abs().max().item() < 0.05 * ref.abs().max().item()
    fast = ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0)
    m = ash.measure(small, digits, runtime="int8", latency=fast)
    assert m.runtime == "int8-dynamic" and m.accuracy >= 0.95 and set(m.latency_by_runtime) == {"int8-dynamic"}
    auto = ash.measure(small, digits, runtime="auto", latency=fast)
    int8 = "int8-full" if int8_full_available(torch.device("cpu")) else "int8-dynamic"  # 8-bit inputs where exact
    assert set(auto.latency_by_runtime) == {"float", int8}
    assert auto.latency_ms == min(auto.latency_by_runtime.values())
    plain = ash.measure(small, digits, latency=fast)  # the default is the float runtime, never a timing race
    assert plain.runtime == "float" and set(plain.latency_by_runtime) == {"float"}


def test_accuracy_does_not_depend_on_timing(digits_mlp, digits, fast_latency) -> None:
    """Measuring one model twice gives the same accuracy, on either fixed runtime (the int8 runtime
    quantizes activations per batch, so its accuracy differs from float's, deterministically)."""
    small = ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(bits=8), "fc2": L(sparsity=0.5, bits=6)}))
    for runtime in ("float", "int8", None):
        a = ash.measure(small, digits, runtime=runtime, latency=fast_latency)
        b = ash.measure(small, digits, runtime=runtime, latency=fast_latency)
        assert a.accuracy == b.accuracy and a.runtime == b.runtime


def test_int8_runtime_of_a_model_with_nothing_int8_is_float(digits_mlp, digits, fast_latency) -> None:
    m = ash.measure(digits_mlp, digits, runtime="int8", latency=fast_latency)
    assert m.runtime == "float" and set(m.latency_by_runtime) == {"float"}
    with pytest.raises(ash.ConfigError, match="runtime='fast'"):
        ash.measure(digits_mlp, digits, runtime="fast")


def test_apply_recipe_model_measures_on_the_recipe_runtime(digits_mlp, digits, fast_latency) -> None:
    from autoshrink.measure.runtime import deploy_runtime, set_deploy_runtime

    small = ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(bits=8)}))
    assert deploy_runtime(small) is None
    set_deploy_runtime(small, "int8")  # what apply_recipe does with an int8 recipe
    assert ash.measure(small, digits, latency=fast_latency).runtime == "int8-dynamic"
    assert deploy_runtime(ash.apply_policy(small, ash.Policy())) is None  # a copy does not inherit it


def test_measurement_dict_round_trip(digits_mlp, digits, fast_latency) -> None:
    m = ash.measure(ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(bits=4)})), digits, latency=fast_latency)
    assert ash.Measurement.from_dict(m.to_dict()) == m
