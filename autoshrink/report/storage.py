"""Report part: how the most compressed front point is stored, tensor by tensor (layout, streams, bytes)."""

from __future__ import annotations

from html import escape

from ..search.result import SearchResult
from ..search.study.schema import TrialAttr


def storage_table(result: SearchResult) -> str:
    """One row per stored weight tensor of the smallest feasible front trial: shape, nonzeros, bits,
    the layout and how each of its streams is stored (fixed width or entropy-coded), and its bytes."""
    front = result.pareto
    if front.empty:
        return '<p class="empty">No feasible trial, so no front point to break down.</p>'
    trial = int(front.sort_values(["size_bytes", "trial"]).iloc[0].trial)
    stored = result.study.trials[trial].user_attrs.get(TrialAttr.MEASUREMENT) or {}
    layers = stored.get("layers") or []
    if not layers:
        return f'<p class="empty">Trial {trial} has no per-tensor breakdown stored.</p>'
    head = (
        '<tr><th class="text">tensor</th><th class="text">shape</th><th>nonzero</th><th>bits</th>'
        '<th class="text">encoding</th><th>bytes</th></tr>'
    )
    body = "".join(
        f'<tr><td class="text">{escape(str(r["name"]))}</td><td class="text">{"x".join(map(str, r["shape"]))}</td>'
        f"<td>{int(r['nonzero'])} of {int(r['params'])}</td><td>{int(r['bits'])}</td>"
        f'<td class="text">{escape(str(r["encoding"]))}</td><td>{int(r["bytes"])}</td></tr>'
        for r in layers
    )
    total = sum(int(r["bytes"]) for r in layers)
    caption = (
        f'<p class="caption">Trial {trial}, the smallest feasible front point ({int(stored["size_bytes"])} '
        f"bytes in all, {total} of them these weights; the rest is biases, normalization, the header and the "
        "model structure). Each weight is stored in its smallest layout -- dense, bitmap (a bit per entry, "
        "then the nonzeros) or relidx (relative indices) -- and each stream of the layout fixed-width or "
        "entropy-coded (ANS), whichever is smaller by exact byte count.</p>"
    )
    return f'<table id="storage-table">{head}{body}</table>{caption}'
