"""The int8 runtime's input width: 8 bits where this CPU's kernel computes them exactly, the probe that
decides it, and the runtime's outputs against that rounding by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.measure.runtime import int8_available, int8_runtime
from autoshrink.train.activations import per_tensor
from autoshrink.weights import weight_quantizer

pytestmark = pytest.mark.skipif(not int8_available(torch.device("cpu")), reason="no int8 engine on this CPU")


def _saturating(x: torch.Tensor, packed: object, reduce_range: bool) -> torch.Tensor:
    """What a kernel without VNNI computes: uint8 x int8 products summed in pairs into int16 (saturating)."""
    weight, bias = torch.ops.quantized.linear_unpack(packed)
    top = 127 if reduce_range else 255
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / top
    zero = round(-lo / scale)
    q = (torch.round(x / scale) + zero).clamp(0, top).long()
    codes = weight.int_repr().long()
    pairs = (q[:, None, :] * codes[None]).reshape(q.shape[0], codes.shape[0], -1, 2).sum(-1).clamp(-32768, 32767)
    acc = pairs.sum(-1) - zero * codes.sum(1)
    return acc.double() * scale * weight.q_per_channel_scales()[None]


def test_the_probe_tells_a_saturating_kernel_from_an_exact_one() -> None:
    from autoshrink.measure.int8_linear import exact_at_full_range

    assert not exact_at_full_range(_saturating)

    def broken(x: torch.Tensor, packed: object, reduce_range: bool) -> torch.Tensor:
        raise RuntimeError("no such kernel")

    assert not exact_at_full_range(broken)

    def exact(x: torch.Tensor, packed: object, reduce_range: bool) -> torch.Tensor:
        weight, _ = torch.ops.quantized.linear_unpack(packed)
        return x @ weight.dequantize().t()

    assert exact_at_full_range(exact)


def _small() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    return ash.apply_policy(model, ash.Policy(layers={"0": ash.LayerPolicy(bits=8), "2": ash.LayerPolicy(bits=6)}))


@pytest.mark.parametrize("full", [False, True])
def test_the_runtime_rounds_inputs_to_7_or_8_bits_with_our_codes(full: bool) -> None:
    import torch.ao.nn.quantized.dynamic as nnqd

    from autoshrink.measure.int8_linear import FullRangeLinear
    from autoshrink.measure.runtime import int8_full_available

    if full and not int8_full_available(torch.device("cpu")):
        pytest.skip("this CPU's int8 kernel is not exact with 8-bit inputs")
    levels = 256 if full else 128
    small = _small()
    q = int8_runtime(small, torch.device("cpu"), full=full)
    assert all(isinstance(q[i], nnqd.Linear) and (type(q[i]) is FullRangeLinear) == full for i in (0, 2))
    x = torch.cat([torch.randn(6, 16) * 2 + 0.5, torch.full((1, 16), 7.0)])
    with torch.no_grad():
        hidden = torch.relu(nn.functional.linear(per_tensor(x, levels), small[0].weight, small[0].bias))
        want = nn.functional.linear(per_tensor(hidden, levels), small[2].weight, small[2].bias)
        other = nn.functional.linear(per_tensor(hidden, 384 - levels), small[2].weight, small[2].bias)
        got = q(x)
    assert torch.allclose(got, want, rtol=0, atol=1e-4) and not torch.allclose(got, other, rtol=0, atol=1e-3)
    codes, _ = weight_quantizer(small[2]).codes(small[2].weight.detach())
    assert torch.equal(q[2].weight().int_repr(), codes.to(torch.int8))  # our exact codes


def test_int8_full_is_recorded_by_name_refused_where_the_kernel_is_inexact_and_auto_follows_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    from autoshrink.errors import ConfigError

    measure_module = importlib.import_module("autoshrink.measure.measure")  # the package re-exports a function
    from autoshrink.zoo import digits_task

    task = digits_task(device="cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    small = ash.apply_policy(model, ash.Policy(layers={"1": ash.LayerPolicy(bits=8), "3": ash.LayerPolicy(bits=8)}))
    fast = ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0)
    for available in (True, False):
        for module in (measure_module, importlib.import_module("autoshrink.measure.runtime")):
            monkeypatch.setattr(module, "int8_full_available", lambda device, a=available: a)
        auto = ash.measure(small, task, runtime="auto", latency=fast)
        assert set(auto.latency_by_runtime) == {"float", "int8-full" if available else "int8-dynamic"}
    with pytest.raises(ConfigError, match=r"^measure: runtime='int8-full' needs int8 kernels that compute 8-bit"):
        ash.measure(small, task, runtime="int8-full", latency=fast)
    monkeypatch.undo()
    from autoshrink.measure.runtime import int8_full_available

    if int8_full_available(torch.device("cpu")):
        m = ash.measure(small, task, runtime="int8-full", latency=fast, test=False)
        assert m.runtime == "int8-full" and set(m.latency_by_runtime) == {"int8-full"}
        q = int8_runtime(small, torch.device("cpu"), full=True)
        x, y = task.eval_data.tensors
        with torch.no_grad():
            assert m.accuracy == (q(x).argmax(1) == y).sum().item() / len(y)


def test_a_local_search_on_int8_full_is_refused_before_it_starts_where_the_kernel_is_inexact(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    import importlib

    from autoshrink.errors import ConfigError
    from autoshrink.zoo import digits_task

    monkeypatch.setattr(importlib.import_module("autoshrink.measure.runtime"), "int8_full_available", lambda d: False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ConfigError, match=r"^search: runtime='int8-full' needs int8 kernels .* use runtime='int8'"):
        ash.search(
            model,
            digits_task(device="cpu"),
            "quantize_only",
            runtime="int8-full",
            n_trials=1,
            storage=f"sqlite:///{tmp_path}/s.db",
        )
    assert not list(tmp_path.iterdir())  # refused before a study was written
