"""Transformer blocks: recognition by structure, exact head/neuron removal, importance, lowest()."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from autoshrink.techniques.block_importance import head_importance, lowest, neuron_importance
from autoshrink.techniques.transformer_blocks import Block, find_blocks, remove_heads, remove_neurons

transformers = pytest.importorskip("transformers")

HIDDEN, HEADS, HEAD_SIZE, INTER, LAYERS, VOCAB = 32, 4, 8, 64, 2, 100
ARCHS = ["bert", "roberta", "distilbert", "vit"]


def build(arch: str, attn: str = "eager", **extra: Any) -> nn.Module:
    torch.manual_seed(0)
    common = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTER)
    if arch == "bert":
        model = transformers.BertModel(transformers.BertConfig(vocab_size=VOCAB, **common, **extra))
    elif arch == "roberta":
        model = transformers.RobertaModel(transformers.RobertaConfig(vocab_size=VOCAB, **common, **extra))
    elif arch == "distilbert":
        cfg = transformers.DistilBertConfig(
            vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTER
        )
        model = transformers.DistilBertModel(cfg)
    elif arch == "vit":
        model = transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=4, **common))
    else:
        raise AssertionError(arch)
    model.set_attn_implementation(attn)
    return model.eval()


def inputs(arch: str, seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    if arch == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0  # padding in the second sequence
    return {"input_ids": ids, "attention_mask": mask}


def run(model: nn.Module, x: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return model(**x).last_hidden_state


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_heads(model: nn.Module, block: Block, heads: list[int]) -> nn.Module:
    """A copy of `model` where those heads' attention output is zeroed (their out-projection columns)."""
    ref = copy.deepcopy(model)
    w = ref.get_submodule(block.out).weight
    with torch.no_grad():
        for h in heads:
            w[:, h * block.head_size : (h + 1) * block.head_size] = 0
    return ref


def zero_neurons(model: nn.Module, block: Block, neurons: list[int]) -> nn.Module:
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.get_submodule(block.down).weight[:, neurons] = 0
    return ref


def expected_blocks(arch: str, prefix: str = "") -> list[Block]:
    out = []
    for i in range(LAYERS):
        if arch in ("bert", "roberta"):
            b = f"{prefix}encoder.layer.{i}"
            names = dict(
                attention=f"{b}.attention.self",
                query=f"{b}.attention.self.query",
                key=f"{b}.attention.self.key",
                value=f"{b}.attention.self.value",
                out=f"{b}.attention.output.dense",
                up=f"{b}.intermediate.dense",
                down=f"{b}.output.dense",
            )
        elif arch == "distilbert":
            b = f"{prefix}transformer.layer.{i}"
            names = dict(
                attention=f"{b}.attention",
                query=f"{b}.attention.q_lin",
                key=f"{b}.attention.k_lin",
                value=f"{b}.attention.v_lin",
                out=f"{b}.attention.out_lin",
                up=f"{b}.ffn.lin1",
                down=f"{b}.ffn.lin2",
            )
        else:  # transformers 5.x ViTModel: layers.i with attention.{q,k,v,o}_proj and mlp.fc1/fc2
            b = f"{prefix}layers.{i}"
            names = dict(
                attention=f"{b}.attention",
                query=f"{b}.attention.q_proj",
                key=f"{b}.attention.k_proj",
                value=f"{b}.attention.v_proj",
                out=f"{b}.attention.o_proj",
                up=f"{b}.mlp.fc1",
                down=f"{b}.mlp.fc2",
            )
        out.append(Block(name=b, **names, heads=HEADS, head_size=HEAD_SIZE, neurons=INTER))
    return out


# -- find_blocks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_find_blocks_names(arch: str) -> None:
    assert find_blocks(build(arch)) == expected_blocks(arch)


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = build("bert")
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)


def test_find_blocks_in_a_wrapper_and_removal_there() -> None:
    model = Wrapper().eval()
    blocks = find_blocks(model)
    assert blocks == expected_blocks("bert", prefix="encoder.")
    x = inputs("bert")
    ref = zero_heads(model, blocks[1], [3])
    remove_heads(model, blocks[1], [3])
    with torch.no_grad():
        torch.testing.assert_close(model(**x), ref(**x), atol=1e-6, rtol=0)


def test_find_blocks_none_in_an_mlp() -> None:
    mlp = nn.Sequential(nn.Linear(HIDDEN, INTER), nn.ReLU(), nn.Linear(INTER, HIDDEN))
    assert find_blocks(mlp) == []
    assert find_blocks(nn.Linear(3, 3)) == []


