"""Compression techniques, registered by name and applied in a fixed order."""

from __future__ import annotations

from . import calibration, lowrank, prune, quantize, structured  # noqa: F401  (registration)
from .apply import ApplyReport, CompressionWarning, apply_policy, apply_policy_with_report
from .registry import Skipped, Technique, register, techniques

__all__ = [
    "ApplyReport",
    "CompressionWarning",
    "Skipped",
    "Technique",
    "apply_policy",
    "apply_policy_with_report",
    "register",
    "techniques",
]
