"""Fine-tune settings as frozen data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError, describe, finite_number

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("oneshot", "gradual")
ACTIVATIONS = ("float", "auto", "int8", "int8-full", "onnxruntime", "cuda-int8")
# added later: absent from files and studies that predate them
OPTIONAL_FIELDS = ("bias_correction", "hidden", "activations")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Budgeted fine-tuning: `steps` optimizer steps of `optimizer` at `lr` with cosine decay.

    With distillation the loss is alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * task loss;
    alpha = 1.0 is distillation only (the label term is not computed at all).

    schedule: "gradual" (default) starts dense and raises each layer's sparsity (unstructured
    entries, and structured channels where a whole policy is fine-tuned by search / apply_recipe /
    evaluate) to its target on the cubic schedule of Zhu & Gupta (2017):
    s_k = s * (1 - (1 - k / ramp_updates)^3) from update k = 0 to ramp_updates, the updates spread
    evenly over the first `ramp` share of the steps; the masks (and the channels removed) are
    recomputed by magnitude at each update, then frozen for the remaining steps. The end state is
    exactly the one-shot count: round(s * n) zero entries, or the same number of channels.
    "oneshot" prunes to the final sparsity before the first step (autoshrink 0.1's behaviour).
    Defaults (benchmarks/RESULTS.md, "Fine-tune defaults"): gradual recovered better than one-shot;
    alpha 0.7 tied best where labels are scarce and lies between labels only and distillation only
    where they are plentiful.

    bn_batches: BatchNorm running statistics are re-estimated on this many training batches (train
    mode, no gradients, no augmentation) after structured pruning or low-rank factorization changed a
    model's structure (before fine-tuning), and for every compressed candidate evaluated without a
    fine-tune (post-training: zero steps, the pre-pass); 0 = never.

    bias_correction: for a candidate evaluated without a fine-tune, add to each pruned or quantized
    Linear/Conv layer's bias what its weight change takes from the mean output on the calibration
    inputs (train/bias.py); off by default. Written to files and studies only when on, so those from
    before read the same.

    hidden: with distillation from a transformer, the weight of the hidden-state term (train/hidden.py:
    every block's output matched to the teacher's) added to the logit loss; 0 (default) = logits only.
    Written only when set.

    activations: the deploy runtime whose rounding of each integer Linear's input the fine-tune simulates
    (train/activations.py): "int8", "int8-full", "onnxruntime", "cuda-int8", "auto" (the runtime the model is measured
    on: a search's study runtime, a recipe's), or "float" (default: none). Written only when set.
    """

    steps: int = 200
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    alpha: float = 0.7
    temperature: float = 4.0
    schedule: str = "gradual"
    ramp: float = 0.5
    ramp_updates: int = 10
    bn_batches: int = 8
    seed: int = 0
    bias_correction: bool = False
    hidden: float = 0.0
    activations: str = "float"

    def __post_init__(self) -> None:
        def bad(field: str, rule: str) -> ConfigError:
            return ConfigError(f"finetune.{field}: got {describe(getattr(self, field))}; {rule}.")

        def integer(v: Any, low: int) -> bool:
            return not isinstance(v, bool) and isinstance(v, int) and v >= low

        if not integer(self.steps, 0):
            raise bad("steps", "it must be an integer >= 0 (0 = no fine-tune)")
        for name in ("lr", "weight_decay", "temperature"):
            v = getattr(self, name)
            if not finite_number(v) or v < 0:
                raise bad(name, "it must be a finite number >= 0")
        if self.lr <= 0:
            raise bad("lr", "it must be > 0, e.g. 1e-3")
        if self.temperature <= 0:
            raise bad("temperature", "it must be > 0, e.g. 4")
        if not finite_number(self.alpha) or not 0 <= self.alpha <= 1:
            raise bad("alpha", "it must be in [0, 1] (the weight of the distillation term; 1 = distillation only)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"use one of {', '.join(SCHEDULES)}")
        r = self.ramp
        if not finite_number(r) or not 0 <= r <= 1:
            raise bad("ramp", "it must be a share of the steps in [0, 1], e.g. 0.5")
        if not integer(self.ramp_updates, 1):
            raise bad("ramp_updates", "it must be an integer >= 1 (how often masks are recomputed during the ramp)")
        if not integer(self.bn_batches, 0):
            raise bad("bn_batches", "it must be an integer >= 0 (0 = never re-estimate BatchNorm statistics)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad("seed", "it must be an integer")
        if not isinstance(self.bias_correction, bool):
            raise bad("bias_correction", "it must be true or false")
        if not finite_number(self.hidden) or self.hidden < 0:
            raise bad("hidden", "it must be a finite number >= 0 (the weight of the hidden-state term; 0 = off)")
        if self.activations not in ACTIVATIONS:
            raise bad(
                "activations",
                f"use one of {', '.join(ACTIVATIONS)} (the runtime whose activation rounding the fine-tune "
                "simulates; 'auto' = the one the model is measured on)",
            )
        object.__setattr__(self, "ramp", float(r))
        object.__setattr__(self, "hidden", float(self.hidden))

    def to_dict(self) -> dict[str, Any]:
        """The fields; OPTIONAL_FIELDS only where they are not their default."""
        out = asdict(self)
        for name in OPTIONAL_FIELDS:
            if out[name] == FinetuneConfig.__dataclass_fields__[name].default:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"finetune: unknown key(s) {', '.join(map(repr, unknown))}; allowed are {', '.join(sorted(known))}."
            )
        return cls(**dict(data))
