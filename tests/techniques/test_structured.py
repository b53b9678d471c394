"""Structured channel pruning: physical shapes, kept weights, exact MACs, couplings, safe skips."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from autoshrink.policy import LayerPolicy
from autoshrink.techniques.lowrank import Factorized, factorize
from autoshrink.techniques.registry import Skipped, get
from autoshrink.techniques.structured import NO_INPUT, StructuredPrune


def lp(s: float) -> LayerPolicy:
    return LayerPolicy(sparsity=s, structured=True)


def prune(model: nn.Module, targets: dict[str, float], x: Tensor | None) -> tuple[list[Skipped], dict]:
    context = {"example_input": x}
    skipped = StructuredPrune().apply(model, {n: lp(s) for n, s in targets.items()}, context)
    return skipped, context


def macs(model: nn.Module, x: Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def match(row: Tensor, rows: Tensor) -> int:
    """The index of the one slice of `rows` equal to `row`."""
    hits = [k for k in range(rows.shape[0]) if torch.equal(row, rows[k])]
    assert len(hits) == 1
    return hits[0]


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(4)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.flatten(self.pool(torch.relu(self.bn2(self.conv2(x)))))
        return self.fc2(torch.relu(self.fc1(x)))


def _shrink(t: Tensor, idx: list[int], dim: int = 0) -> None:
    """Scale the slices `idx` of `t` along `dim` by 0.01, making them the least important."""
    with torch.no_grad():
        t.index_copy_(dim, torch.tensor(idx), t.index_select(dim, torch.tensor(idx)) * 0.01)


def test_selects() -> None:
    t = get("structured")
    assert isinstance(t, StructuredPrune) and t.order == 20
    assert t.selects(lp(0.5)) and not t.selects(LayerPolicy(sparsity=0.5)) and not t.selects(lp(0.0))


def test_plain_cnn_shapes_kept_weights_and_macs() -> None:
    torch.manual_seed(0)
    model = CNN().eval()
    x = torch.randn(1, 1, 28, 28)
    g = torch.Generator().manual_seed(1)
    drop1 = sorted(torch.randperm(16, generator=g)[:8].tolist())
    drop2 = sorted(torch.randperm(32, generator=g)[:16].tolist())
    drop3 = sorted(torch.randperm(64, generator=g)[:32].tolist())
    # make the chosen channels the weakest over their whole coupled groups
    _shrink(model.conv1.weight, drop1)
    _shrink(model.bn1.weight, drop1)
    _shrink(model.conv2.weight, drop1, 1)
    _shrink(model.conv2.weight, drop2)
    _shrink(model.bn2.weight, drop2)
    _shrink(model.fc1.weight, [c * 49 + k for c in drop2 for k in range(49)], 1)
    _shrink(model.fc1.weight, drop3)
    _shrink(model.fc2.weight, drop3, 1)
    orig = copy.deepcopy(model)
    assert macs(orig, x) == 16 * 9 * 784 + 32 * 16 * 9 * 784 + 1568 * 64 + 64 * 10

    skipped, ctx = prune(model, {"conv1": 0.5, "conv2": 0.5, "fc1": 0.5}, x)

    assert skipped == []
    assert ctx["structured"] == {"conv1": (16, 8), "conv2": (32, 16), "fc1": (64, 32)}
    assert ctx["structured_notes"] == []
    assert model.conv1.out_channels == 8 and model.bn1.num_features == 8
    assert (model.conv2.in_channels, model.conv2.out_channels) == (8, 16) and model.bn2.num_features == 16
    assert (model.fc1.in_features, model.fc1.out_features) == (16 * 7 * 7, 32) and model.fc2.in_features == 32
    assert model(x).shape == orig(x).shape == (1, 10)
    keep1 = [c for c in range(16) if c not in drop1]
    keep2 = [c for c in range(32) if c not in drop2]
    keep3 = [c for c in range(64) if c not in drop3]
    cols = [c * 49 + k for c in keep2 for k in range(49)]
    assert torch.equal(model.conv1.weight, orig.conv1.weight[keep1])
    assert torch.equal(model.conv1.bias, orig.conv1.bias[keep1])
    assert torch.equal(model.bn1.weight, orig.bn1.weight[keep1])
    assert torch.equal(model.bn1.running_var, orig.bn1.running_var[keep1])
    assert torch.equal(model.conv2.weight, orig.conv2.weight[keep2][:, keep1])
    assert torch.equal(model.fc1.weight, orig.fc1.weight[keep3][:, cols])
    assert torch.equal(model.fc2.weight, orig.fc2.weight[:, keep3])
    assert torch.equal(model.fc2.bias, orig.fc2.bias)
    assert macs(model, x) == 8 * 9 * 784 + 16 * 8 * 9 * 784 + 784 * 32 + 32 * 10


def test_classifier_is_skipped_and_model_unchanged() -> None:
    torch.manual_seed(0)
    model = CNN()
    orig = copy.deepcopy(model)
    x = torch.randn(2, 1, 28, 28)
    skipped, ctx = prune(model, {"fc2": 0.5}, x)
    assert len(skipped) == 1 and skipped[0].layer == "fc2" and skipped[0].technique == "structured"
    assert "output" in skipped[0].reason
    assert ctx["structured"] == {}
    assert same_state(model, orig) and torch.equal(model(x), orig(x))


def test_output_layer_skipped_but_other_targets_pruned() -> None:
    torch.manual_seed(0)
    model = CNN()
    x = torch.randn(2, 1, 28, 28)
    skipped, ctx = prune(model, {"fc2": 0.5, "conv1": 0.25}, x)
    assert [s.layer for s in skipped] == ["fc2"]
    assert ctx["structured"] == {"conv1": (16, 12)}
    assert model.fc2.out_features == 10 and model.conv2.in_channels == 12


class Residual(nn.Module):
    """stem -> a -> b, with b's output added to the stem's (skip path), then a 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        z = torch.relu(self.b(torch.relu(self.a(x))) + x)
        return self.fc(torch.relu(self.head(z)).mean((2, 3)))


