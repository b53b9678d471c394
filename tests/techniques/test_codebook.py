"""k-means codebooks: clustering, trained centroids, fine-tuning keeps them, packing and recipes replay them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import PolicyError
from autoshrink.measure.packing import codec, load_packed, pack, save_packed
from autoshrink.weights import REASSIGN_EVERY, Codebook, add_codebook, kmeans_1d, weight_bits, weight_codebook


def test_kmeans_starts_linear_and_converges_on_a_hand_example() -> None:
    values = torch.tensor([-1.0, -0.9, -1.1, 0.5, 0.6, 2.0, 2.2])
    c = kmeans_1d(values, 3)
    # linear init -1.1, 0.55, 2.2; clusters {-1.1,-1,-0.9}, {0.5,0.6}, {2,2.2}
    assert torch.allclose(c, torch.tensor([-1.0, 0.55, 2.1]))
    assert torch.equal(kmeans_1d(torch.tensor([]), 3), torch.zeros(3))


def test_centroid_gradient_is_the_sum_over_its_cluster() -> None:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.9, -1.1, 0.0], [1.2, -0.8, 0.95]]))
    book = add_codebook(layer, 2, torch.tensor([-1.0, 0.0625, 1.0]))
    w = layer.weight
    assert torch.equal(w, torch.tensor([[1.0, -1.0, 0.0], [1.0, -1.0, 1.0]]))  # zero stays zero
    upstream = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (w * upstream).sum().backward()
    # -1: entries (0,1) and (1,1) -> 2 + 5; 1: (0,0), (1,0), (1,2) -> 1 + 4 + 6; the unused one: 0
    assert torch.equal(book.centroids.grad, torch.tensor([7.0, 0.0, 11.0]))
    original = layer.parametrizations.weight.original
    assert torch.equal(original.grad, torch.tensor([[1.0, 2.0, 0.0], [4.0, 5.0, 6.0]]))  # straight through, not at 0


def test_training_reassigns_every_few_steps_and_eval_always() -> None:
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.9, -1.1]]))
    add_codebook(layer, 2, torch.tensor([-1.0, 0.0625, 1.0]))
    original = layer.parametrizations.weight.original
    layer.train()
    assert torch.equal(layer.weight, torch.tensor([[1.0, -1.0]]))  # assigned on the first call
    with torch.no_grad():
        original.copy_(torch.tensor([[0.1, -1.1]]))  # now nearest to 0.0625
    seen = [float(layer.weight[0, 0].detach()) for _ in range(REASSIGN_EVERY)]
    assert seen == [1.0] * (REASSIGN_EVERY - 1) + [0.0625]  # the cached assignment, then refreshed
    with torch.no_grad():
        original.copy_(torch.tensor([[0.0, 0.9]]))  # a new zero is read at once; the other waits
    assert torch.equal(layer.weight, torch.tensor([[0.0, -1.0]]))
    layer.eval()
    assert torch.equal(layer.weight, torch.tensor([[0.0, 1.0]]))  # eval: nearest every time


def test_at_most_2_to_the_bits_values_after_fine_tuning() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    policy = ash.Policy(
        layers={
            "1": ash.LayerPolicy(sparsity=0.5, bits=3, codebook="kmeans"),
            "3": ash.LayerPolicy(bits=2, codebook="kmeans"),
        }
    )
    task = ash.zoo.digits_task(device="cpu")
    small = ash.finetune(ash.apply_policy(model, policy), task, steps=30, teacher=model, seed=0)
    for i, bits in (("1", 3), ("3", 2)):
        layer = small.get_submodule(i)
        assert weight_codebook(layer).bits == bits and weight_bits(layer) == 32  # not a linear grid
        assert torch.unique(layer.weight).numel() <= 2**bits
        assert torch.equal(layer.weight.half().float(), layer.weight)  # float16 values, as stored
    assert float((small[1].weight == 0).float().mean()) >= 0.5  # the mask stays in force


def test_packed_codebook_replays_bitwise_and_costs_its_table_plus_codes(tmp_path) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    small = ash.apply_policy(model, ash.Policy(layers={"0": ash.LayerPolicy(sparsity=0.7, bits=4, codebook="kmeans")}))
    data, report = pack(small, entropy=False)
    entry = {t.name: t for t in report}["0.weight"]
    enc = codec.encode_tensor(small[0].weight, 4, codebook=True, use_entropy=False)
    streams = codec.stream_lengths((32, 64), torch.float32, 4, enc.encoding, enc.k, enc.count, codebook=True)
    assert entry.bits == 4 and entry.nbytes == len(enc.payload) == 2 * 15 + sum(streams)  # float16 table + codes
    save_packed(small, tmp_path / "k.ashz")
    back = load_packed(tmp_path / "k.ashz")
    assert isinstance(weight_codebook(back[0]), Codebook)
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(back(x), small(x))
    save_packed(back, tmp_path / "again.ashz")
    assert (tmp_path / "again.ashz").read_bytes() == (tmp_path / "k.ashz").read_bytes()


def test_a_weight_with_too_many_values_is_not_a_codebook() -> None:
    with pytest.raises(ash.PackError, match="17 distinct nonzero values; a 4-bit codebook holds 15"):
        codec.encode_tensor(torch.arange(1, 18, dtype=torch.float32).reshape(1, 17), 4, codebook=True)


def test_policy_validates_the_codebook() -> None:
    with pytest.raises(PolicyError, match='codebook: "kmeans" codes 2..8-bit weights, but bits is 32'):
        ash.LayerPolicy(codebook="kmeans")
    with pytest.raises(PolicyError, match="codebook: got 'lloyd'"):
        ash.LayerPolicy(bits=4, codebook="lloyd")
    lp = ash.LayerPolicy(bits=4, codebook="kmeans")
    assert lp.to_dict()["codebook"] == "kmeans" and "codebook" not in ash.LayerPolicy(bits=4).to_dict()
    assert ash.LayerPolicy.from_dict(lp.to_dict()) == lp != ash.LayerPolicy(bits=4)


def test_space_searches_the_codebook_and_drops_it_where_bits_are_not_codes(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text("defaults:\n  bits: [4, 32]\n  codebook: [linear, kmeans]\n")
    space = ash.load_space(tmp_path / "s.yaml")
    bound = ash.space.bind(space, nn.Sequential(nn.Linear(4, 4)))
    assert dict(bound.params())["0.codebook"].values == ("linear", "kmeans")
    assert bound.policy_from_params({"0.bits": 4, "0.codebook": "kmeans"}).layers["0"].codebook == "kmeans"
    assert bound.policy_from_params({"0.bits": 32, "0.codebook": "kmeans"}).layers == {}
    (tmp_path / "bad.yaml").write_text("defaults:\n  codebook: [linear, huffman]\n")
    with pytest.raises(ash.ConfigError, match=r"codebook\[1\].*must be one of linear, kmeans"):
        ash.load_space(tmp_path / "bad.yaml")
