"""Misbehaving commands and calls for the harness's own tests: each fails with a proper one-line
error, but first does one thing the harness must catch."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from autoshrink.errors import ConfigError


def misbehave(how: str) -> None:
    if how == "home":
        (Path.home() / ".cache" / "probe").mkdir(parents=True)
    elif how == "tmp":
        (Path(tempfile.gettempdir()) / "ray" / "session_latest").mkdir(parents=True)
    elif how == "stdout":
        print("progress: 10 %")
    elif how == "memory":
        block = torch.ones(300 * 2**20 // 4)  # 300 MiB of float32, touched
        assert float(block[-1]) == 1.0
    elif how.startswith("sibling="):
        Path(how.removeprefix("sibling=")).with_name("sibling.txt").write_text("x")
    elif how == "mode":
        os.chmod("input.yaml", 0o600)


def main(argv: list[str]) -> int:
    misbehave(argv[0])
    print("autoshrink: error: probe: refused.", file=sys.stderr)
    return 2


def call(how: str) -> None:
    misbehave(how)
    raise ConfigError("probe: refused.")