def test_residual_coupled_targets_pruned_once() -> None:
    torch.manual_seed(0)
    model = Residual()
    orig = copy.deepcopy(model)
    x = torch.randn(1, 3, 8, 8)
    hw = 64
    assert macs(model, x) == 16 * 3 * 9 * hw + 2 * 16 * 16 * 9 * hw + 16 * 8 * hw + 8 * 10

    skipped, ctx = prune(model, {"stem": 0.5, "b": 0.25}, x)

    assert skipped == []
    assert ctx["structured"] == {"stem": (16, 8), "b": (16, 8)}  # the larger request wins
    assert (
        len(ctx["structured_notes"]) == 1 and "stem" in ctx["structured_notes"][0] and "b" in ctx["structured_notes"][0]
    )
    assert (model.stem.out_channels, model.a.in_channels, model.a.out_channels) == (8, 8, 16)
    assert (model.b.in_channels, model.b.out_channels, model.head.in_channels) == (16, 8, 8)
    kept_stem = [match(model.stem.weight[i], orig.stem.weight) for i in range(8)]
    kept_b = [match(model.b.weight[i], orig.b.weight) for i in range(8)]
    assert kept_stem == kept_b  # both sides of the add keep the same channels: the residual stays aligned
    assert torch.equal(model.a.weight, orig.a.weight[:, kept_stem])
    assert model(x).shape == (1, 10)
    assert macs(model, x) == 8 * 3 * 9 * hw + 16 * 8 * 9 * hw + 8 * 16 * 9 * hw + 8 * 8 * hw + 8 * 10


def test_residual_single_target_shrinks_skip_path() -> None:
    torch.manual_seed(0)
    model = Residual()
    x = torch.randn(1, 3, 8, 8)
    skipped, ctx = prune(model, {"b": 0.25}, x)
    assert skipped == [] and ctx["structured"] == {"b": (16, 12)}
    assert model.stem.out_channels == 12 and model.a.in_channels == 12 and model.head.in_channels == 12
    hw = 64
    assert macs(model, x) == 12 * 3 * 9 * hw + 16 * 12 * 9 * hw + 12 * 16 * 9 * hw + 12 * 8 * hw + 8 * 10


class SumOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.fa = nn.Linear(16, 4)
        self.fb = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.body(x))
        return self.fa(h) + self.fb(h)


def test_layer_coupled_to_output_through_add_is_skipped() -> None:
    torch.manual_seed(0)
    model = SumOut()
    orig = copy.deepcopy(model)
    x = torch.randn(3, 8)
    skipped, ctx = prune(model, {"fa": 0.5, "body": 0.5}, x)
    assert [s.layer for s in skipped] == ["fa"] and "output" in skipped[0].reason
    assert ctx["structured"] == {"body": (16, 8)}
    assert model.fa.out_features == 4 and model.fa.in_features == 8 and model.fb.in_features == 8
    assert model(x).shape == orig(x).shape


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 12, 3, padding=1)
        self.c = nn.Conv2d(20, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.relu(self.c(y)).mean((2, 3)))


