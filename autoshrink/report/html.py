"""The report page: one self-contained HTML file (plotly.js inlined once, no network needed)."""

from __future__ import annotations

import math
import os
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ..errors import ConfigError
from ..files import write_atomically
from ..search.result import SearchResult
from ..search.study.schema import StudyAttr, TrialAttr
from ..version import __version__
from .costs import cost_figure
from .figures import (
    hypervolume_figure,
    pareto_scatter,
    pareto_scatter_3d,
    reference_text,
    trial_frame,
    with_recorded_constraint,
)
from .latency import latency_section
from .policies import policy_heatmaps
from .splits import interval, splits_line
from .stages import narrowed_table, prepass_plan_note, refined_table, sensitivity_heatmap, stages_section
from .storage import storage_table

SLOWER_WHY = (
    "Unstructured sparsity and sub-8-bit codes shrink the packed file, not dense-kernel latency: the "
    "model still runs the same dense float (or int8) kernels at the same shapes, so a smaller file can "
    "time the same or slower (differences of a few percent are timing noise). Only structured pruning, "
    "low-rank factorization and int8 kernels change the work done, and on small layers at a small batch "
    "even these can lose to the cost of an extra kernel."
)
RUNTIME_WHY = {
    "float": "This study's runtime is torch float: every layer runs dense float kernels.",
    "int8": "This study's runtime is torch int8: Linear layers at <= 8 bits run torch's dynamic int8 kernel "
    "(activations quantized per batch, a cost that can outweigh the faster GEMM at batch 1).",
    "int8-full": "This study's runtime is torch int8 with 8-bit inputs: Linear layers at <= 8 bits run torch's "
    "dynamic int8 kernel with activations quantized per batch to 8 bits (torch's own module takes 7), which this "
    "CPU's kernel computes exactly.",
    "onnxruntime": "This study's runtime is ONNX Runtime: the exported model, Linear layers at <= 8 bits as int8 "
    "GEMM with activations quantized per batch (a cost that can outweigh the faster GEMM at batch 1), "
    "the rest float.",
    "onnxruntime-static": "This study's runtime is ONNX Runtime with static activation quantization: Linear layers "
    "at <= 8 bits as int8 GEMM with calibrated activation scales, the rest float.",
    "cuda-graph": "This study's runtime is float16 on the GPU, captured as CUDA graphs: 2:4-sparse Linear layers run "
    "the semi-structured sparse kernels; integer codes, unstructured zeros and codebooks run as float16 weights "
    "(simulated: listed per trial).",
    "cuda-int8": "This study's runtime is float16 on the GPU, captured as CUDA graphs, with every Linear at <= 8 bits "
    "(one scale per channel) an int8 matmul; other compressions run as float16 weights (simulated: listed per "
    "trial).",
}


def study_runtime(result: SearchResult) -> str:
    """The deployment runtime the study measured every trial on ("float" where none is recorded)."""
    return (result.study.user_attrs.get(StudyAttr.RUNTIME) or {}).get("runtime", "float")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
     padding:0 1em;color:#202124}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #dadce0}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} th,td{padding:.25em .6em;text-align:right}
