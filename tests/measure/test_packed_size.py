"""packed_size: the exact length of the packed file, encoding only tensors it has not seen."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink import weights
from autoshrink.measure.packing import codec, pack, packed_size, save_packed
from autoshrink.measure.packing.sizing import SizeCache
from autoshrink.zoo.models import DigitsMLP, DigitsResNet


class TinyEncoder(nn.Module):
    """Embedding + one transformer encoder block + a head: attention, LayerNorm and tied-free Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.block = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.head = nn.Linear(32, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(ids)).mean(1))


def _choices(rng: random.Random, conv: bool) -> ash.LayerPolicy:
    kind = rng.choice(["none", "sparse", "structured", "bits", "codebook", "rank", "mixed"])
    if kind == "none":
        return ash.LayerPolicy()
    if kind == "sparse":
        return ash.LayerPolicy(sparsity=rng.choice([0.3, 0.7, 0.95]))
    if kind == "structured":
        return ash.LayerPolicy(sparsity=rng.choice([0.25, 0.5]), structured=True)
    if kind == "bits":
        return ash.LayerPolicy(bits=rng.choice([2, 3, 4, 8, 16]))
    if kind == "codebook":
        return ash.LayerPolicy(bits=rng.choice([2, 3, 4]), codebook="kmeans")
    if kind == "rank" and not conv:
        return ash.LayerPolicy(rank=0.5)
    return ash.LayerPolicy(sparsity=rng.choice([0.5, 0.8]), bits=rng.choice([2, 4, 6]))


CASES = {
    "mlp": (DigitsMLP, torch.rand(1, 1, 8, 8), (nn.Linear,)),
    "resnet": (DigitsResNet, torch.rand(1, 1, 8, 8), (nn.Linear, nn.Conv2d)),
    "encoder": (TinyEncoder, torch.randint(0, 50, (1, 6)), (nn.Linear,)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_size_equals_the_file_on_random_policies(case: str, tmp_path) -> None:
    make, x, kinds = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    layers = [n for n, m in model.named_modules() if isinstance(m, kinds) and n]
    rng = random.Random(case)
    cache = SizeCache()
    for i in range(12):
        policy = ash.Policy(layers={n: _choices(rng, isinstance(model.get_submodule(n), nn.Conv2d)) for n in layers})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a choice a layer cannot take is skipped with a warning
            small = ash.apply_policy(model, policy, example_input=x)
        size, report = packed_size(small, cache=cache)
        blob, full = pack(small)
        assert size == len(blob) == save_packed(small, tmp_path / "m.ashz") == (tmp_path / "m.ashz").stat().st_size
        assert report == full
        if i % 4 == 0:
            assert packed_size(small, cache=None)[0] == size
    assert cache.hits > 0  # untouched tensors (biases, norms, the layers a policy left alone) were reused


def test_one_changed_layer_encodes_one_tensor() -> None:
    torch.manual_seed(0)
    model = DigitsMLP().eval()
    cache = SizeCache()
    base, _ = packed_size(model, cache=cache)
    stored = len(cache)
    assert cache.misses == stored and cache.hits == 0
    small = ash.apply_policy(model, ash.Policy(layers={"fc1": ash.LayerPolicy(bits=4)}))
    size, _ = packed_size(small, cache=cache)
    assert cache.misses == stored + 1  # the quantized weight; every other tensor came from the cache
    assert cache.hits == stored - 1
    assert size == len(pack(small)[0]) and size < base


def test_the_cache_is_bounded_and_keyed_by_content() -> None:
    cache = SizeCache(entries=3)
    torch.manual_seed(0)
    tensors = [torch.randn(4, 4) for _ in range(5)]
    model = nn.ParameterList([nn.Parameter(t) for t in tensors])
    packed_size(model, cache=cache)
    assert len(cache) == 3 and cache.misses == 5
    renamed = nn.ParameterDict({f"p{i}": nn.Parameter(t.clone()) for i, t in enumerate(tensors[2:])})
    packed_size(renamed, cache=cache)  # the three kept (least recently used dropped), under other names
    assert (cache.hits, cache.misses) == (3, 5)


def test_a_tensor_without_zeros_is_stored_dense_as_every_layout_would_choose() -> None:
    torch.manual_seed(0)
    for qbits in (0, 2, 4, 8, 16):
        # magnitudes in [0.8, 1]: at every width each code is at least 0.8 of the largest, never 0
        w = torch.where(torch.rand(48, 96) < 0.5, -1.0, 1.0) * (0.8 + 0.2 * torch.rand(48, 96))
        if qbits in weights.QUANT_BITS:
            w = weights.quantize_value(w, qbits)
        elif qbits == 16:
            w = w.half().float()
        prefix, rows, nonzero, zero, width, _ = codec._symbols(w, qbits, "w")
        assert nonzero.all()
        every = codec._candidates(rows, nonzero, zero, width, True, shortcut=False)
        size, pref, _ = min(every, key=lambda c: (c[0], c[1]))
        enc = codec.encode_tensor(w, qbits)
        assert (enc.encoding, len(enc.payload)) == ("dense", len(prefix) + size) and pref == 0


def test_payload_bytes_matches_the_encoder() -> None:
    from autoshrink.measure.packing.sizing import payload_bytes

    w = weights.quantize_value(torch.randn(32, 64) * (torch.rand(32, 64) < 0.4), 4)
    cache = SizeCache()
    assert payload_bytes(w, 4, cache=cache) == len(codec.encode_tensor(w, 4).payload)
    assert payload_bytes(w.clone(), 4, cache=cache) == len(codec.encode_tensor(w, 4).payload)
    assert (cache.hits, cache.misses) == (1, 1)
    assert np.isfinite(payload_bytes(w, 4, cache=None))
