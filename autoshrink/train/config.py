"""Fine-tune settings as frozen data."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..errors import ConfigError, describe

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Budgeted fine-tuning: `steps` optimizer steps of `optimizer` at `lr` with cosine decay.

    With distillation the loss is alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * task loss.
    """

    steps: int = 200
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    alpha: float = 0.7
    temperature: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(field: str, rule: str) -> ConfigError:
            return ConfigError(f"finetune.{field}: got {describe(getattr(self, field))}; {rule}.")

        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise bad("steps", "it must be an integer >= 0 (0 = no fine-tune)")
        for name in ("lr", "weight_decay", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(name, "it must be a finite number >= 0")
        if self.lr <= 0:
            raise bad("lr", "it must be > 0, e.g. 1e-3")
        if self.temperature <= 0:
            raise bad("temperature", "it must be > 0, e.g. 4")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise bad("alpha", "it must be in [0, 1] (the weight of the distillation term)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"use one of {', '.join(OPTIMIZERS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad("seed", "it must be an integer")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FinetuneConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"finetune: unknown key(s) {', '.join(map(repr, unknown))}; allowed are {', '.join(sorted(known))}.")
        return cls(**dict(data))
