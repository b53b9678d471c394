"""Errors raised by autoshrink.

Every error names what was wrong (the field or layer), the value received and the fix.
User-input errors also subclass ValueError or TypeError so generic handlers still work.
"""

from __future__ import annotations

import math


class AutoshrinkError(Exception):
    """Base class of every error autoshrink raises on purpose."""


class ConfigError(AutoshrinkError, ValueError):
    """A setting, policy or file holds a value autoshrink cannot use."""


class ExportError(ConfigError):
    """A model cannot be written as ONNX (an operator the exporter or ONNX Runtime lacks, a bad input)."""


class PolicyError(ConfigError):
    """A policy is invalid or does not fit the model it is applied to."""


class TaskError(ConfigError):
    """A Task is malformed (data, metric, loss, example input)."""


class RecipeError(ConfigError):
    """A recipe file is malformed, was modified, or does not fit the model it is applied to."""


class TrainingError(AutoshrinkError, RuntimeError):
    """Fine-tuning could not proceed (a NaN/inf loss, an empty dataset, ...)."""


class StorageError(AutoshrinkError, RuntimeError):
    """The study storage failed while a command used it (disk full, I/O error, the server gone): what
    was told before is kept; the message says how to resume."""


class Terminated(BaseException):
    """SIGTERM arrived (the CLI turns it into this, like SIGINT into KeyboardInterrupt): a BaseException,
    so a candidate's error handling never swallows it and the search unwinds as on Ctrl-C."""


class PackError(AutoshrinkError, ValueError):
    """A packed artifact (.ashz) cannot be written or read."""


def describe(value: object, limit: int = 80) -> str:
    """Short repr of a user value for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finite_number(value: object) -> bool:
    """A real number (not a bool) that is finite; False, never OverflowError, for a 400-digit integer."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class ExecutorUnavailable(ConfigError):
    """An executor cannot run here (Ray cannot start or join, or the requested resources do not exist)."""