def test_find_blocks_decoder_with_cross_attention_uses_self_attention() -> None:
    model = build("bert", is_decoder=True, add_cross_attention=True)
    assert find_blocks(model) == expected_blocks("bert")


def test_find_blocks_needs_the_head_count_attribute() -> None:
    model = build("distilbert")
    for i in range(LAYERS):
        del model.transformer.layer[i].attention.n_heads
    assert find_blocks(model) == []


# -- remove_heads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_remove_heads_equals_zeroed_heads(arch: str) -> None:
    model = build(arch)
    x = inputs(arch)
    block = find_blocks(model)[0]
    drop = [0, 2]
    ref = zero_heads(model, block, drop)
    assert not torch.allclose(run(model, x), run(ref, x), atol=1e-3)  # the heads matter
    before = params(model)
    new = remove_heads(model, block, drop)

    kept = (HEADS - len(drop)) * HEAD_SIZE
    assert new == Block(**{**block.__dict__, "heads": HEADS - len(drop)})
    for name in (block.query, block.key, block.value):
        layer = model.get_submodule(name)
        assert type(layer) is nn.Linear
        assert (layer.in_features, layer.out_features) == (HIDDEN, kept)
        assert layer.weight.shape == (kept, HIDDEN) and layer.bias.shape == (kept,)
    out = model.get_submodule(block.out)
    assert (out.in_features, out.out_features) == (kept, HIDDEN)
    assert out.weight.shape == (HIDDEN, kept) and out.bias.shape == (HIDDEN,)
    removed = len(drop) * HEAD_SIZE
    assert before - params(model) == 3 * (removed * HIDDEN + removed) + removed * HIDDEN
    torch.testing.assert_close(run(model, x), run(ref, x), atol=1e-6, rtol=0)
    assert find_blocks(model) == [new, expected_blocks(arch)[1]]


def test_remove_heads_keeps_the_right_weights_and_updates_attributes() -> None:
    model = build("bert")
    block = find_blocks(model)[0]
    q_old = model.get_submodule(block.query).weight.detach().clone()
    out_old = model.get_submodule(block.out).weight.detach().clone()
    remove_heads(model, block, [1])
    d = HEAD_SIZE
    rows = torch.cat([torch.arange(0, d), torch.arange(2 * d, 4 * d)])
    assert torch.equal(model.get_submodule(block.query).weight, q_old[rows])
    assert torch.equal(model.get_submodule(block.out).weight, out_old[:, rows])
    attention = model.get_submodule(block.attention)
    assert (attention.num_attention_heads, attention.attention_head_size, attention.all_head_size) == (3, d, 3 * d)
    assert model.config.num_attention_heads == HEADS  # shared by every block: left alone
    other = model.get_submodule(find_blocks(model)[1].attention)
    assert (other.num_attention_heads, other.all_head_size) == (HEADS, HIDDEN)


@pytest.mark.parametrize(
    ("arch", "attrs"), [("distilbert", ("n_heads", "dim")), ("vit", ("num_attention_heads", "head_dim"))]
)
def test_remove_heads_attributes_per_architecture(arch: str, attrs: tuple[str, str]) -> None:
    model = build(arch)
    block = find_blocks(model)[1]
    remove_heads(model, block, [3])
    attention = model.get_submodule(block.attention)
    count, other = attrs
    assert getattr(attention, count) == 3
    assert getattr(attention, other) == (HIDDEN if other == "dim" else HEAD_SIZE)  # width / head size unchanged


@pytest.mark.parametrize("arch", ["bert", "vit"])
def test_remove_heads_with_sdpa(arch: str) -> None:
    model = build(arch, attn="sdpa")
    x = inputs(arch)
    block = find_blocks(model)[1]
    ref = zero_heads(model, block, [1, 2, 3])
    remove_heads(model, block, [3, 1, 2])
    torch.testing.assert_close(run(model, x), run(ref, x), atol=1e-5, rtol=0)


def test_remove_heads_twice_and_not_all() -> None:
    model = build("bert")
    x = inputs("bert")
    block = find_blocks(model)[0]
    ref = zero_heads(model, block, [0, 1])
    once = remove_heads(model, block, [1])
    assert once.heads == 3
    with pytest.raises(ValueError, match="no longer matches"):
        remove_heads(model, block, [0])  # the stale Block
    twice = remove_heads(model, once, [0])  # original head 0
    assert twice.heads == 2
    torch.testing.assert_close(run(model, x), run(ref, x), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"encoder\.layer\.0.*all 2 heads.*at most 1"):
        remove_heads(model, twice, [0, 1])
    assert model.get_submodule(twice.query).out_features == 2 * HEAD_SIZE  # unchanged by the refused call
    assert remove_heads(model, twice, []) == twice


