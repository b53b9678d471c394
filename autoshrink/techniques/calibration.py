"""Calibration statistics for the calibrated techniques (GPTQ rounding, Wanda and SparseGPT pruning).

Each calibrated layer sees the inputs it gets in the model being compressed -- after low-rank and
structured pruning, before unstructured pruning and quantization -- on CALIBRATION_EXAMPLES training
examples (the task's first, in a fixed shuffled order, so a recipe replays bitwise). What is kept is
the Gram matrix X^T X of the layer's input rows (a Linear's input vectors; a Conv's unfolded
patches): float32 products of CHUNK_ROWS rows at a time, summed in float64. With mapping inputs that
hold an `attention_mask` (token batches), a Linear's rows of padding tokens are left out: they are not
what the layer sees of real text, and at short texts most rows of a padded batch are padding. GPTQ and SparseGPT use it
as their Hessian, Wanda its diagonal (the squared norm of each input feature). One forward pass over
the examples serves as many layers as fit in GRAM_BUDGET_BYTES of float64 Gram matrices; further
passes serve the rest. Each layer's matrix is then kept in float32 (cols^2 * 4 bytes) until the
technique that needs it is done, and freed.

A search evaluates many candidates of one untouched model, and a layer's statistics depend only on the
calibration inputs and on the structural choices applied before them (low-rank, structured pruning):
its executors pass a StatsCache, which keeps them (up to CACHE_BYTES, least recently used dropped
first) so that candidates sharing that structure -- every candidate of a space without low-rank or
structured choices -- collect them once. The statistics are the same computation either way.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inputs import batch_len, call, is_mapping, take, to_device
from ..policy import LayerPolicy
from ..task import iterate_batches
from .layers import weight_layers
from .registry import Skipped, Technique, register

CALIBRATION_EXAMPLES = 512
GRAM_BUDGET_BYTES = 256 * 2**20
CHUNK_ROWS = 8192
CACHE_BYTES = 512 * 2**20

Batches = Callable[[], Iterable[Tensor]]  # a fresh pass over the calibration inputs each call


@dataclass
class LayerInputs:
    """The Gram matrix (cols x cols; summed in float64, kept in float32) of a layer's input rows and
    how many rows it sums."""

    gram: Tensor
    rows: int

    @property
    def feature_norms(self) -> Tensor:
        """The L2 norm of each input feature over the calibration rows (Wanda's ||X_j||)."""
        return self.gram.diagonal().clamp(min=0).sqrt()

    def hessian(self) -> Tensor:
        """X^T X / rows in float32: the layer-wise reconstruction loss's Hessian up to a factor of 2."""
        return (self.gram / max(self.rows, 1)).float()

    @property
    def nbytes(self) -> int:
        return self.gram.numel() * self.gram.element_size()


class StatsCache:
    """Calibration statistics kept across the candidates of one untouched model: {key: LayerInputs},
    at most `budget_bytes` of them, the least recently used dropped first. The key names the calibration
    inputs, the structural choices applied before calibration and the layer. Consumers only read the
    statistics. Pickled empty (a Ray worker fills its own)."""

    def __init__(self, budget_bytes: int = CACHE_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Hashable, LayerInputs] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.importance: dict[Hashable, Tensor] = {}  # block_removal.py: head / neuron ranks (small)

    def get(self, key: Hashable) -> LayerInputs | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: Hashable, inputs: LayerInputs) -> None:
        if inputs.nbytes > self.budget_bytes:
            return
        old = self._entries.pop(key, None)
        self.bytes += inputs.nbytes - (old.nbytes if old is not None else 0)
        self._entries[key] = inputs
        while self.bytes > self.budget_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict[str, Any]:
        return {"budget_bytes": self.budget_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["budget_bytes"])


def input_rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The rows the layer's weight multiplies, as a (rows, cols) matrix matching weight.reshape(out, -1)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, layer.in_features)
    if isinstance(layer, nn.Conv2d):
        patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (N, C*kh*kw, L)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    if isinstance(layer, nn.Conv1d):
        patches = F.unfold(
            x.unsqueeze(-1),
            (layer.kernel_size[0], 1),
            (layer.dilation[0], 1),
            (layer.padding[0], 0),
            (layer.stride[0], 1),
        )
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    raise TypeError(f"{type(layer).__name__} has no input matrix")


def unsupported(layer: nn.Module) -> str | None:
    """Why a layer's inputs cannot be calibrated on, or None."""
    if isinstance(layer, nn.Linear):
        return None
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        if layer.groups != 1:
            return f"{type(layer).__name__} with groups={layer.groups} has no single input matrix"
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            return f"{type(layer).__name__} with padding {layer.padding!r} / {layer.padding_mode!r} is not unfolded"
        return None
    return f"{type(layer).__name__} has no input activations to calibrate on (Linear and Conv1d/2d have)"


def collect(model: nn.Module, layers: list[nn.Module], batches: Batches) -> dict[int, LayerInputs]:
    """{id(layer): LayerInputs} for `layers` of `model` over the calibration batches, in as many passes as
    GRAM_BUDGET_BYTES needs (one for most models). The model runs in eval mode without gradients."""
    out: dict[int, LayerInputs] = {}
    for group in _passes(layers):
        found = {id(layer): LayerInputs(_zeros(layer), 0) for layer in group}
        hooks = [layer.register_forward_pre_hook(_accumulate(found[id(layer)], layer)) for layer in group]
        try:
            forward_over(model, batches)
        finally:
            for h in hooks:
                h.remove()
        for inputs in found.values():  # kept until their layer is done, in float32
            inputs.gram = inputs.gram.float()
        out.update(found)
    return out


