"""Shared CLI output: the live progress line and the Pareto table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ..report.splits import interval, splits_line
from ..search import Progress, SearchResult
from ..search.study.schema import StudyAttr


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def progress_printer(drop_label: str = "1 pp", stream: Any = None) -> Callable[[Progress], None]:
    """One line per finished trial: done/failed, the front size, the best size within the drop,
    elapsed and remaining time. On a terminal the line is rewritten in place."""
    out = stream or sys.stdout
    tty = out.isatty()

    def show(p: Progress) -> None:
        last = p.last
        what = (
            f"trial {last['trial']:>3}: acc {last['accuracy'] * 100:5.2f}% {last['size_bytes']:>8} B "
            f"{last['latency_ms']:.3f} ms"
            if last["ok"]
            else f"trial {last['trial']:>3}: FAILED ({last['error']})"
        )
        best = f"{p.best_compression:.1f}x" if p.best_compression else "-"
        line = (
            f"[{p.done:>3}/{p.target}] {what} | failed {p.failed} | front {p.front_size} | best size within "
            f"{drop_label}: {best} | {fmt_seconds(p.elapsed_s)} elapsed, ~{fmt_seconds(p.remaining_s)} left"
        )
        if tty and last["ok"]:
            out.write("\r\033[K" + line)
            if p.done >= p.target:
                out.write("\n")
        else:
            out.write(("\n" if tty else "") + line + "\n")
        out.flush()

    return show


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
