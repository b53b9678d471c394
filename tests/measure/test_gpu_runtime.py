"""GPU runtimes: the kernel plan and its "simulated" labels, the int8 matmul's exact arithmetic (CPU), clean
refusals without CUDA; the runtimes themselves on a GPU (marked gpu: skipped here, run on the device)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import ConfigError
from autoshrink.measure.gpu_runtime import Int8Linear, int8_linear, kernel_plan, sparse_shape_fits
from autoshrink.weights import weight_quantizer

L = ash.LayerPolicy


def mixed_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128),  # 0: 2:4, float
        nn.ReLU(),
        nn.Linear(128, 64),  # 2: 8-bit per channel
        nn.ReLU(),
        nn.Linear(64, 64),  # 4: 4-bit groups of 16
        nn.ReLU(),
        nn.Linear(64, 32),  # 6: unstructured 50 %
        nn.ReLU(),
        nn.Linear(32, 16),  # 8: 2:4 at 8 bits, 16 x 32
    )


POLICY = ash.Policy(
    layers={
        "0": L(sparsity="2:4"),
        "2": L(bits=8),
        "4": L(bits=4, group_size=16),
        "6": L(sparsity=0.5),
        "8": L(sparsity="2:4", bits=8),
    }
)


def test_kernel_plan_says_what_runs_fast_and_what_is_simulated() -> None:
    small = ash.apply_policy(mixed_model(), POLICY)
    assert sparse_shape_fits((128, 64)) is None
    assert sparse_shape_fits((12, 32)).endswith("this one is 12 x 32: it runs dense")
    tail = sparse_shape_fits((16, 32))  # None with cuSPARSELt's multiples (16 x 16), a reason with CUTLASS's
    assert kernel_plan(small, "cuda-graph") == {
        "0": "2:4 sparse float16",
        "2": "float16; simulated: 8-bit codes run as float16 weights (cuda-int8 runs <= 8-bit Linear layers as int8)",
        "4": "float16; simulated: 4-bit codes run as float16 weights (cuda-int8 runs <= 8-bit Linear layers as int8)",
        "6": "float16; simulated: unstructured zeros run dense",
        "8": ("float16" if tail else "2:4 sparse float16")
        + "; simulated: 8-bit codes run as float16 weights (cuda-int8 runs <= 8-bit Linear layers as int8)"
        + (f"; {tail}" if tail else ""),
    }
    assert kernel_plan(small, "cuda-int8") == {
        "0": "2:4 sparse float16",
        "2": "int8",
        "4": "float16; simulated: group-wise scales (group_size 16) run as float16 weights",
        "6": "float16; simulated: unstructured zeros run dense",
        "8": "int8; simulated: the 2:4 pattern is not used by the int8 matmul",
    }
    with pytest.raises(ValueError, match="kernel_plan: runtime must be one of"):
        kernel_plan(small, "float")


@pytest.mark.parametrize(("inputs", "outputs", "padded"), [(128, 64, (64, 128)), (30, 10, (16, 32))])
def test_int8_linear_is_the_exact_integer_arithmetic(inputs, outputs, padded) -> None:
    """Our codes and scales, the input quantized per row to 127 levels, int32 accumulation; sizes that
    are not multiples of 8 padded with zero codes (the sums unchanged)."""
    torch.manual_seed(0)
    layer = ash.apply_policy(nn.Sequential(nn.Linear(inputs, outputs)), ash.Policy({"0": L(bits=8)}))[0]
    q = int8_linear(layer)
    codes, scales = weight_quantizer(layer).codes(layer.weight.detach())
    torch.manual_seed(1)
    x = torch.randn(3, 5, inputs)
    rows = x.reshape(-1, inputs)
    sx = rows.abs().amax(1, keepdim=True) / 127
    xq = torch.round(rows / sx).clamp(-127, 127)
    expected = (xq @ codes.float().t()) * sx * scales.reshape(1, -1) + layer.bias.detach()
    got = q(x)
    assert got.shape == (3, 5, outputs) and got.dtype == torch.float32
    assert torch.allclose(got.reshape(-1, outputs), expected, rtol=1e-6, atol=1e-6)
    reference = layer(x)  # fake-quantized float: the int8 result differs by the activation rounding only
    assert (got - reference).abs().max() < 0.05 * reference.abs().max()
    assert isinstance(q, Int8Linear) and q.codes.dtype == torch.int8 and tuple(q.codes.shape) == padded
    assert torch.equal(q.codes[:outputs, :inputs], codes.to(torch.int8)) and int(q.codes.abs().sum()) == int(
        codes.abs().sum()
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
@pytest.mark.parametrize("runtime", ["cuda-graph", "cuda-int8"])
def test_gpu_runtimes_refuse_cleanly_without_cuda(runtime, digits_mlp, digits, tmp_path) -> None:
    small = ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(bits=8)}))
    expected = (
        f"measure: runtime='{runtime}' runs on an NVIDIA GPU, but torch sees no CUDA GPU on this machine "
        "(torch.cuda.is_available() is False). Fix: on a machine with a CUDA GPU give the task device='cuda'; "
        "here use runtime 'float', 'int8' or 'onnxruntime'."
    )
    with pytest.raises(ConfigError) as err:
        ash.measure(small, digits, runtime=runtime)
    assert str(err.value) == expected
    with pytest.raises(ConfigError, match=rf"^search: runtime='{runtime}' runs on an NVIDIA GPU"):
        ash.search(
            digits_mlp,
            digits,
            "default",
            n_trials=1,
            runtime=runtime,
            storage=f"sqlite:///{tmp_path}/g.db",
            study_name="g",
            progress=False,
        )
    assert not (tmp_path / "g.db").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
def test_cuda_graph_runs_2_4_kernels_and_matches_eager_float16() -> None:
    from torch.sparse import SparseSemiStructuredTensor

    from autoshrink.measure.gpu_runtime import gpu_runtime

    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    small = ash.apply_policy(model, ash.Policy(layers={"0": L(sparsity="2:4"), "2": L(sparsity="2:4")}))
    device = torch.device("cuda")
    graphed, plan = gpu_runtime(small, "cuda-graph", device)
    assert plan == {"0": "2:4 sparse float16", "2": "2:4 sparse float16"}
    assert isinstance(graphed.module[0].weight, SparseSemiStructuredTensor)
    x = torch.randn(256, 64, device=device)
    dense = ash.apply_policy(model, ash.Policy(layers={"0": L(sparsity="2:4"), "2": L(sparsity="2:4")}))
    from autoshrink.measure.runtime import materialize

    reference = materialize(dense).to(device=device, dtype=torch.float16)(x.half()).float()
    out = graphed(x)
    assert torch.allclose(out, reference, atol=2e-2, rtol=2e-2)
    assert torch.equal(graphed(x), out)  # the replay is deterministic


@pytest.mark.gpu
def test_cuda_int8_measures_accuracy_through_the_int8_matmul(digits_mlp) -> None:
    task = ash.zoo.digits_task(device="cuda")
    small = ash.apply_policy(digits_mlp, ash.Policy(layers={n: L(bits=8) for n in ("fc1", "fc2", "fc3")}))
    base = ash.measure(digits_mlp, task, runtime="float")
    m = ash.measure(small, task, runtime="cuda-int8")
    assert m.runtime == "cuda-int8"
    assert abs(m.accuracy - base.accuracy) <= 0.01
    assert m.simulated == ()  # fc3 (10 x 128) runs int8 too, its codes padded to 16 rows
