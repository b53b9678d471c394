"""Transformer blocks: find them by structure, remove attention heads and FFN neurons physically.

A head or an FFN neuron is the unit a transformer can lose whole: removing head h drops its rows of the
query/key/value projections and its columns of the attention output projection; removing neuron j drops
row j of the FFN up projection and column j of the down projection. The Linear layers are replaced by
smaller ones (fewer MACs and parameters, not a mask), so the block must be found exactly.

Recognition is by module structure, not class name: an *attention* module has three Linear children
named as a q/k/v triple (query/key/value, q_lin/k_lin/v_lin, q_proj/k_proj/v_proj) of equal shape and
an int head count (num_attention_heads, n_heads or num_heads); its output projection is the one other
Linear of it, or else of its parent, that maps the heads (heads * head_size) to the model width; its
block is the nearest ancestor holding exactly one FFN pair (an up Linear width -> inter and a down
Linear inter -> width, up registered first) outside any attention. That covers BERT, RoBERTa,
DistilBERT and ViT of transformers 5.x, also inside a user's wrapper module. A block with a second
attention (a decoder's cross-attention) is described by its first, the self-attention.

After a removal the attention module's head count and `all_head_size` (where it has one) describe the
new layout; the head size and the model width (DistilBERT's `dim`) do not change. The forwards of
these models reshape with `view(*shape, -1, head_size)` and never read `config.num_attention_heads`
after construction, and the config is shared by all blocks, so it is left alone: a pruned model cannot
be rebuilt from its config (save the module or its state dict with the shapes, not `from_pretrained`).

Which heads and neurons to remove: block_importance.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError

QKV_NAMES: tuple[tuple[str, str, str], ...] = (
    ("query", "key", "value"),
    ("q_lin", "k_lin", "v_lin"),
    ("q_proj", "k_proj", "v_proj"),
)
HEAD_COUNT_ATTRS: tuple[str, ...] = ("num_attention_heads", "n_heads", "num_heads")
HEAD_SIZE_ATTRS: tuple[str, ...] = ("attention_head_size", "head_dim", "head_size")
ALL_HEAD_SIZE_ATTR = "all_head_size"


@dataclass(frozen=True)
class Block:
    """One recognized transformer block; all names are full module names in model.named_modules()."""

    name: str  # the block module
    attention: str  # the module holding the head-count attributes
    query: str
    key: str
    value: str
    out: str  # attention output projection
    up: str  # FFN up projection (width -> neurons)
    down: str  # FFN down projection (neurons -> width)
    heads: int
    head_size: int
    neurons: int


@dataclass(frozen=True)
class _Attention:
    name: str
    qkv: tuple[str, str, str]
    out: str
    heads: int
    head_size: int
    width: int  # the out projection's out_features: the model width


def find_blocks(model: nn.Module) -> list[Block]:
    """Every transformer block of `model` in module order ([] where none is recognized; see the module
    docstring for the structure looked for)."""
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    linears = {name: m for name, m in modules.items() if isinstance(m, nn.Linear)}
    attentions = [a for name, m in modules.items() if (a := _attention(name, m, modules)) is not None]
    taken = {n for a in attentions for n in (*a.qkv, a.out)}
    blocks: dict[str, Block] = {}
    for a in attentions:
        found = _block_of(a, linears, taken, order)
        if found is None or found[0] in blocks:
            continue
        name, up, down = found
        blocks[name] = Block(
            name=name,
            attention=a.name,
            query=a.qkv[0],
            key=a.qkv[1],
            value=a.qkv[2],
            out=a.out,
            up=up,
            down=down,
            heads=a.heads,
            head_size=a.head_size,
            neurons=linears[up].out_features,
        )
    return sorted(blocks.values(), key=lambda b: order[b.name])


def remove_heads(model: nn.Module, block: Block, heads: Sequence[int]) -> Block:
    """Removes attention heads `heads` (indices into the block's current heads) of `block` physically and
    returns the updated Block: Q/K/V lose the heads' rows, the out projection their input columns, and the
    attention module's head count (and all_head_size) follow. At least one head stays."""
    check_current(model, block)
    drop = _indices(heads, block.heads, "head", block)
    if not drop:
        return block
    keep_heads = [h for h in range(block.heads) if h not in drop]
    if not keep_heads:
        raise ConfigError(
            f"removing heads {sorted(drop)} of block {block.name!r} would remove all {block.heads} heads; "
            f"keep at least one (remove at most {block.heads - 1})"
        )
    d = block.head_size
    device = model.get_submodule(block.query).weight.device
    rows = torch.tensor([h * d + i for h in keep_heads for i in range(d)], dtype=torch.long, device=device)
    for name in (block.query, block.key, block.value):
        _shrink(model, name, rows, dim=0)
    _shrink(model, block.out, rows.to(model.get_submodule(block.out).weight.device), dim=1)
    attention = model.get_submodule(block.attention)
    for attr in HEAD_COUNT_ATTRS:
        if _is_int(getattr(attention, attr, None)):
            setattr(attention, attr, len(keep_heads))
    if _is_int(getattr(attention, ALL_HEAD_SIZE_ATTR, None)):
        setattr(attention, ALL_HEAD_SIZE_ATTR, len(keep_heads) * d)
    return dataclasses.replace(block, heads=len(keep_heads))


def remove_neurons(model: nn.Module, block: Block, neurons: Sequence[int]) -> Block:
    """Removes FFN neurons `neurons` (indices into the block's current neurons) of `block` physically and
    returns the updated Block: the up projection loses those rows, the down projection those input
    columns. At least one neuron stays."""
    check_current(model, block)
    drop = _indices(neurons, block.neurons, "neuron", block)
    if not drop:
        return block
    keep = [j for j in range(block.neurons) if j not in drop]
    if not keep:
        raise ConfigError(
            f"removing neurons of block {block.name!r} would remove all {block.neurons} FFN neurons; "
            f"keep at least one (remove at most {block.neurons - 1})"
        )
    up_device = model.get_submodule(block.up).weight.device
    down_device = model.get_submodule(block.down).weight.device
    _shrink(model, block.up, torch.tensor(keep, dtype=torch.long, device=up_device), dim=0)
    _shrink(model, block.down, torch.tensor(keep, dtype=torch.long, device=down_device), dim=1)
    return dataclasses.replace(block, neurons=len(keep))


# -- recognition --------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _child(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def _parent(name: str) -> str | None:
    if not name:
        return None
    return name.rpartition(".")[0]


def _under(name: str, ancestor: str) -> bool:
    return not ancestor or name == ancestor or name.startswith(ancestor + ".")


def _attention(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> _Attention | None:
    """The attention description of `module`, or None where it is not one."""
    children = dict(module.named_children())
    triples = [t for t in QKV_NAMES if all(isinstance(children.get(c), nn.Linear) for c in t)]
    if len(triples) != 1:
        return None
    q, k, v = (children[c] for c in triples[0])
    if not (q.out_features == k.out_features == v.out_features):
        return None
    counts = {getattr(module, a) for a in HEAD_COUNT_ATTRS if _is_int(getattr(module, a, None))}
    if len(counts) != 1:
        return None
    heads = counts.pop()
    total = q.out_features
    if heads < 1 or total % heads:
        return None
    head_size = total // heads
    declared = {getattr(module, a) for a in HEAD_SIZE_ATTRS if _is_int(getattr(module, a, None))}
    if declared and declared != {head_size}:
        return None
    qkv = tuple(_child(name, c) for c in triples[0])
    out = _out_projection(name, module, qkv, total, modules)
    if out is None:
        return None
    return _Attention(name, qkv, out, heads, head_size, modules[out].out_features)  # type: ignore[arg-type]


def _out_projection(
    name: str, module: nn.Module, qkv: tuple[str, ...], total: int, modules: dict[str, nn.Module]
) -> str | None:
    """The one Linear of the attention module (else of its parent, outside the attention) that reads
    the heads' output: in_features == heads * head_size."""
    own = [
        _child(name, c)
        for c, m in module.named_children()
        if isinstance(m, nn.Linear) and _child(name, c) not in qkv and m.in_features == total
    ]
    if own:
        return own[0] if len(own) == 1 else None
    parent = _parent(name)
    if parent is None:
        return None
    found = [
        n
        for n, m in modules.items()
        if isinstance(m, nn.Linear) and _under(n, parent) and not _under(n, name) and m.in_features == total
    ]
    return found[0] if len(found) == 1 else None


def _block_of(
    a: _Attention, linears: dict[str, nn.Linear], taken: set[str], order: dict[str, int]
) -> tuple[str, str, str] | None:
    """(block name, up, down): the nearest ancestor of the attention holding exactly one FFN pair outside
    every attention; None where the nearest one holding any holds several."""
    ancestor = _parent(a.name)
    while ancestor is not None:
        inside = [n for n in linears if _under(n, ancestor) and n not in taken]
        ups = [n for n in inside if linears[n].in_features == a.width]
        downs = [n for n in inside if linears[n].out_features == a.width]
        pairs = [
            (u, d)
            for u in ups
            for d in downs
            if u != d and order[u] < order[d] and linears[u].out_features == linears[d].in_features
        ]
        if len(pairs) == 1:
            return ancestor, *pairs[0]
        if pairs:
            return None
        ancestor = _parent(ancestor)
    return None


# -- removal ------------------------------------------------------------------------------------------


def check_current(model: nn.Module, block: Block) -> None:
    """Raises where `block` no longer describes `model` (a stale Block, or one of another model)."""
    try:
        layers = {
            n: model.get_submodule(n) for n in (block.query, block.key, block.value, block.out, block.up, block.down)
        }
    except AttributeError as e:
        raise ConfigError(
            f"block {block.name!r} is not in this model ({e}); use a Block from find_blocks(model)"
        ) from e
    total = block.heads * block.head_size
    shapes_ok = (
        all(isinstance(m, nn.Linear) for m in layers.values())
        and all(layers[n].out_features == total for n in (block.query, block.key, block.value))
        and layers[block.out].in_features == total
        and layers[block.up].out_features == block.neurons
        and layers[block.down].in_features == block.neurons
    )
    if not shapes_ok:
        raise ConfigError(
            f"block {block.name!r} ({block.heads} heads of {block.head_size}, {block.neurons} neurons) no longer "
            "matches the model's layers; use the Block the last removal returned or call find_blocks(model) again"
        )
    for name, layer in layers.items():
        if torch.nn.utils.parametrize.is_parametrized(layer):
            raise ConfigError(
                f"layer {name!r} of block {block.name!r} is parametrized (masked or quantized); "
                "remove heads and neurons before pruning or quantizing it"
            )


def _indices(values: Sequence[int], size: int, what: str, block: Block) -> set[int]:
    """`values` as a set of valid indices into `size` heads or neurons."""
    out: set[int] = set()
    for v in values:
        i = int(v.item()) if isinstance(v, Tensor) and v.numel() == 1 else v
        if not _is_int(i) or not 0 <= i < size:  # type: ignore[operator]
            raise ConfigError(
                f"{what} index {v!r} for block {block.name!r} is not an int in [0, {size}); "
                f"indices count the block's current {size} {what}s"
            )
        out.add(i)  # type: ignore[arg-type]
    return out


def _shrink(model: nn.Module, name: str, index: Tensor, dim: int) -> None:
    """Replaces the Linear `name` by a new one keeping `index` along weight dim `dim` (0: output rows and
    bias entries, 1: input columns), same dtype, device, requires_grad and mode."""
    old: nn.Linear = model.get_submodule(name)  # type: ignore[assignment]
    with torch.no_grad():
        weight = old.weight.index_select(dim, index).clone()
        bias = None
        if old.bias is not None:
            bias = old.bias.index_select(0, index).clone() if dim == 0 else old.bias.detach().clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight, requires_grad=old.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=old.bias.requires_grad)  # type: ignore[union-attr]
    new.train(old.training)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)


__all__ = ["Block", "find_blocks", "remove_heads", "remove_neurons"]
