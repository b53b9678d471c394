"""Which heads and FFN neurons of a transformer block matter least (transformer_blocks.py removes them).

Importance (higher = keep), from calibration batches (the model runs in eval mode without gradients;
hooks on the out / down projection's input): head h scores the mean over tokens of the L2 norm of its
contribution to the attention output, ||context_h @ W_out[:, h].T||; neuron j the mean over tokens of
|activation_j| times ||W_down[:, j]||. Tokens whose mapping input "attention_mask" is 0 (padding) are
left out where that mask's shape matches the tokens. Without batches, magnitude: head h scores
||W_out[:, h]|| * ||W_v[h]||, neuron j ||W_up[j]|| * ||W_down[:, j]||. A head or neuron whose
output weights are zero scores exactly 0 either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .transformer_blocks import Block, check_current


def head_importance(model: nn.Module, block: Block, batches: Iterable[Any] | None = None) -> Tensor:
    """A float32 CPU tensor of shape (heads,): each head's importance (module docstring), from the
    calibration `batches` (Tensors, called as model(x), or Mappings, called as model(**x)) or, without
    them, from the weights."""
    check_current(model, block)
    h, d = block.heads, block.head_size
    w_out = model.get_submodule(block.out).weight.detach().float()  # (width, h * d)
    if batches is None:
        w_v = model.get_submodule(block.value).weight.detach().float()  # (h * d, width)
        out_norm = w_out.reshape(w_out.shape[0], h, d).pow(2).sum((0, 2)).sqrt()
        v_norm = w_v.reshape(h, d * w_v.shape[1]).pow(2).sum(1).sqrt()
        return (out_norm * v_norm).cpu()
    return _means_over_tokens(model, {block.out: _head_score(model, block)}, batches)[block.out].cpu()


def _head_score(model: nn.Module, block: Block) -> tuple[Callable[[Tensor], Tensor], int]:
    """Per token, each head's contribution norm through the output projection: (tokens, h * d) -> (tokens, h)."""
    h, d = block.heads, block.head_size
    w_out = model.get_submodule(block.out).weight.detach().float()
    w_heads = w_out.reshape(w_out.shape[0], h, d)

    def score(x: Tensor) -> Tensor:
        x = x.float().reshape(-1, h, d)
        return torch.stack([(x[:, k] @ w_heads[:, k].T).norm(dim=1) for k in range(h)], dim=1)

    return score, h


def block_importance(
    model: nn.Module, blocks: Sequence[Block], batches: Iterable[Any] | None = None
) -> dict[str, tuple[Tensor, Tensor]]:
    """Block name -> (head importance, neuron importance) of every block, as head_importance and
    neuron_importance compute them, in one pass over the calibration `batches` for all blocks."""
    if batches is None:
        return {b.name: (head_importance(model, b), neuron_importance(model, b)) for b in blocks}
    for b in blocks:
        check_current(model, b)
    layers = {}
    for b in blocks:
        layers[b.out] = _head_score(model, b)
        layers[b.down] = (lambda x: x.float().abs(), b.neurons)
    means = _means_over_tokens(model, layers, batches)
    out = {}
    for b in blocks:
        down_norm = model.get_submodule(b.down).weight.detach().float().norm(dim=0)
        out[b.name] = (means[b.out].cpu(), (means[b.down] * down_norm.to(means[b.down].device)).cpu())
    return out


def neuron_importance(model: nn.Module, block: Block, batches: Iterable[Any] | None = None) -> Tensor:
    """A float32 CPU tensor of shape (neurons,): each FFN neuron's importance (module docstring), from the
    calibration `batches` as in head_importance or, without them, from the weights."""
    check_current(model, block)
    w_down = model.get_submodule(block.down).weight.detach().float()  # (width, neurons)
    down_norm = w_down.norm(dim=0)
    if batches is None:
        up_norm = model.get_submodule(block.up).weight.detach().float().norm(dim=1)
        return (up_norm.to(down_norm.device) * down_norm).cpu()
    mean_abs = _means_over_tokens(model, {block.down: (lambda x: x.float().abs(), block.neurons)}, batches)
    return (mean_abs[block.down] * down_norm).cpu()


def lowest(importance: Tensor, fraction: float) -> list[int]:
    """The n = round(fraction * len) indices of lowest importance (ties: lower index first), at most
    len - 1 of them so that one stays, sorted ascending."""
    if not isinstance(importance, Tensor) or importance.dim() != 1:
        got = tuple(importance.shape) if isinstance(importance, Tensor) else type(importance).__name__
        raise ConfigError(f"importance must be a 1-D tensor, got {got}; pass head_importance/neuron_importance")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"fraction must be a number in [0, 1], got {fraction!r}")
    values = importance.detach().double().cpu()
    if torch.isnan(values).any():
        raise ConfigError("importance holds NaN; recompute it (non-finite weights or activations?)")
    size = values.numel()
    n = min(int(round(fraction * size)), max(size - 1, 0))
    order = sorted(range(size), key=lambda i: (values[i].item(), i))
    return sorted(order[:n])


# -- the calibration pass -----------------------------------------------------------------------------


def _means_over_tokens(
    model: nn.Module, layers: Mapping[str, tuple[Callable[[Tensor], Tensor], int]], batches: Iterable[Any]
) -> dict[str, Tensor]:
    """For each named layer, the mean over calibration tokens of score(the layer's input, one row per
    token), shape (size,), float32: one pass over `batches` for all of them. Padding tokens
    (attention_mask 0 in a mapping batch) are left out."""
    totals: dict[str, Tensor] = {}
    tokens: dict[str, int] = {}
    mask: list[Tensor | None] = [None]
    handles = []

    def hook_for(name: str, score: Callable[[Tensor], Tensor]) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            rows = x.reshape(-1, x.shape[-1])
            m = mask[0]
            if m is not None and tuple(m.shape) == tuple(x.shape[:-1]):
                rows = rows[m.reshape(-1).to(rows.device) != 0]
            if rows.shape[0]:
                totals[name] = totals[name] + score(rows).double().sum(0).to(totals[name].device)
                tokens[name] += rows.shape[0]

        return hook

    modes = {m: m.training for m in model.modules()}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for name, (score, size) in layers.items():
        layer = model.get_submodule(name)
        totals[name] = torch.zeros(size, dtype=torch.float64, device=layer.weight.device)
        tokens[name] = 0
        handles.append(layer.register_forward_pre_hook(hook_for(name, score)))
    try:
        model.eval()
        with torch.no_grad():
            for x in batches:
                if isinstance(x, Mapping):
                    inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in x.items()}
                    found = inputs.get("attention_mask")
                    mask[0] = found if isinstance(found, Tensor) else None
                    model(**inputs)
                elif isinstance(x, Tensor):
                    mask[0] = None
                    model(x.to(device))
                else:
                    raise ConfigError(
                        f"a calibration batch must be a Tensor or a Mapping of keyword inputs, got "
                        f"{type(x).__name__}; pass input tensors (or dicts such as a tokenizer's output)"
                    )
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    empty = [name for name, n in tokens.items() if n == 0]
    if empty:
        raise ConfigError(
            f"the calibration batches reached no token of {empty[0]!r}; pass at least one non-empty batch, "
            "or batches=None for magnitude importance"
        )
    return {name: (totals[name] / tokens[name]).float() for name in layers}


__all__ = ["block_importance", "head_importance", "lowest", "neuron_importance"]
