from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from autoshrink.cli import main


def test_help_for_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0 and "--steps" in capsys.readouterr().out


def test_demo_prints_a_measured_table(capsys) -> None:
    assert main(["demo", "--steps", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    rows = lines[start : lines.index("", start) if "" in lines[start:] else len(lines)]
    assert len(rows) == 10  # baseline + 9 policies
    assert all(row.split()[-1].isdigit() for row in rows)  # every row ends with its measured MACs
    assert "baseline (float32, untouched)" in out and "structured 50% channels + KD" in out


def test_demo_json(capsys) -> None:
    assert main(["demo", "--steps", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 9 and data["baseline"]["macs"] == 1330432
    assert all(r["size_bytes"] < data["baseline"]["size_bytes"] for r in data["rows"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_user_error_is_one_line_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "autoshrink.cli", "demo", "--device", "cuda"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("autoshrink: error: Task.device")
    assert "Traceback" not in proc.stderr
