"""The `autoshrink` command: one module per subcommand, each adding its own parser."""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import NoReturn

from ..errors import AutoshrinkError, Terminated
from ..techniques import CompressionWarning
from ..version import __version__
from . import dashboard, demo, recipes, report, search, sensitivity, walkthrough
from .signals import SignalGuard, restore

COMMANDS = (demo, search, sensitivity, recipes, walkthrough, dashboard, report)
BUG_REPORTS = "the autoshrink issue tracker of the repository you installed it from"


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (exit 2), like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"autoshrink: error: {self.prog}: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="autoshrink", description="Automated per-layer model compression.")
    parser.add_argument("--version", action="version", version=f"autoshrink {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


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
        names = ", ".join(sub.choices) if (sub := _subcommands(parser)) else ""
        print(
            f"autoshrink: error: no command given; use one of {names} (`autoshrink --help` says what each "
            "does; `autoshrink demo` is a first run).",
            file=sys.stderr,
        )
        return 2
    previous = SignalGuard().install()
    try:
        return int(args.func(args) or 0)
    except AutoshrinkError as exc:
        print(f"autoshrink: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoshrink: interrupted (SIGINT){_resume_hint(args)}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"autoshrink: terminated (SIGTERM){_resume_hint(args)}", file=sys.stderr)
        return 143
    except Exception:  # not a user error: a bug -- the traceback, and where to send it
        traceback.print_exc()
        print(
            f"autoshrink: internal error: this is a bug in autoshrink {__version__}, not in your input; please "
            f"report it with the traceback above and the command you ran ({BUG_REPORTS}).",
            file=sys.stderr,
        )
        return 1
    finally:
        restore(previous)


def _resume_hint(args: argparse.Namespace) -> str:
    if getattr(args, "command", None) == "search":
        return "; the running trials were failed and queued again: run the same command to resume."
    return "."


if __name__ == "__main__":
    sys.exit(main())
