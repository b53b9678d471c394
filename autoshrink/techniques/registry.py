"""Technique registry: each technique is one class registered by name, applied in `order`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..policy import LayerPolicy

_REGISTRY: dict[str, Technique] = {}


@dataclass(frozen=True)
class Skipped:
    """A layer a technique left alone, and why."""

    layer: str
    technique: str
    reason: str

    def __str__(self) -> str:
        return f"{self.layer}: {self.technique} skipped: {self.reason}"


class Technique(ABC):
    """One compression technique.

    `selects(lp)` says whether a layer policy asks for it; `apply(model, targets, context)`
    changes `model` in place for the selected layers and returns those it could not handle.
    `context` carries `example_input` (may be None) and anything earlier techniques recorded.
    """

    name: str = ""
    order: int = 0

    @abstractmethod
    def selects(self, lp: LayerPolicy) -> bool:
        """Whether a layer policy asks for this technique."""

    @abstractmethod
    def apply(self, model: nn.Module, targets: dict[str, LayerPolicy], context: dict[str, Any]) -> list[Skipped]:
        """Change `model` in place for `targets`; return the layers left alone, with reasons."""


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: register a technique under `cls.name`."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"technique name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def techniques() -> list[Technique]:
    """Registered techniques in application order."""
    return sorted(_REGISTRY.values(), key=lambda t: t.order)


def get(name: str) -> Technique:
    return _REGISTRY[name]
