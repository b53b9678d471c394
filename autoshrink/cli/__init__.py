"""The `autoshrink` command: one module per subcommand, each adding its own parser."""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from .. import __version__
from ..errors import AutoshrinkError
from ..techniques import CompressionWarning
from . import dashboard, demo, recipes, report, search, sensitivity, walkthrough

COMMANDS = (demo, search, sensitivity, recipes, walkthrough, dashboard, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoshrink", description="Automated per-layer model compression.")
    parser.add_argument("--version", action="version", version=f"autoshrink {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """autoshrink's own warnings as one plain line; others in Python's usual format."""
    if issubclass(category, CompressionWarning):
        print(f"autoshrink: warning: {message}", file=file or sys.stderr)
    else:
        _default_show(message, category, filename, lineno, file, line)


_default_show = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors are one line on stderr with exit code 2, never a traceback."""
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AutoshrinkError as exc:
        print(f"autoshrink: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoshrink: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