@pytest.mark.parametrize("bad", [[4], [-1], [1.0], ["0"]])
def test_remove_heads_bad_indices(bad: list[Any]) -> None:
    model = build("bert")
    with pytest.raises(ValueError, match="head index"):
        remove_heads(model, find_blocks(model)[0], bad)


def test_remove_keeps_dtype_and_requires_grad() -> None:
    model = build("distilbert").double()
    block = find_blocks(model)[0]
    model.get_submodule(block.key).weight.requires_grad_(False)
    block = remove_heads(model, block, [0])
    block = remove_neurons(model, block, [0, 1])
    key = model.get_submodule(block.key)
    assert key.weight.dtype == torch.float64 and not key.weight.requires_grad and key.bias.requires_grad
    assert model.get_submodule(block.up).weight.dtype == torch.float64
    assert model.get_submodule(block.down).weight.requires_grad


# -- remove_neurons -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_remove_neurons_equals_zeroed_neurons(arch: str) -> None:
    model = build(arch)
    x = inputs(arch)
    block = find_blocks(model)[1]
    drop = [0, 5, 6, 63]
    ref = zero_neurons(model, block, drop)
    assert not torch.allclose(run(model, x), run(ref, x), atol=1e-4)  # the neurons matter
    before = params(model)
    new = remove_neurons(model, block, drop)
    kept = INTER - len(drop)
    assert new.neurons == kept and new.heads == HEADS
    up, down = model.get_submodule(block.up), model.get_submodule(block.down)
    assert up.weight.shape == (kept, HIDDEN) and up.bias.shape == (kept,)
    assert down.weight.shape == (HIDDEN, kept) and down.bias.shape == (HIDDEN,)
    assert (up.out_features, down.in_features) == (kept, kept)
    assert before - params(model) == len(drop) * (2 * HIDDEN + 1)
    torch.testing.assert_close(run(model, x), run(ref, x), atol=1e-6, rtol=0)
    assert find_blocks(model)[1] == new


def test_remove_neurons_not_all() -> None:
    model = build("vit")
    block = find_blocks(model)[0]
    with pytest.raises(ValueError, match=r"layers\.0.*all 64 FFN neurons"):
        remove_neurons(model, block, list(range(INTER)))
    block = remove_neurons(model, block, list(range(INTER - 1)))
    assert block.neurons == 1
    run(model, inputs("vit"))


