"""Shared CLI output: the live progress line and the Pareto table."""

from __future__ import annotations

import sys
from typing import Any

from ..report.splits import interval, splits_line
from ..search import Progress, SearchResult
from ..search.display import fmt_seconds
from ..search.study.schema import StudyAttr


def _what(p: Progress, drop_label: str) -> str:
    """The part of the line that names what just finished (or the stage that starts)."""
    last = p.last
    if p.stage == "runtime":
        return "deciding the runtime: float against int8 with every Linear at 8 bits"
    if p.stage == "baseline":
        return "measuring the untouched model"
    if not last:
        return {"pre-pass": "measuring each single choice", "trials": "starting", "refine": "starting"}.get(
            p.stage, "scoring the front on the held-out split"
        )
    if p.stage == "pre-pass":
        what = f"{last['layer']} {last['field']} {last['value']:g}"
        return (
            f"{what}: drop {last['accuracy_drop'] * 100:.2f} pp" if last["ok"] else f"{what}: FAILED ({last['error']})"
        )
    if p.stage == "held-out":
        key = "baseline" if last["trial"] < 0 else f"trial {last['trial']}"
        return f"{key} scored" if last["ok"] else f"{key}: FAILED ({last['error']})"
    label = {"warm-start": " (warm start)", "baseline": " (baseline policy)"}.get(last.get("stage", ""), "")
    what = (
        f"trial {last['trial']:>3}{label}: acc {last['accuracy'] * 100:5.2f}% {last['size_bytes']:>8} B "
        f"{last['latency_ms']:.3f} ms"
        if last["ok"]
        else f"trial {last['trial']:>3}{label}: FAILED ({last['error']})"
    )
    best = f"{p.best_compression:.1f}x" if p.best_compression else "-"
    return f"{what} | failed {p.failed} | front {p.front_size} | best size within {drop_label}: {best}"


class ProgressLine:
    """One line per stage start and per finished evaluation -- baseline, pre-pass, trials, refine,
    held-out -- with counts, elapsed and remaining time. On a terminal the line is rewritten in place,
    a new one starts with each stage and a failure keeps its own line; `end()` closes the last."""

    def __init__(self, drop_label: str = "1 pp", stream: Any = None) -> None:
        self.drop_label = drop_label
        self.out = stream or sys.stdout
        self.tty = self.out.isatty()
        self.stage: str | None = None

    def __call__(self, p: Progress) -> None:
        count = f"{p.done:>3}/{p.target}" if p.target else f"{p.done:>3}"
        line = (
            f"[{p.stage} {count}] {_what(p, self.drop_label)} | {fmt_seconds(p.elapsed_s)} elapsed, "
            f"~{fmt_seconds(p.remaining_s)} left"
        )
        if not self.tty:
            self.out.write(line + "\n")
        else:
            failed = bool(p.last) and not p.last.get("ok", True)
            fresh = self.stage is None or self.stage != p.stage or failed
            self.out.write(("\n" if fresh and self.stage is not None else "\r\033[K") + line)
            if failed:
                self.out.write("\n")
                self.stage = None
            else:
                self.stage = p.stage
        self.out.flush()

    def end(self) -> None:
        if self.tty and self.stage is not None:
            self.out.write("\n")
            self.out.flush()
        self.stage = None


def progress_printer(drop_label: str = "1 pp", stream: Any = None) -> ProgressLine:
    """The CLI's live progress line (ProgressLine)."""
    return ProgressLine(drop_label, stream)


def front_table(result: SearchResult) -> str:
    """The baseline line and the Pareto front as text (accuracy and drop in %)."""
    b = result.baseline
    lines = [
        f"baseline: accuracy {b.accuracy * 100:.2f}%, {b.size_bytes} B, {b.latency_ms:.3f} ms at batch "
        f"{b.batch_size} on {b.device} ({b.threads} thread{'s' if b.threads != 1 else ''}), {b.macs} MACs"
    ]
    front = result.pareto
    if front.empty:
        lines.append("no feasible trial yet")
        return "\n".join(lines)
    cols = [
        "trial",
        "stage",
        "accuracy",
        "accuracy_drop",
        "size_bytes",
        "compression",
        "latency_ms",
        "speedup",
        "macs",
        "runtime",
    ]
    table = front[cols].copy()
    table["accuracy"] = (table["accuracy"] * 100).round(2)
    table["accuracy_drop"] = (table["accuracy_drop"] * 100).round(2)
    if front["drop_high"].notna().any():
        table.insert(4, "drop_95%", [interval(lo, hi) for lo, hi in zip(front["drop_low"], front["drop_high"])])
    if front["test_accuracy"].notna().any():
        at = table.columns.get_loc("size_bytes")
        table.insert(at, "test_acc", (front["test_accuracy"] * 100).round(2))
        table.insert(at + 1, "test_drop", (front["test_drop"] * 100).round(2))
        table.insert(
            at + 2, "test_95%", [interval(lo, hi) for lo, hi in zip(front["test_drop_low"], front["test_drop_high"])]
        )
    slower = (table["compression"] > 1) & (table["speedup"] < 1)
    table["note"] = ["smaller but slower" if s else "" for s in slower]
    runtime = (result.study.user_attrs.get(StudyAttr.RUNTIME) or {}).get("runtime", "float")
    lines.append(
        f"Pareto front ({len(front)} trials; accuracy and drop in %; latency on the study's runtime, {runtime}):"
    )
    lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if splits_line(result):
        lines.append(splits_line(result) + "; intervals: paired 95 % of the drop, in pp")
    if slower.any():
        lines.append(
            f"smaller but slower: {int(slower.sum())} front trial(s) are smaller than the baseline but slower "
            f"on {runtime} (sparsity and sub-8-bit codes shrink the file, not the dense kernels' work)."
        )
    return "\n".join(lines)