def test_concat_consumer_shrinks_by_n() -> None:
    torch.manual_seed(0)
    model = Concat()
    orig = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    skipped, ctx = prune(model, {"b": 0.5}, x)
    assert skipped == [] and ctx["structured"] == {"b": (12, 6)}
    assert model.a.out_channels == 8 and model.b.out_channels == 6 and model.c.in_channels == 20 - 6
    kept = [match(model.b.weight[i], orig.b.weight) for i in range(6)]
    assert torch.equal(model.c.weight[:, :8], orig.c.weight[:, :8])  # branch a untouched
    assert torch.equal(model.c.weight[:, 8:], orig.c.weight[:, [8 + k for k in kept]])
    assert model(x).shape == (2, 10)


class Separable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw1 = nn.Conv2d(4, 16, 1)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw2 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.pw1(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        return self.fc(torch.relu(self.pw2(x)).mean((2, 3)))


def test_depthwise_follows_pointwise() -> None:
    torch.manual_seed(0)
    model = Separable()
    orig = copy.deepcopy(model)
    x = torch.randn(1, 4, 8, 8)
    skipped, ctx = prune(model, {"pw1": 0.5}, x)
    assert skipped == [] and ctx["structured"] == {"pw1": (16, 8)}
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (8, 8, 8)
    assert model.dw.weight.shape == (8, 1, 3, 3) and model.bn2.num_features == 8 and model.pw2.in_channels == 8
    kept = [match(model.pw1.weight[i], orig.pw1.weight) for i in range(8)]
    assert torch.equal(model.dw.weight, orig.dw.weight[kept])
    assert torch.equal(model.pw2.weight, orig.pw2.weight[:, kept])
    assert model(x).shape == (1, 10)
    assert macs(model, x) == 8 * 4 * 64 + 8 * 9 * 64 + 8 * 8 * 64 + 8 * 10


def test_factorized_target_prunes_second() -> None:
    torch.manual_seed(0)
    mid = factorize(nn.Linear(64, 64), 0.25)
    assert isinstance(mid, Factorized)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(32, 64))
    model.add_module("act1", nn.ReLU())
    model.add_module("mid", mid)
    model.add_module("act2", nn.ReLU())
    model.add_module("out", nn.Linear(64, 10))
    x = torch.randn(4, 32)
    skipped, ctx = prune(model, {"mid": 0.5}, x)
    assert skipped == [] and ctx["structured"] == {"mid": (64, 32)}
    assert (mid.first.in_features, mid.first.out_features) == (64, 16)
    assert (mid.second.in_features, mid.second.out_features) == (16, 32)
    assert model.out.in_features == 32 and model.fc1.out_features == 64
    assert model(x).shape == (4, 10)


class Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.d = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.d).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.d**0.5, dim=-1) @ v
        return self.head(self.o_proj(a.transpose(1, 2).reshape(b, t, c)).mean(1))


def test_attention_head_reshape_is_pruned_safely_or_skipped() -> None:
    torch.manual_seed(0)
    model = Attention()
    orig = copy.deepcopy(model)
    x = torch.randn(2, 5, 32)
    skipped, ctx = prune(model, {"q_proj": 0.5}, x)
    if skipped:
        assert [s.layer for s in skipped] == ["q_proj"] and ctx["structured"] == {}
        assert same_state(model, orig) and torch.equal(model(x), orig(x))
    else:
        assert ctx["structured"] == {"q_proj": (32, 16)} and model(x).shape == (2, 10)


