"""The search: an Optuna multi-objective study driven by ask/tell (the only place Optuna is used)."""

from __future__ import annotations

from .config import SearchConfig
from .context import Progress
from .load import load_result
from .objectives import OBJECTIVES, Objective
from .pareto import hypervolume, non_dominated
from .result import SearchResult
from .run import search
from .stages.fidelity import Screening

__all__ = [
    "OBJECTIVES",
    "Objective",
    "Progress",
    "Screening",
    "SearchConfig",
    "SearchResult",
    "hypervolume",
    "load_result",
    "non_dominated",
    "search",
]
