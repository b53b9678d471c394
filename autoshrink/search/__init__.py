"""The search: an Optuna multi-objective study driven by ask/tell (the only place Optuna is used)."""
from __future__ import annotations

from .driver import Progress, search
from .objectives import OBJECTIVES, Objective
from .result import Candidate, SearchResult, hypervolume, non_dominated

__all__ = ["Candidate", "OBJECTIVES", "Objective", "Progress", "SearchResult", "hypervolume", "non_dominated", "search"]
