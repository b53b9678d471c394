from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import PolicyError
from autoshrink.techniques.apply import apply_policy_with_report
from autoshrink.weights import weight_bits
from tests.conftest import state_equal

L = ash.LayerPolicy


class Attention(nn.Module):
    """Self-attention built from nn.Linear, with a head reshape."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda z: z.view(b, t, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
        return self.out_proj((att @ v).transpose(1, 2).reshape(b, t, d))


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.attn = Attention()
        self.norm = nn.LayerNorm(32)
        self.rnn = nn.GRU(32, 32, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        x = self.norm(x + self.attn(x))
        x, _ = self.rnn(x)
        return self.head(x.mean(1))


def test_input_model_is_bitwise_unchanged(digits_cnn) -> None:
    before = copy.deepcopy(digits_cnn)
    policy = ash.Policy(
        layers={
            "conv1": L(sparsity=0.5, structured=True),
            "conv2": L(rank=0.5, bits=4),
            "fc1": L(sparsity=0.9, bits=8),
        },
        distill=True,
    )
    small = ash.apply_policy(digits_cnn, policy, example_input=torch.randn(1, 1, 8, 8))
    assert state_equal(before, digits_cnn)
    assert type(digits_cnn.conv2) is nn.Conv2d and type(digits_cnn.fc1) is nn.Linear
    assert small.conv1.out_channels == 16 and digits_cnn.conv1.out_channels == 32


def test_unknown_layer_names_are_listed_with_suggestions(digits_cnn) -> None:
    with pytest.raises(PolicyError) as err:
        ash.apply_policy(digits_cnn, ash.Policy(layers={"fc_1": L(bits=8), "features.0": L(bits=8)}))
    msg = str(err.value)
    assert "2 layer(s)" in msg and "'fc_1' (did you mean 'fc1'" in msg and "'features.0'" in msg
    assert "conv1" in msg  # lists the model's layers


def test_structured_without_example_input_is_a_clear_error(digits_cnn) -> None:
    with pytest.raises(PolicyError, match="structured pruning of conv1.*example_input"):
        ash.apply_policy(digits_cnn, ash.Policy(layers={"conv1": L(sparsity=0.5, structured=True)}))


def test_unsupported_layers_are_skipped_and_reported_the_rest_compressed() -> None:
    model = TinyTransformer()
    ids = torch.randint(0, 100, (2, 7))
    policy = ash.Policy(
        layers={
            "attn.q_proj": L(sparsity=0.5, bits=4),
            "attn.k_proj": L(rank=0.25),
            "attn.v_proj": L(bits=8),
            "attn.out_proj": L(sparsity=0.3),
            "rnn": L(sparsity=0.5, bits=8),
            "norm": L(bits=8),
            "head": L(bits=8),
        }
    )
    small, report = apply_policy_with_report(model, policy, example_input=ids)
    assert sorted((s.layer, s.technique) for s in report.skipped) == [
        ("norm", "quantize"),
        ("rnn", "prune"),
        ("rnn", "quantize"),
    ]
    assert "GRU is not supported" in str(report.skipped[0]) or "GRU" in " ".join(map(str, report.skipped))
    assert weight_bits(small.attn.q_proj) == 4 and int((small.attn.q_proj.weight == 0).sum()) >= 512
    assert isinstance(small.attn.k_proj, ash.techniques.lowrank.Factorized)
    assert weight_bits(small.head) == 8 and small(ids).shape == (2, 5)
    with pytest.warns(ash.CompressionWarning, match="rnn: prune skipped"):
        ash.apply_policy(model, policy)


def test_embeddings_left_alone_unless_named() -> None:
    model = TinyTransformer()
    small = ash.apply_policy(model, ash.Policy(layers={"head": L(bits=4)}))
    assert torch.equal(small.embed.weight, model.embed.weight) and weight_bits(small.embed) == 32
    small = ash.apply_policy(model, ash.Policy(layers={"embed": L(sparsity=0.5, bits=8)}))
    assert weight_bits(small.embed) == 8 and int((small.embed.weight == 0).sum()) >= 1600


def test_grouped_and_depthwise_convs_are_pruned_and_quantized() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1), nn.Conv1d(4, 8, 3, groups=2))
    small, report = apply_policy_with_report(
        model,
        ash.Policy(layers={"0": L(sparsity=0.5, bits=4, rank=0.5), "1": L(bits=2), "2": L(sparsity=0.25, bits=8)}),
    )
    assert [(s.layer, s.technique) for s in report.skipped] == [("0", "lowrank")]
    assert int((small[0].weight == 0).sum()) >= 36 and weight_bits(small[0]) == 4
    assert int((small[2].weight == 0).sum()) >= 12
    assert small[1](small[0](torch.randn(1, 8, 5, 5))).shape == (1, 16, 3, 3)


def test_no_warning_when_everything_applies(digits_mlp) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ash.apply_policy(digits_mlp, ash.Policy(layers={"fc1": L(bits=8)}))