# -- training after removal ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "distilbert", "vit"])
def test_train_and_backward_after_removal(arch: str) -> None:
    model = build(arch)
    for block in find_blocks(model):
        block = remove_heads(model, block, [2])
        remove_neurons(model, block, list(range(0, INTER, 2)))
    model.train()
    model(**inputs(arch)).last_hidden_state.pow(2).mean().backward()
    for block in find_blocks(model):
        assert (block.heads, block.neurons) == (3, INTER // 2)
        for name in (block.query, block.key, block.value, block.out, block.up, block.down):
            layer = model.get_submodule(name)
            assert layer.weight.grad is not None and layer.weight.grad.shape == layer.weight.shape
            assert layer.weight.grad.abs().sum() > 0


# -- importance ---------------------------------------------------------------------------------------


def batches(arch: str) -> list[dict[str, Tensor]]:
    return [inputs(arch, seed=s) for s in (1, 2)]


@pytest.mark.parametrize("arch", ARCHS)
def test_importance_shapes_and_zero_heads(arch: str) -> None:
    model = build(arch)
    block = find_blocks(model)[0]
    with torch.no_grad():
        model.get_submodule(block.out).weight[:, 1 * HEAD_SIZE : 2 * HEAD_SIZE] = 0
        model.get_submodule(block.down).weight[:, 7] = 0
    for data in (None, batches(arch)):
        heads = head_importance(model, block, data)
        neurons = neuron_importance(model, block, data)
        assert heads.shape == (HEADS,) and heads.dtype == torch.float32
        assert neurons.shape == (INTER,) and neurons.dtype == torch.float32
        assert heads[1].item() == 0.0 and (heads[[0, 2, 3]] > 0).all()
        assert neurons[7].item() == 0.0 and (neurons[:7] > 0).all()
        assert lowest(heads, 0.25) == [1]


def test_magnitude_importance_values() -> None:
    model = build("distilbert")
    block = find_blocks(model)[0]
    w_out = model.get_submodule(block.out).weight
    w_v = model.get_submodule(block.value).weight
    d = HEAD_SIZE
    expected = torch.stack(
        [w_out[:, h * d : (h + 1) * d].norm() * w_v[h * d : (h + 1) * d].norm() for h in range(HEADS)]
    )
    torch.testing.assert_close(head_importance(model, block), expected.detach())
    w_up, w_down = model.get_submodule(block.up).weight, model.get_submodule(block.down).weight
    expected = torch.stack([w_up[j].norm() * w_down[:, j].norm() for j in range(INTER)])
    torch.testing.assert_close(neuron_importance(model, block), expected.detach())


def test_calibrated_importance_values_skip_padding() -> None:
    model = build("bert")
    block = find_blocks(model)[1]
    data = batches("bert")
    seen: list[Tensor] = []
    captured: list[Tensor] = []
    handles = [
        model.get_submodule(block.out).register_forward_pre_hook(lambda m, a: seen.append(a[0])),
        model.get_submodule(block.down).register_forward_pre_hook(lambda m, a: captured.append(a[0])),
    ]
    for x in data:
        run(model, x)
    for h in handles:
        h.remove()
    masks = [x["attention_mask"].reshape(-1).bool() for x in data]
    ctx = torch.cat([c.reshape(-1, HIDDEN)[m] for c, m in zip(seen, masks)])
    acts = torch.cat([a.reshape(-1, INTER)[m] for a, m in zip(captured, masks)])
    assert ctx.shape[0] == 7 + 4 + 7 + 4  # padding left out
    w_out = model.get_submodule(block.out).weight.detach()
    d = HEAD_SIZE
    expected = torch.stack(
        [(ctx[:, h * d : (h + 1) * d] @ w_out[:, h * d : (h + 1) * d].T).norm(dim=1).mean() for h in range(HEADS)]
    )
    torch.testing.assert_close(head_importance(model, block, data), expected, atol=1e-6, rtol=1e-5)
    w_down = model.get_submodule(block.down).weight.detach()
    expected = acts.abs().mean(0) * w_down.norm(dim=0)
    torch.testing.assert_close(neuron_importance(model, block, data), expected, atol=1e-6, rtol=1e-5)


def test_calibrated_importance_from_tensors_and_mode_restored() -> None:
    model = build("vit")
    model.train()
    model.embeddings.eval()
    block = find_blocks(model)[0]
    data = [x["pixel_values"] for x in batches("vit")]
    from_tensors = head_importance(model, block, data)
    from_mappings = head_importance(model, block, batches("vit"))
    torch.testing.assert_close(from_tensors, from_mappings)
    assert model.training and not model.embeddings.training and model.layers[0].training


def test_importance_hooks_removed_on_error() -> None:
    model = build("bert")
    block = find_blocks(model)[0]
    model.train()
    bad = [{"input_ids": torch.tensor([[VOCAB + 5]])}]  # out of the embedding's range
    with pytest.raises(IndexError):
        head_importance(model, block, bad)
    with pytest.raises(ValueError, match="Tensor or a Mapping"):
        neuron_importance(model, block, [[1, 2, 3]])
    with pytest.raises(ValueError, match="no token"):
        neuron_importance(model, block, [])
    for name in (block.out, block.down):
        assert not model.get_submodule(name)._forward_pre_hooks
    assert model.training


def test_importance_after_removal_follows_the_block() -> None:
    model = build("roberta")
    block = remove_heads(model, find_blocks(model)[0], [0])
    block = remove_neurons(model, block, [1, 2])
    assert head_importance(model, block, batches("roberta")).shape == (3,)
    assert neuron_importance(model, block).shape == (INTER - 2,)


# -- lowest -------------------------------------------------------------------------------------------


def test_lowest() -> None:
    t = torch.tensor([3.0, 1.0, 2.0, 1.0, 0.0])
    assert lowest(t, 0.0) == []
    assert lowest(t, 0.2) == [4]
    assert lowest(t, 0.4) == [1, 4]
    assert lowest(t, 0.6) == [1, 3, 4]  # 1.0 twice: both
    assert lowest(t, 1.0) == [1, 2, 3, 4]  # at most len - 1: the highest stays
    ties = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert lowest(ties, 0.5) == [0, 1]  # ties: lower index first
    assert lowest(torch.tensor([2.0, 1.0, 1.0, 1.0]), 0.5) == [1, 2]
    assert lowest(torch.tensor([5.0]), 1.0) == []


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), "0.5", True])
def test_lowest_bad_fraction(fraction: Any) -> None:
    with pytest.raises(ValueError, match="fraction"):
        lowest(torch.ones(4), fraction)


def test_lowest_bad_importance() -> None:
    with pytest.raises(ValueError, match="1-D"):
        lowest(torch.ones(2, 2), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        lowest(torch.tensor([1.0, float("nan")]), 0.5)
