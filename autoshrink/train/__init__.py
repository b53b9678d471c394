"""Budgeted fine-tuning, knowledge distillation, gradual pruning and BatchNorm re-estimation."""

from __future__ import annotations

from .batchnorm import recalibrate_batchnorm
from .config import SCHEDULES, FinetuneConfig
from .distill import distillation_loss, kd_term
from .finetune import finetune, run_finetune
from .gradual import GradualPruning, StructuredPlan, ramp_fraction, update_schedule

__all__ = [
    "SCHEDULES",
    "FinetuneConfig",
    "GradualPruning",
    "StructuredPlan",
    "distillation_loss",
    "finetune",
    "kd_term",
    "ramp_fraction",
    "recalibrate_batchnorm",
    "run_finetune",
    "update_schedule",
]