th{background:#f1f3f4} tr:nth-child(even) td{background:#fafafa} td.text,th.text{text-align:left}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em} dt{font-weight:600} dd{margin:0}
.caption{color:#5f6368;font-size:.9em} .empty{color:#b3261e;font-weight:600}
.badge{display:inline-block;padding:0 .5em;border-radius:.8em;font-size:.8em;white-space:nowrap}
.badge.slower{background:#fce8e6;color:#b3261e} tr.slower td{background:#fff4f2}
.badge.simulated{background:#fef7e0;color:#8a5a00}
.note{background:#f1f3f4;padding:.6em 1em;border-radius:4px}
"""


def mask_url(url: str | None) -> str:
    """A storage URL with any password replaced by '***' (scheme://user:***@host/...)."""
    from ..search.study.urls import redact

    return redact(url) if url else "unknown"


class _Figures:
    """Renders figures to HTML divs; the first one carries plotly.js, the rest reuse it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig: go.Figure, key: str) -> str:
        self.count += 1
        return fig.to_html(
            full_html=False,
            include_plotlyjs=self.count == 1,
            div_id=f"fig-{key}",
            default_height=f"{int(fig.layout.height or 450)}px",
            config={"displaylogo": False, "responsive": True},
        )


def _pct(value: float) -> str:
    return f"{value * 100:.2f}"


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _header(result: SearchResult, frame: pd.DataFrame) -> str:
    b = result.baseline
    states = frame["state"].value_counts().to_dict() if len(frame) else {}
    complete, failed = int(frame["complete"].sum()) if len(frame) else 0, int(states.get("FAIL", 0))
    counts = (
        f"{len(frame)} ({complete} complete, {failed} failed"
        + "".join(f", {n} {s.lower()}" for s, n in sorted(states.items()) if s not in ("COMPLETE", "FAIL"))
        + ")"
    )
    objectives = ", ".join(f"{o.name} ({o.field}, {o.direction})" for o in result.objectives)
    limit = result.max_accuracy_drop
    if limit is None:
        constraint = (
            "none (every completed trial is feasible)" if result.max_latency_ms is None else "no accuracy constraint"
        )
    else:
        beyond = int((frame["complete"] & ~frame["feasible"]).sum()) if len(frame) else 0
        constraint = (
            f"accuracy drop &le; {limit * 100:g} pp (an Optuna constraint): {beyond} of {complete} "
            "completed trials are beyond it and kept out of the front"
        )
    if result.max_latency_ms is not None:
        slow = (
            int((frame["complete"] & (frame["latency_ms"] > result.max_latency_ms + 1e-12)).sum()) if len(frame) else 0
        )
        skipped = int(frame["skipped"].fillna("").str.contains("predicted latency").sum()) if "skipped" in frame else 0
        constraint += (
            f"; latency &le; {result.max_latency_ms:g} ms (an Optuna constraint): {slow} of {complete} "
            f"completed trials are over it and kept out of the front, {skipped} candidates predicted over "
            "it by the latency lookup table were not run"
        )
    baseline = (
        f"accuracy {_pct(b.accuracy)}%, {b.size_bytes} bytes packed, {b.latency_ms:.4f} ms latency "
        f"(median at batch {b.batch_size} on {escape(b.device)} with {b.threads} threads, "
        f"{escape(b.runtime)} runtime), {b.macs} MACs, {b.params} parameters"
    )
    rows = [
        ("study", escape(result.study.study_name)),
        ("storage", escape(mask_url(result.storage))),
        ("trials", counts),
        ("objectives", escape(objectives)),
        ("constraint", constraint),
        ("baseline (untouched model)", baseline),
        ("data splits", escape(splits_line(result)) or "not recorded (a study measured before per-example records)"),
        (
            "deployment runtime",
            f"{escape(study_runtime(result))}: every trial's latency and accuracy are "
            "measured on it, and speedups compare on it",
        ),
    ]
    if result.timing.get("wall_s"):
        rows.append(
            ("search time", f"{result.timing['wall_s']:.1f} s wall, {result.timing.get('eval_s', 0):.1f} s evaluating")
        )
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    how = (
        '<p class="note"><b>How to read this report.</b> Sizes are the exact byte lengths of the packed '
        "artifacts (<code>.ashz</code>), never estimates; compression is the baseline's size divided by the "
        f"trial's. Latency is the median wall time of one forward at the deployment batch ({b.batch_size}) on "
        f"the device that measured it ({escape(b.device)}, {b.threads} threads); speedup is the baseline's "
        "latency divided by the trial's, so below 1 means slower. Accuracy drops are in percentage points "
        "(pp) against the baseline; a negative drop is a gain. Each drop carries the paired 95 % interval of "
        "the difference (baseline and trial on the same examples). The search chose every trial on the "
        "selection split, so the best of many is optimistic there: the held-out columns, measured once "
        "after the search decided, are the figures to ship on. The Pareto front holds the feasible trials "
        "no other feasible trial beats in every objective.</p>"
    )
    return f"<h1>autoshrink report: {escape(result.study.study_name)}</h1><dl>{items}</dl>{how}"


def _front_table(result: SearchResult, frame: pd.DataFrame) -> str:
    front = result.pareto
    if front.empty:
        return '<p class="empty">No feasible trial: the front is empty.</p>'
    info = frame.set_index("trial")
    simulated_layers = _simulated(result, [int(t) for t in front["trial"] if info.loc[t].get("simulated", 0) > 0])
    head = (
        "<tr><th>trial</th><th>accuracy (%)</th><th>drop (pp)</th><th>drop 95 % (pp)</th>"
        "<th>held-out accuracy (%)</th><th>held-out drop (pp)</th><th>held-out 95 % (pp)</th>"
        "<th>size_bytes</th><th>compression (x)</th>"
        '<th>latency_ms</th><th>speedup (x)</th><th>MACs</th><th class="text">runtime</th>'
        '<th class="text">device</th><th class="text">policy</th><th>fine-tune steps</th>'
        '<th class="text">note</th></tr>'
    )
    body = []
    for r in front.itertuples():
        slower = bool(info.loc[r.trial, "slower"])
        badge = '<span class="badge slower">smaller but slower</span>' if slower else ""
        simulated = simulated_layers.get(int(r.trial))
        if simulated:
            lines = "&#10;".join(escape(line, quote=True) for line in simulated)  # one line each in the tooltip
            badge += f' <span class="badge simulated" title="{lines}">simulated: {len(simulated)} layer(s)</span>'

        cls = ' class="slower"' if slower else ""
        body.append(
            f'<tr data-trial="{int(r.trial)}"{cls}><td>{int(r.trial)}</td>'
            f"<td>{_pct(r.accuracy)}</td><td>{_pct(r.accuracy_drop)}</td><td>{interval(r.drop_low, r.drop_high)}</td>"
            f"<td>{_num(r.test_accuracy * 100, '.2f')}</td><td>{_num(r.test_drop * 100, '.2f')}</td>"
            f"<td>{interval(r.test_drop_low, r.test_drop_high)}</td><td>{int(r.size_bytes)}</td>"
            f"<td>{_num(r.compression, '.2f')}</td><td>{_num(r.latency_ms, '.4f')}</td>"
            f"<td>{_num(r.speedup, '.2f')}</td>"
            f'<td>{int(r.macs)}</td><td class="text">{escape(str(r.runtime))}</td>'
            f'<td class="text">{escape(str(r.device))}</td>'
            f'<td class="text">{escape(str(info.loc[r.trial, "summary"]))}</td>'
            f'<td>{_steps(info.loc[r.trial, "finetune_steps"])}</td><td class="text">{badge}</td></tr>'
        )
    why = ""
    flagged = int(sum(bool(info.loc[t, "slower"]) for t in front["trial"]))
    if flagged:
        why = (
            f'<p class="caption"><span class="badge slower">smaller but slower</span> marks {flagged} '
            f"trial(s) with compression &gt; 1 but speedup &lt; 1 on the study's runtime. {SLOWER_WHY} "
            f"{RUNTIME_WHY.get(study_runtime(result), '')}</p>"
        )
    return f'<table id="front-table">{head}{"".join(body)}</table>{why}'


def _simulated(result: SearchResult, trials: list[int]) -> dict[int, list[str]]:
    """Per trial: the layers its GPU runtime ran without a fast kernel for their compression (one read
    of the study, and only where some front trial has any)."""
    if not trials:
        return {}
    wanted = set(trials)
    out = {}
    for t in result.study.get_trials(deepcopy=False):
        if t.number in wanted:
            out[t.number] = list((t.user_attrs.get(TrialAttr.MEASUREMENT) or {}).get("simulated") or ())
    return out


def _steps(v: Any) -> str:
    """A trial's fine-tune steps: 0 for a post-training candidate, '-' where the study did not record them."""
    return "-" if v is None or v != v else str(int(v))


def _failed_table(frame: pd.DataFrame) -> str:
    failed = frame[frame["state"] == "FAIL"] if len(frame) else frame
    if not len(failed):
        return "<p>No trial failed.</p>"
    rows = "".join(
        f'<tr data-trial="{int(r.trial)}"><td>{int(r.trial)}</td>'
        f'<td class="text">{escape(str(r.failure)) if isinstance(r.failure, str) else "no reason recorded"}</td></tr>'
        for r in failed.itertuples()
    )
    return f'<table id="failed-table"><tr><th>trial</th><th class="text">failure reason</th></tr>{rows}</table>'


def build_report(result: SearchResult) -> str:
    """One self-contained HTML page for `result`: header, the search's stages (trials by stage and
    fidelity, runtime, pre-pass and screening costs), the sensitivity heatmap and the narrowed
    choices, Pareto scatters, hypervolume history, the front's per-layer policies, the front and the
    refined trials as tables, the latency lookup table with its prediction errors, and the failed
    trials. Works offline."""
    result = with_recorded_constraint(result)
    frame = trial_frame(result)
    render = _Figures()
    parts = [_header(result, frame)]
    has_complete = bool(len(frame)) and bool(frame["complete"].any())
    fields = [o.field for o in result.objectives]

    parts.append("<h2>Search stages</h2>")
    parts.append(stages_section(result, frame))
    costs = cost_figure(result, frame)
    if costs is not None:
        parts.append(
            '<p class="caption">Where the evaluation time went, per stage: applying the policy, '
            "re-estimating BatchNorm statistics, fine-tuning, the forward passes over the evaluation data, "
            "packing (the exact size), and building and timing the runtimes. Many evaluations in "
            "fine-tuning: fewer or shorter fine-tunes (screening); in evaluation: a smaller evaluation set; "
            "all of them: more workers.</p>"
        )
        parts.append(render(costs, "costs"))

    parts.append("<h2>Sensitivity and the narrowed space</h2>")
    heat = sensitivity_heatmap(result)
    if heat is not None:
        parts.append(
            '<p class="caption">Each cell: the accuracy drop (pp) of one choice applied to one layer '
            "alone, without fine-tuning (BatchNorm statistics re-estimated); "
            '"removed" marks the choices the narrowed space dropped.</p>'
        )
        parts.append(render(heat, "sensitivity"))
    parts.append(prepass_plan_note(result))
    parts.append(narrowed_table(result))

    parts.append("<h2>Pareto front</h2>")
    if not has_complete:
        parts.append('<p class="empty">No completed trials yet: nothing to plot. Run (or resume) the search.</p>')
    else:
        if frame["feasible"].sum() == 0:
            parts.append(
                '<p class="empty">No feasible trial: every completed trial is beyond the accuracy-drop '
                "constraint, so the front is empty.</p>"
            )
        parts.append(
            '<p class="caption">Completed trials: feasible ones in grey, infeasible ones (beyond the '
            "accuracy-drop constraint) as orange crosses, the feasible Pareto front as blue diamonds; where "
            "both axes are objectives a step line joins the trials no other feasible trial beats in these "
            "two. Hover a point for its numbers and policy.</p>"
        )
        for x in ["size_bytes"] + [f for f in ("latency_ms", "macs") if f in fields]:
            parts.append(render(pareto_scatter(result, x, frame), f"pareto-{x}"))
        fig3d = pareto_scatter_3d(result, frame)
        if fig3d is not None:
            parts.append(render(fig3d, "pareto-3d"))

    parts.append("<h2>Hypervolume history</h2>")
    if has_complete:
        hv = result.hypervolume()
        parts.append(render(hypervolume_figure(result, frame), "hypervolume"))
        parts.append(
            f'<p class="caption">Hypervolume of the feasible trials finished up to each trial number, '
            f"now {hv:.6g}; units are normalized (accuracy as drop, the others as ratios to the baseline, "
            f"all minimized) against the reference point ({escape(reference_text(result))}). Trials "
            "worse than the reference in any objective add nothing.</p>"
        )
    else:
        parts.append('<p class="empty">No completed trials yet.</p>')

    parts.append("<h2>Per-layer policy of the front</h2>")
    heat = policy_heatmaps(result) if has_complete else None
    if heat is None:
        parts.append(
            '<p class="empty">No feasible trial, so no front to show.</p>'
            if has_complete
            else '<p class="empty">No completed trials yet.</p>'
        )
    else:
        parts.append(
            '<p class="caption">One row per front trial (best accuracy first; +KD = fine-tuned with '
            "distillation), one column per layer. Labels: bits (4b, fp16, fp32 = untouched), sparsity "
            "(90%s), rank fraction (r0.25), S = structured.</p>"
        )
        parts.append(render(heat, "policy"))

    parts.append("<h2>The front</h2>")
    parts.append(_front_table(result, frame) if has_complete else '<p class="empty">No completed trials yet.</p>')
    refined = refined_table(frame, result)
    if refined:
        parts.append("<h2>Refined trials</h2>")
        parts.append(
            '<p class="caption">Each refine trial re-ran a front candidate\'s policy with the long '
            "refine fine-tune (gradual pruning, the source's own policy); its recipe replays that fine-tune.</p>"
        )
        parts.append(refined)
    parts.append("<h2>How the smallest front point is stored</h2>")
    parts.append(storage_table(result) if has_complete else '<p class="empty">No completed trials yet.</p>')
    parts.append("<h2>Latency lookup table</h2>")
    parts.append(latency_section(result))
    parts.append("<h2>Failed trials</h2>")
    parts.append(_failed_table(frame))
    parts.append(f'<p class="caption">Written by autoshrink {__version__} from the study\'s records.</p>')
    title = escape(f"autoshrink report: {result.study.study_name}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def write_report(result: SearchResult, path: str | os.PathLike[str]) -> Path:
    """Write `build_report(result)` to `path` atomically (files.write_atomically); parent folders are
    created. Returns the path."""
    target = Path(path)
    page = build_report(result)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"report: cannot create the folder of {str(target)!r} ({exc.strerror or exc}). Fix: pass a writable "
            "path with -o."
        ) from None
    write_atomically(target, page, "report", ConfigError)
    return target
