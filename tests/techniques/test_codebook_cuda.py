"""k-means codebooks and entropy-coded packing on CUDA (marked gpu: skipped where CUDA is absent)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.measure.packing import load_packed, pack, save_packed
from autoshrink.weights import weight_codebook
from autoshrink.zoo import digits_task

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_codebook_fine_tunes_on_cuda_and_packs_as_on_the_cpu(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    policy = ash.Policy(
        layers={"1": ash.LayerPolicy(sparsity=0.5, bits=3, codebook="kmeans"), "3": ash.LayerPolicy(bits=4)}
    )
    task = digits_task(device="cuda")
    small = ash.finetune(ash.apply_policy(model, policy), task, steps=30, teacher=model, seed=0)
    layer = small.get_submodule("1")
    assert layer.weight.device.type == "cuda"
    assert weight_codebook(layer).centroids.device.type == "cuda"  # trained where the model is
    assert torch.unique(layer.weight).numel() <= 8 and float((layer.weight == 0).float().mean()) >= 0.5
    on_cuda, _ = pack(small)
    save_packed(small, tmp_path / "k.ashz")
    assert (tmp_path / "k.ashz").read_bytes() == on_cuda
    cpu_twin = small.to("cpu")
    assert pack(cpu_twin)[0] == on_cuda  # the artifact does not depend on the device it was packed from
    back = load_packed(tmp_path / "k.ashz")
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(x), cpu_twin(x))
