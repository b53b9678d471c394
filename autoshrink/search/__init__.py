"""The search: an Optuna multi-objective study driven by ask/tell (the only place Optuna is used)."""
from __future__ import annotations

from .driver import Progress, search
from .fidelity import Screening
from .load import load_result
from .objectives import OBJECTIVES, Objective
from .result import SearchResult, hypervolume, non_dominated

__all__ = ["OBJECTIVES", "Objective", "Progress", "Screening", "SearchResult", "hypervolume", "load_result",
           "non_dominated", "search"]
