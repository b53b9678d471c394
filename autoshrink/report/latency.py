"""Report part for the latency lookup table: how well the sum rule predicted each trial's latency,
and the table itself (measure/latency_table.py)."""

from __future__ import annotations

import json
from html import escape

from ..search import SearchResult
from .stages import choice_label

MAX_ROWS = 60  # table rows shown; the rest are counted


def _choice_text(choice: str) -> str:
    if choice == "none":
        return "untouched"
    d = json.loads(choice)
    parts = [choice_label(k, v) for k, v in sorted(d.items()) if k != "structured"]
    return ("S " if d.get("structured") else "") + ", ".join(parts)


def latency_section(result: SearchResult) -> str:
    """The prediction errors (median and 90th percentile of |predicted / measured - 1|, by fidelity)
    and the lookup table's rows; a note where latency is not an objective."""
    table = result.latency_table()
    if table.empty:
        return (
            '<p class="empty">No latency lookup table: latency is not an objective of this study, so layers '
            "were not timed alone.</p>"
        )
    parts = []
    pred = result.latency_predictions()
    if pred.empty:
        parts.append("<p>No trial had every layer choice in the table before it ran, so nothing was predicted yet.</p>")
    else:
        items = []
        for fidelity, rows in [("all", pred)] + list(pred.groupby("fidelity")):
            err = rows["error"].abs()
            items.append(
                f"<li>{escape(str(fidelity))}: {len(rows)} trials, median |error| {err.median() * 100:.1f} %, "
                f"90th percentile {err.quantile(0.9) * 100:.1f} %</li>"
            )
        parts.append(
            "<p>Each trial's latency predicted from the table before it ran (the study's untouched latency "
            "plus, per searched layer, its choice's time alone minus the untouched layer's) against its "
            "measured end-to-end latency:</p><ul>" + "".join(items) + "</ul>"
        )
    shown = table.head(MAX_ROWS)
    rows = "".join(
        f"<tr><td>{escape(r.layer)}</td><td>{escape(_choice_text(r.choice))}</td>"
        f"<td>{escape(r.runtime)}</td><td>{escape(r.device)}</td><td>{int(r.batch)}</td>"
        f"<td>{r.latency_ms:.4f}</td><td>{int(r.observations)}</td></tr>"
        for r in shown.itertuples()
    )
    more = (
        ""
        if len(table) <= MAX_ROWS
        else f'<p class="caption">{len(table) - MAX_ROWS} more rows in <code>result.latency_table()</code>.</p>'
    )
    parts.append(
        '<table id="latency-table"><tr><th>layer</th><th>choice</th><th>runtime</th><th>device</th>'
        "<th>batch</th><th>alone (ms, median)</th><th>observations</th></tr>" + rows + "</table>" + more
    )
    return "".join(parts)
