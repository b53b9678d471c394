"""autoshrink: per-layer model compression with honest, measured numbers.

Public API (stable names): Task, load_space, search, sensitivity, SearchResult, LayerPolicy, BlockPolicy,
Policy, apply_policy, finetune, measure, Measurement, save_packed, load_packed, evaluate, FinetuneConfig,
Recipe, apply_recipe, export_onnx; `autoshrink.hf` builds tasks from Hugging Face tokenizers and data.
"""

from __future__ import annotations

from . import hf
from .errors import AutoshrinkError, ConfigError, PackError, PolicyError, RecipeError, TaskError, TrainingError
from .evaluate import evaluate
from .export import export_onnx
from .measure import LatencyConfig, Measurement, load_packed, measure, save_packed
from .policy import BlockPolicy, LayerPolicy, Policy
from .recipe import Recipe, apply_recipe
from .search import SearchConfig, SearchResult, search
from .search.stages.sensitivity import sensitivity
from .space import SearchSpace, load_space
from .task import Task
from .techniques import CompressionWarning, apply_policy
from .train import FinetuneConfig, finetune
from .version import __version__


def __getattr__(name: str):  # RayExecutor is imported on first use: `import autoshrink` never imports Ray
    if name == "RayExecutor":
        from .executors.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'autoshrink' has no attribute {name!r}")


# RayExecutor is public but left out of __all__, so `from autoshrink import *` does not import Ray.
__all__ = [
    "AutoshrinkError",
    "BlockPolicy",
    "CompressionWarning",
    "ConfigError",
    "FinetuneConfig",
    "LatencyConfig",
    "LayerPolicy",
    "Measurement",
    "PackError",
    "Policy",
    "PolicyError",
    "Recipe",
    "RecipeError",
    "SearchConfig",
    "SearchResult",
    "SearchSpace",
    "Task",
    "TaskError",
    "TrainingError",
    "apply_policy",
    "apply_recipe",
    "evaluate",
    "export_onnx",
    "finetune",
    "hf",
    "load_packed",
    "load_space",
    "measure",
    "save_packed",
    "search",
    "sensitivity",
    "__version__",
]
