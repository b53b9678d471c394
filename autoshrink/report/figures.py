"""Plotly figures of a search, built from `SearchResult.trials` / `.pareto` (constraints honoured).

Every number comes from the study's records: nothing is re-measured or estimated here. Data go into
the figures as plain lists (not numpy arrays), so the page's embedded JSON stays readable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..measure import Measurement
from ..search.pareto import hypervolume, non_dominated
from ..search.result import MEASURED, SearchResult
from ..search.study.schema import TrialAttr
from .policies import policy_summary
from .stages import stage_note

AXIS = {
    "size_bytes": ("size (bytes, packed)", "log"),
    "latency_ms": ("latency (ms)", "linear"),
    "macs": ("MACs", "log"),
    "accuracy": ("accuracy (%)", "linear"),
}
GREY, INFEASIBLE, FRONT, LINE = "#9aa0a6", "#e8710a", "#1a73e8", "#174ea6"
TOLERANCE = 1e-12  # as SearchResult: a drop equal to the limit is feasible


# ---------------------------------------------------------------- data
def with_recorded_constraint(result: SearchResult) -> SearchResult:
    """`result`, with `max_accuracy_drop` recovered from the trials' stored Optuna constraint when it
    is unset (`load_result` does not restore it): limit = drop - constraint value, latest trial wins."""
    if result.max_accuracy_drop is not None:
        return result
    for t in reversed(result.study.get_trials(deepcopy=False)):
        value = t.system_attrs.get("constraints:accuracy_drop")
        m = t.user_attrs.get(TrialAttr.MEASUREMENT)
        if value is not None and m:
            limit = round(result.baseline.accuracy - m["accuracy"] - float(value), 12)
            return dataclasses.replace(result, max_accuracy_drop=max(limit, 0.0))
    return result


def trial_frame(result: SearchResult) -> pd.DataFrame:
    """Every trial with its measured columns (NaN where none) and flags: `complete`, `feasible`
    (within max_accuracy_drop and max_latency_ms), `front` (in `result.pareto`), `slower` (smaller but
    slower), `summary`."""
    df = result.trials
    if df.empty:
        df = pd.DataFrame(columns=["trial", "state", "policy", "failure", "retry_of"])
    df = df.copy()
    for column in MEASURED + ("failure", "retry_of", "policy"):
        if column not in df:
            df[column] = np.nan
    for column in ("accuracy", "accuracy_drop", "size_bytes", "latency_ms", "macs", "compression", "speedup"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    df["complete"] = (df["state"] == "COMPLETE") & df["accuracy"].notna()
    limit = result.max_accuracy_drop
    df["feasible"] = df["complete"] if limit is None else df["complete"] & (df["accuracy_drop"] <= limit + TOLERANCE)
    if result.max_latency_ms is not None:
        df["feasible"] &= df["latency_ms"] <= result.max_latency_ms + 1e-12
    df["front"] = df["trial"].isin(set(result.pareto["trial"]))
    df["slower"] = df["complete"] & (df["compression"] > 1.0) & (df["speedup"] < 1.0)
    df["summary"] = [policy_summary(p) + stage_note(r) for p, r in zip(df["policy"], df.itertuples())]
    return df.sort_values("trial").reset_index(drop=True) if len(df) else df


def _latency_note(b: Measurement) -> str:
    return f"median at batch {b.batch_size} on {b.device}, {b.threads} threads"


def _customdata(rows: pd.DataFrame) -> list[list[Any]]:
    return [
        [
            int(r.trial),
            round(r.accuracy * 100, 4),
            round(r.accuracy_drop * 100, 4),
            int(r.size_bytes),
            round(r.compression, 4),
            float(r.latency_ms),
            round(r.speedup, 4),
            int(r.macs),
            r.summary,
        ]
        for r in rows.itertuples()
    ]


HOVER = (
    "trial %{customdata[0]}<br>accuracy %{customdata[1]:.2f}% (drop %{customdata[2]:.2f} pp)<br>"
    "size %{customdata[3]} B (%{customdata[4]:.2f}x smaller)<br>latency %{customdata[5]:.4f} ms "
    "(%{customdata[6]:.2f}x speedup)<br>MACs %{customdata[7]}<br>%{customdata[8]}<extra>%{fullData.name}</extra>"
)


def _value(rows: pd.DataFrame, field: str) -> list[float]:
    if field == "accuracy":
        return [float(v) * 100 for v in rows["accuracy"]]
    if field in ("size_bytes", "macs"):
        return [int(v) for v in rows[field]]
    return [float(v) for v in rows[field]]


def _groups(result: SearchResult, frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame, dict[str, Any]]]:
    """(name, rows, marker) for: other feasible trials, infeasible trials, the Pareto front (in its order)."""
    done = frame[frame["complete"]]
    limit = result.max_accuracy_drop
    order = {int(n): i for i, n in enumerate(result.pareto["trial"])}
    front = done[done["front"]].assign(_order=lambda d: d["trial"].map(order)).sort_values("_order")
    return [
        ("completed trials", done[done["feasible"] & ~done["front"]], dict(color=GREY, size=7, opacity=0.7)),
        (
            "infeasible ("
            + " or ".join(
                ([f"drop > {limit * 100:g} pp"] if limit is not None else [])
                + ([f"latency > {result.max_latency_ms:g} ms"] if result.max_latency_ms is not None else [])
            )
            + ")"
            if limit is not None or result.max_latency_ms is not None
            else "infeasible",
            done[~done["feasible"]],
            dict(color=INFEASIBLE, size=8, symbol="x"),
        ),
        (
            "Pareto front (feasible)",
            front,
            dict(color=FRONT, size=11, symbol="diamond", line=dict(color=LINE, width=1)),
        ),
    ]


def _objective_fields(result: SearchResult) -> list[str]:
    return [o.field for o in result.objectives]


# ---------------------------------------------------------------- figures
def pareto_scatter(result: SearchResult, x: str = "size_bytes", frame: pd.DataFrame | None = None) -> go.Figure:
    """Accuracy against `x` (size_bytes, latency_ms or macs) for every completed trial: grey, the
    infeasible ones marked apart, the feasible front highlighted; where accuracy and `x` are both
    objectives, a step line joins the feasible trials no other beats in these two."""
    frame = trial_frame(result) if frame is None else frame
    fig = go.Figure()
    for name, rows, marker in _groups(result, frame):
        if len(rows):
            fig.add_trace(
                go.Scatter(
                    x=_value(rows, x),
                    y=_value(rows, "accuracy"),
                    mode="markers",
                    name=name,
                    marker=marker,
                    customdata=_customdata(rows),
                    hovertemplate=HOVER,
                )
            )
    fields = _objective_fields(result)
    feasible = frame[frame["feasible"]]
    if "accuracy" in fields and x in fields and len(feasible):
        points = np.column_stack([-feasible["accuracy"].to_numpy(float), feasible[x].to_numpy(float)])
        line = feasible[non_dominated(points)].sort_values([x, "accuracy"])
        fig.add_trace(
            go.Scatter(
                x=_value(line, x),
                y=_value(line, "accuracy"),
                mode="lines",
                line_shape="hv",
                name=f"trade-off: accuracy vs {x}",
                line=dict(color=LINE, width=1.5),
                hoverinfo="skip",
            )
        )
    b = result.baseline
    title, kind = AXIS[x]
    if x == "latency_ms":
        title += f", {_latency_note(b)}"
    fig.add_hline(
        y=b.accuracy * 100,
        line=dict(color="#5f6368", dash="dot", width=1),
        annotation_text=f"baseline {b.accuracy * 100:.2f}%",
        annotation_position="bottom right",
    )
    fig.update_layout(
        title=f"accuracy vs {title.split(' (')[0]} (latency: {_latency_note(b)})",
        xaxis=dict(title=title, type=kind),
        yaxis=dict(title="accuracy (%)"),
        template="plotly_white",
        height=460,
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def pareto_scatter_3d(result: SearchResult, frame: pd.DataFrame | None = None) -> go.Figure | None:
    """A 3-D scatter over the three objectives (accuracy on z when it is one); None unless there are 3."""
    fields = _objective_fields(result)
    if len(fields) != 3:
        return None
    frame = trial_frame(result) if frame is None else frame
    axes = [f for f in fields if f != "accuracy"] + (["accuracy"] if "accuracy" in fields else [])
    fig = go.Figure()
    for name, rows, marker in _groups(result, frame):
        if len(rows):
            fig.add_trace(
                go.Scatter3d(
                    x=_value(rows, axes[0]),
                    y=_value(rows, axes[1]),
                    z=_value(rows, axes[2]),
                    mode="markers",
                    name=name,
                    customdata=_customdata(rows),
                    hovertemplate=HOVER,
                    marker={**marker, "size": marker["size"] * 0.6},
                )
            )
    scene = {f"{k}axis": dict(title=AXIS[f][0], type=AXIS[f][1]) for k, f in zip("xyz", axes)}
    fig.update_layout(
        title=f"the three objectives (latency {_latency_note(result.baseline)})",
        scene=scene,
        template="plotly_white",
        height=560,
        legend=dict(orientation="h"),
    )
    return fig


def hypervolume_history(result: SearchResult, frame: pd.DataFrame | None = None) -> tuple[list[int], list[float]]:
    """(trial numbers, hypervolume of the feasible trials up to each), in the units and against the
    reference point of `result.hypervolume()`; running and waiting trials are left out. The running
    front is kept, so each trial costs a front update, not a front of every trial so far."""
    frame = trial_frame(result) if frame is None else frame
    finished = frame[~frame["state"].isin(["RUNNING", "WAITING"])]
    reference = result.reference_point()
    front = np.empty((0, len(result.objectives)), dtype=float)  # the feasible points no other one dominates
    numbers: list[int] = []
    values: list[float] = []
    volume = 0.0
    for row in finished.itertuples():
        if row.feasible:
            point = np.array([o.normalized(getattr(row, o.field), result.baseline) for o in result.objectives])
            if not np.all(front <= point, axis=1).any():  # it adds volume only where nothing covers it
                covered = np.all(point <= front, axis=1)
                front = np.vstack([front[~covered], point])
                volume = hypervolume(front, reference)
        numbers.append(int(row.trial))
        values.append(float(volume))
    return numbers, values


def reference_text(result: SearchResult) -> str:
    """The hypervolume reference point in words."""
    parts = []
    for o, ref in zip(result.objectives, result.reference_point()):
        parts.append(f"{ref * 100:g} pp accuracy drop" if o.maximize else f"{ref:g}x the baseline's {o.field}")
    return ", ".join(parts)


def hypervolume_figure(result: SearchResult, frame: pd.DataFrame | None = None) -> go.Figure:
    """The hypervolume history as a step line over trial numbers."""
    numbers, values = hypervolume_history(result, frame)
    fig = go.Figure(
        go.Scatter(
            x=numbers,
            y=values,
            mode="lines+markers",
            line_shape="hv",
            name="hypervolume",
            marker=dict(size=5, color=FRONT),
            hovertemplate="after trial %{x}: %{y:.6g}<extra></extra>",
        )
    )
    fig.update_layout(
        title="hypervolume of the feasible trials so far (normalized units)",
        xaxis=dict(title="trial number"),
        yaxis=dict(title="hypervolume", rangemode="tozero"),
        template="plotly_white",
        height=360,
        showlegend=False,
    )
    return fig
