"""The per-layer policies of a search as the report shows them: short labels, one-line summaries and
the heatmaps of the front's choices per layer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..policy import SEMI_STRUCTURED, sparsity_fraction
from ..search.result import SearchResult
from ..space.schema import IDENTITY

UNTOUCHED = dict(IDENTITY)  # LayerPolicy defaults


def layer_label(layer: Mapping[str, Any] | None) -> str:
    """One layer's policy in a few characters: '4b 90%s r0.25 S' (bits, sparsity, rank, structured;
    '4bk': a 4-bit k-means codebook; 'gptq', 'g64': GPTQ rounding, 64 weights a scale; 'wanda',
    'sparsegpt': the pruning criterion where it is not magnitude; '2:4s': the 2:4 pattern)."""
    if not layer:
        return "-"
    bits = int(layer.get("bits", 32))
    parts = [
        "fp32"
        if bits == 32
        else "fp16"
        if bits == 16
        else f"{bits}b" + ("k" if layer.get("codebook", "linear") == "kmeans" else "")
    ]
    if layer.get("rounding", "nearest") != "nearest":
        parts.append(str(layer["rounding"]))
    if layer.get("group_size"):
        parts.append(f"g{int(layer['group_size'])}")
    sparsity = sparsity_fraction(layer.get("sparsity", 0.0))
    if layer.get("sparsity") == SEMI_STRUCTURED:
        parts.append(f"{SEMI_STRUCTURED}s")
    elif sparsity:
        parts.append(f"{round(sparsity * 100, 1):g}%s")
        if layer.get("criterion", "magnitude") != "magnitude":
            parts.append(str(layer["criterion"]))
    if float(layer.get("rank", 1.0)) < 1.0:
        parts.append(f"r{float(layer['rank']):g}")
    if layer.get("structured") and sparsity:
        parts.append("S")
    return " ".join(parts)


def block_label(block: Mapping[str, Any] | None) -> str:
    """One transformer block's removals: '-50%h -25%n' (heads, FFN neurons removed; 'mag' where they were
    ranked by weight magnitude, not activations; 'refit' where the projections were refitted)."""
    if not block:
        return "-"
    parts = [f"-{round(float(block.get(k, 0.0)) * 100, 1):g}%{k[0]}" for k in ("heads", "neurons") if block.get(k)] or [
        "-"
    ]
    if block.get("criterion") == "magnitude" and parts != ["-"]:
        parts.append("mag")
    if block.get("refit") and parts != ["-"]:
        parts.append("refit")
    return " ".join(parts)


def policy_summary(policy: Mapping[str, Any] | None) -> str:
    """The compressed blocks and layers of a policy dict ('encoder.layer.0 -50%h, fc1 4b 90%s, fc2 8b')
    and '+ KD' when it distills."""
    if not isinstance(policy, Mapping):
        return ""
    layers = policy.get("layers") or {}
    parts = [f"{name} {block_label(bp)}" for name, bp in (policy.get("blocks") or {}).items()]
    parts += [f"{name} {layer_label(lp)}" for name, lp in layers.items() if layer_label(lp) != "fp32"]
    text = ", ".join(parts) or "no compression"
    return text + (" + KD" if policy.get("distill") else "")


def searched_layers(result: SearchResult, trials: Any, policies: list[Mapping[str, Any]]) -> list[str]:
    """Layer names in search order: from these trials' Optuna parameters ('<layer>.bits', ...), then any
    other layer their policies name."""
    wanted = {int(n) for n in trials}
    names: dict[str, None] = {}
    for t in result.study.get_trials(deepcopy=False):
        if t.number in wanted:
            for key in t.params:
                layer, _, attr = key.rpartition(".")
                if layer and attr in UNTOUCHED:
                    names.setdefault(layer)
    for p in policies:
        for layer in p.get("layers") or {}:
            names.setdefault(layer)
    return list(names)


def policy_heatmaps(result: SearchResult) -> go.Figure | None:
    """Per-layer policy of the front's trials (rows, best accuracy first) by layer (columns): bits per
    weight (coloured by log2) and sparsity side by side, each cell labelled; None when the front is empty."""
    front = result.pareto
    if front.empty:
        return None
    policies = [p if isinstance(p, Mapping) else {} for p in front["policy"]]
    layers = searched_layers(result, front["trial"], policies)
    rows = [f"trial {int(n)}" + (" +KD" if p.get("distill") else "") for n, p in zip(front["trial"], policies)]
    # a policy dict lists the layers it changes; a searched layer it leaves out is untouched
    cells = [[dict(UNTOUCHED, **((p.get("layers") or {}).get(name) or {})) for name in layers] for p in policies]
    bits = [[math.log2(int(c["bits"])) for c in row] for row in cells]
    sparsity = [[round(sparsity_fraction(c["sparsity"]) * 100, 2) for c in row] for row in cells]
    labels = [[layer_label(c) for c in row] for row in cells]
    bits_only = lambda label: " ".join(w for w in label.split() if not w.endswith(("%s", "S", ":4s")))  # noqa: E731
    bits_text = [[bits_only(label) for label in row] for row in labels]
    sparsity_text = [
        [
            (SEMI_STRUCTURED if c["sparsity"] == SEMI_STRUCTURED else f"{v:g}%")
            + (" S" if c["structured"] and v else "")
            for v, c in zip(vs, row)
        ]
        for vs, row in zip(sparsity, cells)
    ]
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.08,
        subplot_titles=("bits per weight (32 = untouched)", "sparsity (%; S = structured)"),
    )
    fig.add_trace(
        go.Heatmap(
            z=bits,
            x=layers,
            y=rows,
            text=bits_text,
            customdata=labels,
            name="bits",
            texttemplate="%{text}",
            colorscale="Viridis",
            zmin=1,
            zmax=5,
            xgap=2,
            ygap=2,
            colorbar=dict(
                title="bits", x=0.45, len=0.9, tickvals=[1, 2, 3, 4, 5], ticktext=["2", "4", "8", "16", "32"]
            ),
            hovertemplate="%{y}, %{x}: %{customdata}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Heatmap(
            z=sparsity,
            x=layers,
            y=rows,
            text=sparsity_text,
            customdata=labels,
            name="sparsity",
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=100,
            xgap=2,
            ygap=2,
            colorbar=dict(title="%", x=1.0, len=0.9),
            hovertemplate="%{y}, %{x}: %{customdata}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    fig.update_layout(
        title="per-layer policy of the Pareto front", template="plotly_white", height=min(200 + 30 * len(rows), 1600)
    )
    return fig