class HiddenScale(nn.Module):
    """fc1's channels are scaled by a buffer, which the dependency graph cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 3)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 32))
        self.side = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(x)) * self.scale
        return self.fc2(h) + self.out(torch.relu(self.side(x)))


def test_broken_prune_is_rolled_back_and_others_still_pruned() -> None:
    torch.manual_seed(0)
    model = HiddenScale()
    x = torch.randn(2, 16)
    before = copy.deepcopy(model)
    weight, fc2_weight = model.fc1.weight, model.fc2.weight
    skipped, ctx = prune(model, {"fc1": 0.5, "side": 0.5}, x)
    assert [s.layer for s in skipped] == ["fc1"] and "restored" in skipped[0].reason
    assert "RuntimeError" in skipped[0].reason
    # the very same tensors are back, the layer attributes too
    assert model.fc1.weight is weight and model.fc2.weight is fc2_weight
    assert model.fc1.out_features == 32 and model.fc2.in_features == 32
    assert ctx["structured"] == {"side": (16, 8)} and model.out.in_features == 8
    assert same_state(model.fc1, before.fc1) and same_state(model.fc2, before.fc2)
    assert model(x).shape == before(x).shape


def test_unsupported_and_missing_targets_are_skipped() -> None:
    model = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    orig = copy.deepcopy(model)
    x = torch.randint(0, 100, (2, 7))
    skipped, ctx = prune(model, {"0": 0.5, "2": 0.5, "nope": 0.5, "1": 0.01}, x)
    reasons = {s.layer: s.reason for s in skipped}
    assert set(reasons) == {"0", "2", "nope", "1"}
    assert "Embedding" in reasons["0"] and "ReLU" in reasons["2"] and "no module named" in reasons["nope"]
    assert "removes no channel" in reasons["1"]
    assert ctx["structured"] == {} and same_state(model, orig)


def test_no_example_input_skips_every_target() -> None:
    model = CNN()
    orig = copy.deepcopy(model)
    skipped, ctx = prune(model, {"conv1": 0.5, "fc1": 0.5, "missing": 0.5}, None)
    assert skipped == [Skipped(n, "structured", NO_INPUT) for n in ("conv1", "fc1", "missing")]
    assert NO_INPUT == "structured pruning needs Task.example_input to trace the model"
    assert same_state(model, orig)


def test_token_ids_input() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    x = torch.randint(0, 100, (2, 7))
    skipped, ctx = prune(model, {"1": 0.5}, x)
    assert skipped == [] and ctx["structured"] == {"1": (32, 16)}
    assert model[1].out_features == 16 and model[3].in_features == 16 and model[0].embedding_dim == 16
    assert model(x).shape == (2, 7, 5)


def test_keeps_one_channel_mode_and_frozen_params() -> None:
    torch.manual_seed(0)
    model = CNN().train()
    for p in model.conv2.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 1, 28, 28)
    skipped, ctx = prune(model, {"conv1": 0.99}, x)
    assert skipped == [] and ctx["structured"] == {"conv1": (16, 1)}
    assert model.conv2.in_channels == 1 and model.training and model.bn1.training
    assert not model.conv2.weight.requires_grad and model.conv1.weight.requires_grad
    assert model(x).shape == (2, 10)


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.g(torch.relu(self.c1(x))).mean((2, 3)))


def test_grouped_conv_coupling_is_skipped() -> None:
    torch.manual_seed(0)
    model = Grouped()
    orig = copy.deepcopy(model)
    skipped, ctx = prune(model, {"c1": 0.5, "g": 0.25}, torch.randn(2, 3, 8, 8))
    assert [s.layer for s in skipped] == ["c1", "g"]
    assert all("grouped convolution g (groups=4)" in s.reason for s in skipped)
    assert ctx["structured"] == {} and same_state(model, orig)


class ScaledConv1d(nn.Module):
    """Conv1d with a learnable per-channel scale held as a bare nn.Parameter."""

    def __init__(self, hidden: bool = False) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 16, 3, padding=1)
        self.gamma = nn.Parameter(torch.linspace(0.5, 2.0, 16).view(1, 16, 1))
        self.c2 = nn.Conv1d(16, 8, 3)
        self.fc = nn.Linear(8, 10)
        self.register_buffer("hidden", torch.ones(1, 16, 1) if hidden else torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.c1(x)) * self.gamma * self.hidden
        return self.fc(self.c2(h).mean(2))


def test_conv1d_with_bare_parameter() -> None:
    torch.manual_seed(0)
    model = ScaledConv1d()
    orig = copy.deepcopy(model)
    x = torch.randn(1, 4, 20)
    skipped, ctx = prune(model, {"c1": 0.5, "c2": 0.5}, x)
    assert skipped == [] and ctx["structured"] == {"c1": (16, 8), "c2": (8, 4)}
    kept = [match(model.c1.weight[i], orig.c1.weight) for i in range(8)]
    assert torch.equal(model.gamma, orig.gamma[:, kept])
    assert model.c2.in_channels == 8 and model.fc.in_features == 4 and model(x).shape == (1, 10)
    assert macs(model, x) == 8 * 4 * 3 * 20 + 4 * 8 * 3 * 18 + 4 * 10


def test_rollback_restores_bare_parameter() -> None:
    torch.manual_seed(0)
    model = ScaledConv1d(hidden=True)
    orig = copy.deepcopy(model)
    gamma = model.gamma
    skipped, ctx = prune(model, {"c1": 0.5}, torch.randn(1, 4, 20))
    assert [s.layer for s in skipped] == ["c1"] and "restored" in skipped[0].reason
    assert model.gamma is gamma and same_state(model, orig) and ctx["structured"] == {}
