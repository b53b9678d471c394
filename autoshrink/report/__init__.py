"""The HTML report of a search: plotly figures and one self-contained page (works offline)."""

from __future__ import annotations

from .html import build_report, write_report

__all__ = ["build_report", "write_report"]
