"""Budgeted fine-tuning and knowledge distillation."""
from __future__ import annotations

from .config import FinetuneConfig
from .distill import distillation_loss, kd_term
from .finetune import finetune

__all__ = ["FinetuneConfig", "distillation_loss", "finetune", "kd_term"]
