"""Sparsity "2:4": exact masks by each criterion, kept through fine-tuning (one-shot and gradual), packed
exactly, refused where rows cannot hold it (recipes: tests/search/test_semi_structured_search.py)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import PolicyError
from autoshrink.measure.packing.container import pack
from autoshrink.techniques.prune import semi_structured_mask
from autoshrink.techniques.sparsegpt import sparsegpt

L = ash.LayerPolicy


def groups_zero(w: torch.Tensor) -> torch.Tensor:
    """Zeros per group of 4 consecutive entries of each row."""
    return (w.detach().reshape(w.shape[0], -1, 4) == 0).sum(-1)


def test_policy_reads_and_writes_2_4() -> None:
    lp = L(sparsity="2:4", bits=8)
    assert (lp.sparsity, lp.pattern, lp.semi_structured) == (0.5, "2:4", True)
    assert lp.to_dict() == {"sparsity": "2:4", "structured": False, "bits": 8, "rank": 1.0}
    assert L.from_dict(lp.to_dict()) == lp
    assert L(sparsity=0.5) != lp and not L(sparsity=0.5).semi_structured
    with pytest.raises(PolicyError, match=r'sparsity: got \'1:4\'.*or "2:4"'):
        L(sparsity="1:4")
    with pytest.raises(PolicyError, match=r'"2:4" zeroes single weights, but structured is true'):
        L(sparsity="2:4", structured=True)
    with pytest.raises(PolicyError, match=r'pattern: "2:4" removes exactly half.*sparsity is 0.3'):
        L(sparsity=0.3, pattern="2:4")


def test_mask_keeps_the_two_largest_of_every_four() -> None:
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 9.0, 1.0], [1.0, 1.0, 1.0, 1.0, 5.0, 6.0, 7.0, 8.0]])
    mask = semi_structured_mask(score)
    assert mask.tolist() == [
        [True, False, True, False, False, True, True, False],
        [False, False, True, True, False, False, True, True],  # ties: the later positions kept
    ]
    with pytest.raises(ValueError, match="rows of 6 entries cannot hold the 2:4 pattern"):
        semi_structured_mask(torch.ones(2, 6))


def test_magnitude_2_4_exact_and_kept_through_finetune(digits_mlp, digits) -> None:
    policy = ash.Policy(layers={n: L(sparsity="2:4") for n in ("fc1", "fc2", "fc3")})
    small = ash.apply_policy(digits_mlp, policy)
    for n in ("fc1", "fc2", "fc3"):
        w, w0 = getattr(small, n).weight, getattr(digits_mlp, n).weight
        assert torch.equal(groups_zero(w), torch.full_like(groups_zero(w), 2))
        assert torch.equal(w != 0, semi_structured_mask(w0.abs()))  # the two largest |w| of each four
    positions = {n: getattr(small, n).weight == 0 for n in ("fc1", "fc2", "fc3")}
    gradual = copy.deepcopy(small)
    ash.finetune(small, digits, steps=20, lr=1e-2, schedule="oneshot")
    ash.finetune(gradual, digits, steps=20, lr=1e-2)  # the gradual ramp leaves 2:4 masks as they are
    for model in (small, gradual):
        for n in positions:
            assert torch.equal(getattr(model, n).weight == 0, positions[n]), n


def test_wanda_and_sparsegpt_2_4(digits_mlp, digits) -> None:
    policy = ash.Policy(layers={"fc2": L(sparsity="2:4", criterion="wanda")})
    small = ash.apply_policy(digits_mlp, policy, task=digits)
    w = small.fc2.weight
    assert int((w == 0).sum()) == 128 * 256 // 2
    assert torch.equal(groups_zero(w), torch.full((128, 64), 2))
    assert not torch.equal(w != 0, semi_structured_mask(digits_mlp.fc2.weight.abs()))  # activations mattered
    small = ash.apply_policy(
        digits_mlp, ash.Policy(layers={"fc2": L(sparsity="2:4", criterion="sparsegpt")}), task=digits
    )
    assert torch.equal(groups_zero(small.fc2.weight), torch.full((128, 64), 2))


def test_sparsegpt_2_4_direct() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    x = torch.randn(64, 16)
    updated, keep = sparsegpt(w, x.t() @ x, 0.5, semi_structured=True, block=8)
    assert torch.equal(groups_zero(updated), torch.full((8, 4), 2))
    assert torch.equal(updated != 0, keep)
    with pytest.raises(ValueError, match="2:4 needs rows"):
        sparsegpt(torch.randn(4, 6), torch.eye(6), 0.5, semi_structured=True)


def test_rows_that_cannot_hold_the_pattern_are_skipped_with_the_reason() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = ash.apply_policy(model, ash.Policy(layers={"0": L(sparsity="2:4"), "2": L(sparsity="2:4")}))
    assert [str(w.message) for w in caught] == [
        "some layers were not compressed as asked: 0: prune skipped: 2:4 needs rows of a multiple of 4 weights; "
        "this layer's rows have 6"
    ]
    assert int((small[0].weight == 0).sum()) == 0
    assert torch.equal(groups_zero(small[2].weight), torch.full((3, 2), 2))


@pytest.mark.parametrize(("bits", "expected"), [(32, 4096 + 16384 * 4), (8, 128 * 2 + 4096 + 16384)])
def test_packed_exactly(bits: int, expected: int, tmp_path) -> None:
    """Fixed width: 1 bit a weight for the mask (what 2-bit indices of the 2 kept of 4 cost), then the kept
    values (8-bit: after one bfloat16 scale a row); entropy coding only ever makes it smaller."""
    model = nn.Sequential(nn.Linear(256, 128, bias=False))
    small = ash.apply_policy(model, ash.Policy(layers={"0": L(sparsity="2:4", bits=bits)}))
    _, fixed = pack(small, entropy=False)
    assert [(t.encoding, t.nonzero, t.nbytes) for t in fixed] == [("bitmap", 16384, expected)]
    _, coded = pack(small)
    assert coded[0].nbytes < expected
    assert ash.save_packed(small, tmp_path / "m.ashz") == (tmp_path / "m.ashz").stat().st_size
    back = ash.load_packed(tmp_path / "m.ashz")
    assert torch.equal(back[0].weight, small[0].weight.detach())
