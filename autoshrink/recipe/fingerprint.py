"""Model fingerprints: module names, types and parameter shapes (never weights), and their matching.

A recipe records the fingerprint of the model it was searched on; applying it checks the target
model against it, so a recipe fits any retrained copy of the same architecture and nothing else.
Wrapper prefixes (`module.` from DistributedDataParallel / DataParallel, `_orig_mod.` from
torch.compile) are normalized away on both sides.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def normalize(name: str) -> str:
    """`name` without leading `module.` / `_orig_mod.` wrapper prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


@dataclass(frozen=True)
class LayerSignature:
    """One module that holds parameters: its type name and the shape of each direct parameter."""

    type: str
    params: Mapping[str, tuple[int, ...]]

    def describe(self) -> str:
        shapes = " ".join(f"{k} {list(v)}" for k, v in self.params.items())
        return f"{self.type} {shapes}".strip()

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "params": {k: list(v) for k, v in self.params.items()}}


def _digest(model_class: str, layers: Mapping[str, LayerSignature]) -> str:
    content = {"class": model_class, "layers": {n: s.to_dict() for n, s in layers.items()}}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """The architecture of a model: its class name and, for every module with parameters, its
    normalized name -> LayerSignature. `sha256` digests exactly that content."""

    model_class: str
    layers: Mapping[str, LayerSignature]
    sha256: str = field(default="")

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", _digest(self.model_class, self.layers))

    @property
    def content_sha256(self) -> str:
        """The digest recomputed from the content (differs from `sha256` when the layers were edited)."""
        return _digest(self.model_class, self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.model_class,
            "sha256": self.sha256,
            "layers": {n: s.to_dict() for n, s in self.layers.items()},
        }


def fingerprint(model: nn.Module) -> Fingerprint:
    """The Fingerprint of `model` (wrappers unwrapped, names normalized)."""
    inner = unwrap(model)
    layers: dict[str, LayerSignature] = {}
    for name, module in inner.named_modules():
        params = {k: tuple(int(d) for d in p.shape) for k, p in module.named_parameters(recurse=False)}
        if params:
            layers[normalize(name)] = LayerSignature(type(module).__name__, params)
    return Fingerprint(type(inner).__name__, layers)


@dataclass(frozen=True)
class Mismatch:
    """How a model differs from a recorded fingerprint (names normalized)."""

    missing: tuple[tuple[str, LayerSignature], ...] = ()  # recorded, absent from the model
    extra: tuple[tuple[str, LayerSignature], ...] = ()  # in the model, not recorded
    changed: tuple[tuple[str, LayerSignature, LayerSignature], ...] = ()  # (name, expected, found)
    model_class: tuple[str, str] | None = None  # (expected, found) when the class names differ

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra or self.changed or self.model_class)

    def names(self) -> set[str]:
        """Recorded layer names that do not fit the model."""
        return {n for n, _ in self.missing} | {n for n, _, _ in self.changed}

    def lines(self, limit: int = 8) -> list[str]:
        def some(items: list[str]) -> str:
            return "; ".join(items[:limit]) + (f"; ... ({len(items) - limit} more)" if len(items) > limit else "")

        out = []
        if self.model_class:
            out.append(f"model class: recorded {self.model_class[0]}, found {self.model_class[1]}")
        if self.missing:
            out.append(
                f"missing {len(self.missing)} layer(s): " + some([f"{n} ({s.describe()})" for n, s in self.missing])
            )
        if self.extra:
            out.append(f"extra {len(self.extra)} layer(s): " + some([f"{n} ({s.describe()})" for n, s in self.extra]))
        if self.changed:
            out.append(
                f"reshaped {len(self.changed)} layer(s): "
                + some([f"{n} (expected {e.describe()}, found {f.describe()})" for n, e, f in self.changed])
            )
        return out


def compare(recorded: Fingerprint, found: Fingerprint) -> Mismatch:
    """What differs between the recorded fingerprint and the model's."""
    if recorded.sha256 == found.sha256 and recorded.content_sha256 == found.sha256:
        return Mismatch()
    rec = {normalize(n): s for n, s in recorded.layers.items()}
    missing = tuple((n, s) for n, s in rec.items() if n not in found.layers)
    extra = tuple((n, s) for n, s in found.layers.items() if n not in rec)
    changed = tuple((n, s, found.layers[n]) for n, s in rec.items() if n in found.layers and found.layers[n] != s)
    cls = None if recorded.model_class == found.model_class else (recorded.model_class, found.model_class)
    return Mismatch(missing, extra, changed, cls)


@dataclass(frozen=True)
class InputSpec:
    """Shape and dtype of the example input. Zeros of it are a valid trace input for structured
    pruning (the dependency graph depends on shapes, not values; token ids too)."""

    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, x: Any) -> InputSpec | NamedInputSpec:
        """The spec of a tensor, or of a mapping of named tensors (a NamedInputSpec)."""
        if isinstance(x, Mapping):
            return NamedInputSpec(tuple((str(k), cls.of(v)) for k, v in x.items()))  # type: ignore[misc]
        return cls(tuple(int(d) for d in x.shape), str(x.dtype).removeprefix("torch."))

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=getattr(torch, self.dtype))

    def shown(self) -> str:
        return f"shape {list(self.shape)} ({self.dtype})"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class NamedInputSpec:
    """Shapes and dtypes of a mapping example input (keyword inputs such as input_ids and
    attention_mask). Its trace input is zeros of every entry but the attention mask, which is ones (every
    token attended): a padding-only batch is not what a model is traced for."""

    entries: tuple[tuple[str, InputSpec], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """The first entry's shape (batch first; for text, (batch, sequence length))."""
        return self.entries[0][1].shape

    def zeros(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, spec in self.entries:
            make = torch.ones if name == "attention_mask" else torch.zeros
            out[name] = make(spec.shape, dtype=getattr(torch, spec.dtype))
        return out

    def shown(self) -> str:
        return "{" + ", ".join(f"{n}: {s.shown()}" for n, s in self.entries) + "}"

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": {n: s.to_dict() for n, s in self.entries}}
