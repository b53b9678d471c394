"""autoshrink: per-layer model compression with honest, measured numbers.

Public API (stable names): Task, load_space, search, SearchResult, LayerPolicy, Policy,
apply_policy, finetune, measure, Measurement, save_packed, load_packed, evaluate, FinetuneConfig.
"""
from __future__ import annotations

from .errors import AutoshrinkError, ConfigError, PackError, PolicyError, TaskError, TrainingError
from .evaluate import evaluate
from .measure import LatencyConfig, Measurement, load_packed, measure, save_packed
from .policy import LayerPolicy, Policy
from .search import Candidate, SearchResult, search
from .space import SearchSpace, load_space
from .task import Task
from .techniques import CompressionWarning, apply_policy
from .train import FinetuneConfig, finetune

__version__ = "0.1.0"

__all__ = [
    "AutoshrinkError", "CompressionWarning", "ConfigError", "FinetuneConfig", "LatencyConfig",
    "Candidate", "LayerPolicy", "Measurement", "PackError", "Policy", "PolicyError", "SearchResult", "SearchSpace",
    "Task", "TaskError", "TrainingError", "apply_policy", "evaluate", "finetune", "load_packed", "load_space",
    "measure", "save_packed", "search",
    "__version__",
]
