"""Progress from the Python API: a tqdm bar per stage on a terminal or in a notebook, nothing elsewhere.

`search(progress=None)` (the default) shows the bars where a person watches -- stderr is a terminal or
the code runs in a Jupyter kernel -- and stays silent in scripts, logs and tests; `progress=True` shows
them anyway, `progress=False` never; a callable gets every Progress instead (programs, the CLI line).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .context import Progress

LABELS = {
    "baseline": "baseline",
    "pre-pass": "pre-pass",
    "trials": "trials",
    "refine": "refine",
    "held-out": "held-out",
}


def in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    ip = get() if get is not None else None
    return ip is not None and hasattr(ip, "kernel")


def interactive() -> bool:
    """A person is watching: stderr is a terminal, or this is a notebook."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) or in_notebook()


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressBars:
    """One tqdm bar per stage (closed when the next stage starts and at `close`)."""

    def __init__(self, notebook: bool | None = None) -> None:
        if notebook if notebook is not None else in_notebook():
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        self._tqdm = tqdm
        self._bar: Any = None
        self._stage: str | None = None

    def __call__(self, p: Progress) -> None:
        if p.stage != self._stage:
            self.close()
            self._stage = p.stage
            self._bar = self._tqdm(
                total=p.target or None,
                desc=p.stage,
                unit="trial" if p.stage in ("trials", "refine") else "eval",
                file=sys.stderr,
                ncols=shutil.get_terminal_size((100, 24)).columns,  # an unsized terminal reports 0 columns
                leave=True,
            )
        bar = self._bar
        if p.target and bar.total != p.target:
            bar.total = p.target
        if p.done > bar.n:
            bar.update(p.done - bar.n)
        bar.set_postfix_str(postfix(p), refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._stage = None


def postfix(p: Progress) -> str:
    """What a bar shows beside its count: the last evaluation, the front, the time left."""
    parts = []
    last = p.last
    if p.stage == "pre-pass" and last:
        what = f"{last['layer']} {last['field']} {last['value']:g}"
        parts.append(f"{what}: drop {last['accuracy_drop'] * 100:.2f} pp" if last.get("ok") else f"{what}: failed")
    if p.stage in ("trials", "refine"):
        parts.append(f"front {p.front_size}")
        if p.best_compression:
            parts.append(f"best {p.best_compression:.1f}x")
        if p.failed:
            parts.append(f"failed {p.failed}")
    if p.remaining_s is not None:
        parts.append(f"~{fmt_seconds(p.remaining_s)} left")
    return " | ".join(parts)


def resolve(progress: Any, where: str) -> Callable[[Progress], None] | None:
    """The progress display a search or refine uses (see the module docstring)."""
    if progress is False:
        return None
    if progress is True:
        return ProgressBars()
    if progress is None:
        return ProgressBars() if interactive() else None
    if callable(progress):
        return progress
    raise ConfigError(
        f"{where}: progress={progress!r}; use None (bars where a person watches), True, False, or a callable "
        "taking a Progress."
    )


def close(display: Callable[[Progress], None] | None) -> None:
    """Close a display this module made (a caller's callable is left alone)."""
    if isinstance(display, ProgressBars):
        display.close()
