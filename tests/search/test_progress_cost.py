"""Where a search's seconds go (the cost split of every evaluation) and its progress from the first second."""

from __future__ import annotations

import fcntl
import math
import os
import pty
import select
import statistics
import struct
import subprocess
import sys
import termios
import textwrap

import pytest

import autoshrink as ash
from autoshrink.errors import ConfigError
from autoshrink.measure.cost import COLUMNS, STAGES
from autoshrink.zoo import digits_task

from .conftest import FAST


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("progress")
    space = tmp / "tiny.yaml"
    space.write_text("defaults:\n  sparsity: [0.0, 0.5]\n  bits: [32, 4]\nfinetune: {steps: 5}\n")
    seen = []
    result = ash.search(
        tiny_model,
        digits_task(device="cpu").with_holdout(0.5),
        ash.load_space(space),
        n_trials=6,
        refine_top=1,
        refine_steps=6,
        storage=f"sqlite:///{tmp}/p.db",
        study_name="p",
        latency=FAST,
        max_accuracy_drop=0.05,
        progress=seen.append,
        sensitivity="full",
    )
    return result, seen


def test_stages_report_in_order_with_counts(run) -> None:
    result, seen = run
    stages = [p.stage for p in seen]
    order = list(dict.fromkeys(stages))
    assert order == ["runtime", "baseline", "pre-pass", "trials", "refine", "held-out"]  # runtime: "auto"
    assert stages == sorted(stages, key=order.index)  # each stage reports in one run, never interleaved
    rows = result.study.user_attrs["sensitivity"]["rows"]
    pre = [p for p in seen if p.stage == "pre-pass"]
    assert [p.done for p in pre] == list(range(len(rows) + 1)) and {p.target for p in pre} == {len(rows)}
    assert pre[0].last == {} and pre[0].remaining_s is None and pre[-1].remaining_s == 0.0
    assert {(p.last["layer"], p.last["field"], p.last["value"]) for p in pre[1:]} == {
        (r["layer"], r["field"], r["value"]) for r in rows
    }
    trials = [p for p in seen if p.stage == "trials"]
    assert trials[0].done == 0 and trials[0].last == {} and trials[-1].done == 6
    assert {p.last["stage"] for p in trials[1:]} <= {"baseline", "warm-start", "search"}
    refine = [p for p in seen if p.stage == "refine"]
    assert [p.done for p in refine] == list(range(len(refine))) and refine[-1].done == refine[-1].target
    held = [p for p in seen if p.stage == "held-out"]
    assert held[-1].done == held[-1].target == result.timing["held_out_points"]


def test_every_evaluation_records_where_its_seconds_went(run) -> None:
    result, _ = run
    df = result.trials
    done = df[df["state"] == "COMPLETE"]
    assert len(done) >= 6
    covered = []
    for r in done.itertuples():
        split = [getattr(r, c) for c in COLUMNS]
        assert all(s >= 0 for s in split)
        assert sum(split) <= r.eval_s + 1e-3  # the stages are timed inside the evaluation's clock
        covered.append(sum(split) / r.eval_s)
    # the stages cover the evaluation: judged on the median row, since one evaluation of ~20 ms can lose a
    # few ms between stages to a busy machine (a preempted or garbage-collecting worker), while a stage
    # missing from the split lowers every row
    assert statistics.median(covered) >= 0.9, covered
    for r in done.itertuples():
        assert r.apply_s > 0 and r.pack_s > 0 and r.evaluate_s > 0 and r.latency_s > 0
        assert (r.finetune_s > 0) == (r.finetune_steps > 0 and r.compression > 1)
    rows = result.study.user_attrs["sensitivity"]["rows"]
    assert all(r["finetune_s"] == 0 and r["pack_s"] > 0 for r in rows)  # single choices: no fine-tune
    total = result.timing["cost"]
    assert list(total) == list(STAGES)
    expected = {s: result.baseline.cost[s] + sum(r[f"{s}_s"] for r in rows) + done[f"{s}_s"].sum() for s in STAGES}
    screened = df[(df["state"] == "PRUNED") & df["apply_s"].notna()]
    for s in STAGES:
        expected[s] += screened[f"{s}_s"].sum()
        assert math.isclose(total[s], expected[s], abs_tol=5e-3), s


def test_progress_false_prints_nothing_and_a_bad_value_is_refused(tiny_model, tmp_path, capfd) -> None:
    kwargs = dict(n_trials=1, sensitivity=False, storage=f"sqlite:///{tmp_path}/q.db", latency=FAST)
    space = ash.load_space("default")
    with pytest.raises(ConfigError, match=r"progress='yes'.*None .*True, False, or a callable"):
        ash.search(tiny_model, digits_task(device="cpu"), space, progress="yes", **kwargs)
    capfd.readouterr()
    ash.search(tiny_model, digits_task(device="cpu"), space, progress=False, study_name="q", **kwargs)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


SCRIPT = textwrap.dedent(
    """
    import sys, torch
    import autoshrink as ash
    from autoshrink.zoo import digits_model, digits_task
    torch.manual_seed(0)
    model = digits_model("mlp", steps=100)
    space = ash.load_space(sys.argv[2])
    print("START", flush=True)
    ash.search(model, digits_task(device="cpu"), space, n_trials=2,
               storage=sys.argv[1], study_name="t", latency=ash.LatencyConfig(warmup=1, min_repeats=2, min_seconds=0.0))
    print("END", flush=True)
    """
)


def _run_on(tmp_path, terminal: bool) -> str:
    """Run SCRIPT with stderr on a pseudo-terminal (or a pipe); all it wrote, stdout and stderr."""
    space = tmp_path / "bits.yaml"
    space.write_text("defaults:\n  bits: [32, 4]\nfinetune: {steps: 2}\n")
    args = [sys.executable, "-c", SCRIPT, f"sqlite:///{tmp_path}/t{int(terminal)}.db", str(space)]
    if not terminal:
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True)
        return done.stdout + done.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen(args, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 600)
        if not ready:
            proc.kill()
            raise AssertionError("the search under a terminal wrote nothing for 600 s")
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace")


def test_default_progress_shows_bars_on_a_terminal_and_stays_silent_in_a_pipe(tmp_path) -> None:
    shown = _run_on(tmp_path, terminal=True)
    body = shown[shown.index("START") : shown.index("END")]
    for stage in ("runtime", "baseline", "pre-pass", "trials"):
        assert f"{stage}:" in body, f"no {stage} bar on the terminal"
    assert body.index("pre-pass:") < body.index("trials:")
    piped = _run_on(tmp_path, terminal=False)
    assert piped.split() == ["START", "END"]  # scripts and logs: nothing but what the program printed
