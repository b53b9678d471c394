"""Where the search's evaluation time went: one stacked bar per search stage, split by cost stage."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ..measure.cost import STAGES as COSTS
from ..search.result import SearchResult
from .stages import STAGES, sensitivity_rows

COLORS = {
    "apply": "#9467bd",
    "calibrate": "#8c564b",
    "finetune": "#1f77b4",
    "evaluate": "#2ca02c",
    "pack": "#d62728",
    "latency": "#ff7f0e",
}


def _add(total: dict[str, float], row: Mapping[str, Any]) -> bool:
    found = False
    for c in COSTS:
        v = row.get(f"{c}_s")
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
            total[c] += float(v)
            found = True
    return found


def cost_by_stage(result: SearchResult, frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{search stage: {cost stage: seconds}} over the pre-pass rows and the trials (screening included)
    that recorded a split; stages with none are left out."""
    out: dict[str, dict[str, float]] = {}
    pre = dict.fromkeys(COSTS, 0.0)
    if any([_add(pre, r) for r in sensitivity_rows(result)]):
        out["pre-pass"] = pre
    if len(frame) and "apply_s" in frame:
        stages = frame["stage"].fillna("search") if "stage" in frame else pd.Series(["search"] * len(frame))
        for stage in STAGES:
            total = dict.fromkeys(COSTS, 0.0)
            rows = frame[stages == stage]
            if any([_add(total, r) for r in rows.to_dict("records")]):
                out[stage] = total
    return out


def cost_figure(result: SearchResult, frame: pd.DataFrame) -> go.Figure | None:
    """Stacked horizontal bars: seconds per search stage, coloured by where they went; None without a split."""
    costs = cost_by_stage(result, frame)
    if not costs:
        return None
    stages = list(costs)
    fig = go.Figure(
        [
            go.Bar(
                name=c,
                y=stages,
                x=[round(costs[s][c], 3) for s in stages],
                orientation="h",
                marker_color=COLORS[c],
                hovertemplate="%{y}: %{x:.1f} s " + c + "<extra></extra>",
            )
            for c in COSTS
        ]
    )
    fig.update_layout(
        barmode="stack",
        title="evaluation time by stage: where each stage's seconds went",
        xaxis_title="seconds (summed over evaluations; parallel workers add up)",
        template="plotly_white",
        height=180 + 40 * len(stages),
        legend=dict(orientation="h", y=-0.35),
    )
    fig.update_yaxes(autorange="reversed", type="category")
    return fig
