"""Report parts for the search's stages: the sensitivity heatmap, the narrowed choices, how each trial
came to be (baseline, warm start, search, refined) and at which fidelity (screened out, full)."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ..policy import sparsity_fraction
from ..search.result import SearchResult
from ..search.study.schema import StudyAttr, TrialAttr
from ..space.schema import value_key

FIELD_LABEL = {
    "sparsity": "sparsity {v:g}",
    "structured": "structured {v:g}",
    "bits": "{v:g} bits",
    "rank": "rank {v:g}",
}
STAGES = ("baseline", "warm-start", "search", "refined")


def choice_label(field: str, value: Any) -> str:
    return f"{field} {value}" if isinstance(value, str) else FIELD_LABEL[field].format(v=float(value))


def _column_order(column: tuple[str, Any]) -> tuple[int, float, bool]:
    """Sparsity, structured, bits (descending), rank; "2:4" just past sparsity 0.5."""
    f, v = column
    x = sparsity_fraction(v)
    return ({"sparsity": 0, "structured": 1, "bits": 2, "rank": 3}[f], -x if f == "bits" else x, isinstance(v, str))


def sensitivity_rows(result: SearchResult) -> list[Mapping[str, Any]]:
    return list((result.study.user_attrs.get(StudyAttr.SENSITIVITY) or {}).get("rows") or [])


def sensitivity_heatmap(result: SearchResult) -> go.Figure | None:
    """Layers (rows) x single choices (columns): the accuracy drop (pp) of that choice alone, no
    fine-tune; cells the narrowed space removed are marked "removed". None without a pre-pass."""
    rows = sensitivity_rows(result)
    if not rows:
        return None
    removed = {
        (r["layer"], r["field"], value_key(r["value"]))
        for r in result.study.user_attrs.get(StudyAttr.NARROWED) or []
        if r["field"] != "structured"
    }
    no_structured = {
        r["layer"] for r in result.study.user_attrs.get(StudyAttr.NARROWED) or [] if r["field"] == "structured"
    }
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    columns = sorted({(r["field"], value_key(r["value"])) for r in rows}, key=_column_order)
    by = {(r["layer"], r["field"], value_key(r["value"])): r for r in rows}
    z, text = [], []
    for layer in layers:
        zr, tr = [], []
        for f, v in columns:
            r = by.get((layer, f, v))
            if r is None:
                zr.append(None)
                tr.append("")
                continue
            drop = r.get("accuracy_drop")
            zr.append(None if drop is None else round(float(drop) * 100, 3))
            gone = (layer, f, v) in removed or (f == "structured" and layer in no_structured)
            label = "failed" if r.get("error") else f"{drop * 100:.2f}"
            tr.append(label + ("<br>removed" if gone else ""))
        z.append(zr)
        text.append(tr)
    labels = [choice_label(f, v) for f, v in columns]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=layers,
            text=text,
            texttemplate="%{text}",
            colorscale="Reds",
            zmin=0,
            colorbar=dict(title="drop (pp)"),
            xgap=2,
            ygap=2,
            hovertemplate="%{y}, %{x}: %{text} pp drop alone<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    fig.update_layout(
        title="sensitivity: accuracy drop of each choice applied alone (no fine-tune)",
        template="plotly_white",
        height=min(220 + 32 * len(layers), 1600),
    )
    return fig


def prepass_plan_note(result: SearchResult) -> str:
    """What the pre-pass budget measured, shared and skipped, and why (empty when it measured everything)."""
    plan = (result.study.user_attrs.get(StudyAttr.SENSITIVITY) or {}).get("plan") or {}
    sub = f" ({escape(plan['subsample'])})" if plan.get("subsample") else ""
    if not plan.get("why"):
        return f'<p id="prepass-plan">Pre-pass: every choice measured{sub}.</p>' if sub else ""
    return (
        f'<p id="prepass-plan">Pre-pass: {plan["measured"]} of {plan["choices"]} choices measured{sub}, '
        f"{plan['shared']} shared from a repeated layer, {plan['skipped']} skipped: {escape(plan['why'])}.</p>"
    )


def narrowed_table(result: SearchResult) -> str:
    attrs = result.study.user_attrs
    if StudyAttr.SENSITIVITY not in attrs:
        return "<p>No sensitivity pre-pass ran (<code>sensitivity=False</code>): the space was searched as given.</p>"
    removed = attrs.get(StudyAttr.NARROWED) or []
    if not removed:
        return "<p>No choice exceeded the cutoff alone: the space was searched as given.</p>"
    rows = "".join(
        f'<tr><td class="text">{escape(r["layer"])}</td><td class="text">'
        f"{escape('structured pruning' if r['field'] == 'structured' else choice_label(r['field'], r['value']))}"
        f'</td><td class="text">{escape(r["reason"])}</td></tr>'
        for r in removed
    )
    return (
        '<table id="narrowed-table"><tr><th class="text">layer</th><th class="text">removed choice</th>'
        f'<th class="text">why</th></tr>{rows}</table>'
    )


def stage_counts(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """stage -> {"full": completed at full fidelity, "screened out": PRUNED, "failed": FAIL, "pending": ...}."""
    out: dict[str, dict[str, int]] = {}
    if not len(frame):
        return out
    stages = frame["stage"] if "stage" in frame else pd.Series(["search"] * len(frame))
    skipped = frame["skipped"].notna() if "skipped" in frame else pd.Series([False] * len(frame))
    for stage, state, skip in zip(stages.fillna("search"), frame["state"], skipped):
        kind = (
            "not run"
            if skip
            else {"COMPLETE": "full", "PRUNED": "screened out", "FAIL": "failed"}.get(state, "pending")
        )
        out.setdefault(stage, {}).setdefault(kind, 0)
        out[stage][kind] += 1
    return out


def stages_section(result: SearchResult, frame: pd.DataFrame) -> str:
    """Counts of trials by stage and fidelity, the runtime decision, the pre-pass and screening costs."""
    attrs = result.study.user_attrs
    counts = stage_counts(frame)
    kinds = ("full", "screened out", "not run", "failed", "pending")
    head = "".join(f"<th>{k}</th>" for k in kinds)
    body = "".join(
        f'<tr><td class="text">{s}</td>' + "".join(f"<td>{counts.get(s, {}).get(k, 0)}</td>" for k in kinds) + "</tr>"
        for s in STAGES
        if s in counts
    )
    parts = [
        f'<table id="stage-table"><tr><th class="text">stage</th>{head}</tr>{body}</table>',
        '<p class="caption">baseline: the uniform policies enqueued first; warm-start: policies allocated '
        "from the sensitivity table for a sweep of budgets; search: proposed by the sampler; refined: a "
        "front candidate re-run with the long refine fine-tune (its source trial in the trials table). "
        "Screened out: stopped after the short screening fine-tune, or with <code>zero_step</code> "
        "screening before it, after the evaluation without fine-tune (Optuna state PRUNED; its numbers "
        "are kept in the trial's <code>screen</code> or <code>zero_step</code> attribute, not on the "
        "front). Not run: a "
        "warm-start twin whose distillation setting lost on an earlier allocation (its "
        "<code>skipped</code> attribute says which).</p>",
    ]
    notes = []
    rt = attrs.get(StudyAttr.RUNTIME)
    if rt:
        notes.append(f"runtime of every measurement: <b>{escape(rt['runtime'])}</b> ({escape(rt['decided_by'])})")
    sens = attrs.get(StudyAttr.SENSITIVITY)
    if sens:
        notes.append(
            f"sensitivity pre-pass: {len(sens['rows'])} single choices measured in {sens['wall_s']:.1f} s "
            f"({sens['eval_s']:.1f} s evaluating)"
        )
    run = attrs.get(StudyAttr.LAST_RUN) or {}
    sc = run.get("screening") or {}
    if sc.get("screened"):
        saved = sc.get("saved_s_estimated")
        notes.append(
            f"screening in the last run: {sc['screened']} candidates screened, {sc['promoted']} promoted "
            f"to the full fine-tune, {sc['stopped']} stopped ({sc['screen_s']:.1f} s screening"
            + (
                f"; about {saved:.1f} s of full fine-tuning not spent, estimated from the promoted candidates' mean"
                if saved is not None
                else ""
            )
            + ")"
        )
    if notes:
        parts.append("<ul>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>")
    return "".join(parts)


def refined_table(frame: pd.DataFrame, result: SearchResult) -> str:
    """The refined trials beside their sources' drops (a screened-out source: its screened drop)."""
    if "refined_from" not in frame or not frame["refined_from"].notna().any():
        return ""
    rows = []
    info = frame.set_index("trial")
    trials = result.study.get_trials(deepcopy=False)
    for r in frame[frame["refined_from"].notna()].itertuples():
        src = int(r.refined_from)
        before = info.loc[src, "accuracy_drop"] if src in info.index else float("nan")
        screen = trials[src].user_attrs.get(TrialAttr.SCREEN) if src < len(trials) else None
        shown = f"{before * 100:.2f}"
        if before != before and screen and "measurement" in screen:  # screened out: no full measurement
            shown = f"{(result.baseline.accuracy - screen['measurement']['accuracy']) * 100:.2f} (screened)"
        rows.append(
            f"<tr><td>{int(r.trial)}</td><td>{src}</td><td>{shown}</td>"
            f"<td>{r.accuracy_drop * 100:.2f}</td><td>{r.compression:.2f}</td>"
            f"<td>{int(r.finetune_steps) if r.finetune_steps == r.finetune_steps else '-'}</td></tr>"
        )
    return (
        '<table id="refined-table"><tr><th>refined trial</th><th>from trial</th><th>drop before (pp)</th>'
        "<th>drop after (pp)</th><th>compression (x)</th><th>fine-tune steps</th></tr>" + "".join(rows) + "</table>"
    )


def stage_note(row: Any) -> str:
    """A short tag of how a trial came to be, for hover texts: '[warm start]', '[refined from 12]'."""
    stage = getattr(row, "stage", None)
    if stage == "refined":
        return f" [refined from {int(row.refined_from)}]"
    if stage in ("warm-start", "baseline"):
        return f" [{stage}]"
    return ""