_TOKENS: list[Tensor | None] = [None]  # the attention mask of the batch forward_over runs, while it runs


def forward_over(model: nn.Module, batches: Batches) -> None:
    """One pass of `model` over the calibration batches, in eval mode without gradients (its mode is
    restored after): what the hooks of a statistics collection see (`real_rows` the batch's tokens)."""
    was_training = model.training
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            for x in batches():
                x = to_device(x, device)
                mask = x.get("attention_mask") if is_mapping(x) else None
                _TOKENS[0] = mask.bool() if isinstance(mask, Tensor) and mask.dim() == 2 else None
                call(model, x)
    finally:
        _TOKENS[0] = None
        model.train(was_training)


def real_rows(layer: nn.Module, x: Tensor) -> Tensor:
    """A Linear's input without the rows of padding tokens of the batch forward_over runs (where its
    (batch, tokens) mask matches the input); anything else as it is."""
    mask = _TOKENS[0]
    if isinstance(layer, nn.Linear) and mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.to(x.device)]
    return x


def _cols(layer: nn.Module) -> int:
    return layer.weight.shape[1:].numel()


def _zeros(layer: nn.Module) -> Tensor:
    return torch.zeros(_cols(layer), _cols(layer), dtype=torch.float64, device=layer.weight.device)


def _passes(layers: list[nn.Module]) -> Iterator[list[nn.Module]]:
    group: list[nn.Module] = []
    used = 0
    for layer in layers:
        size = 8 * _cols(layer) ** 2
        if group and used + size > GRAM_BUDGET_BYTES:
            yield group
            group, used = [], 0
        group.append(layer)
        used += size
    if group:
        yield group


def _accumulate(into: LayerInputs, layer: nn.Module) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        rows = input_rows(layer, real_rows(layer, args[0].detach())).float()
        for start in range(0, rows.shape[0], CHUNK_ROWS):  # float32 sums of at most CHUNK_ROWS rows at a time
            part = rows[start : start + CHUNK_ROWS]
            into.gram += (part.T @ part).double()
        into.rows += rows.shape[0]

    return hook


def calibration_inputs(data: Any, batch_size: int, examples: int = CALIBRATION_EXAMPLES, seed: int = 0) -> Batches:
    """The first `examples` inputs of `data` (a Dataset) in a fixed shuffled order, in batches: the same
    inputs every call and every run. `.key` names them (for a StatsCache of one task's data)."""

    def batches() -> Iterator[Tensor]:
        seen = 0
        generator = torch.Generator().manual_seed(seed)
        for x, _ in iterate_batches(data, batch_size, shuffle=True, generator=generator):
            if seen >= examples:
                return
            x = take(x, slice(0, examples - seen))
            seen += batch_len(x)
            yield x

    batches.key = ("calibration", examples, batch_size, seed)  # type: ignore[attr-defined]
    return batches


@register
class Calibrate(Technique):
    """Collects the input statistics of every layer whose policy is calibrated (before pruning), into
    context["calibration_stats"]; layers it cannot calibrate fall back to nearest rounding and
    magnitude pruning, reported as skipped."""

    name = "calibrate"
    order = 25

    def selects(self, lp: LayerPolicy) -> bool:
        return lp.needs_layer_inputs

    def apply(self, model: nn.Module, targets: dict[str, LayerPolicy], context: dict[str, Any]) -> list[Skipped]:
        batches: Batches | None = context.get("calibration")
        if batches is None:  # apply.py refuses calibrated policies without data before any work
            raise RuntimeError("calibrated policy without calibration data")
        skipped: list[Skipped] = []
        leaves: list[nn.Module] = []
        for name, lp in targets.items():
            layers = weight_layers(model.get_submodule(name))
            if isinstance(layers, str):
                continue  # the pruning / quantization technique reports it
            for layer in layers:
                why = unsupported(layer)
                if why is None:
                    leaves.append(layer)
                else:
                    fallback = ", ".join(_fallbacks(lp))
                    skipped.append(Skipped(name, self.name, f"{why}; {fallback}"))
        t0 = time.perf_counter()
        cache: StatsCache | None = context.get("calibration_cache")
        structure = context.get("structure_key")
        if cache is None or structure is None or getattr(batches, "key", None) is None:
            context["calibration_stats"] = collect(model, leaves, batches)
        else:
            names = {id(m): n for n, m in model.named_modules()}
            keys = {id(layer): (batches.key, structure, names[id(layer)]) for layer in leaves}  # type: ignore[attr-defined]
            found = {id(layer): cache.get(keys[id(layer)]) for layer in leaves}
            missing = [layer for layer in leaves if found[id(layer)] is None]
            collected = collect(model, missing, batches) if missing else {}
            for layer in missing:
                cache.put(keys[id(layer)], collected[id(layer)])
            context["calibration_stats"] = {**{k: v for k, v in found.items() if v is not None}, **collected}
        context["calibration_s"] = context.get("calibration_s", 0.0) + time.perf_counter() - t0
        return skipped


def _fallbacks(lp: LayerPolicy) -> list[str]:
    out = []
    if lp.rounding == "gptq":
        out.append("rounded to nearest")
    if lp.criterion != "magnitude" and lp.sparsity > 0:
        out.append("pruned by magnitude")
    return out


def pop_stats(context: dict[str, Any], layer: nn.Module, keep: bool = False) -> LayerInputs | None:
    """The layer's calibration statistics (None where it has none); freed unless `keep`."""
    stats: dict[int, LayerInputs] = context.get("calibration_stats", {})
    return stats.get(id(layer)) if keep else stats.pop(id(layer), None)
