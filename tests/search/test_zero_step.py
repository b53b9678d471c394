"""The zero-step rung of multi-fidelity screening: evaluate without fine-tune, then screen, then full."""

from __future__ import annotations

import pytest

import autoshrink as ash
from autoshrink.measure import Measurement
from autoshrink.search import Screening
from autoshrink.zoo import digits_task

from .conftest import FAST


def m(accuracy: float) -> Measurement:
    return Measurement(accuracy=accuracy, size_bytes=1, latency_ms=1.0, macs=1, device="cpu", threads=1, batch_size=1)


def test_the_rung_stops_only_beyond_the_largest_recovery_seen() -> None:
    s, base = Screening(zero_step=True), m(0.9)
    assert s.promote_zero_step(m(0.5), base, None, []) == (
        True,
        "zero-step drop 40.00 pp (no max_accuracy_drop: the rung only measures)",
    )
    assert s.promote_zero_step(m(0.5), base, 0.01, [(0.1, 0.0)] * 2) == (
        True,
        "zero-step drop 40.00 pp (the rung measures until 3 candidates have both fidelities; 2 so far)",
    )
    pairs = [(0.10, 0.01), (0.05, 0.02), (0.20, 0.0)]  # recoveries 9, 3 and 20 pp: the largest counts
    how = "max_accuracy_drop + the largest recovery of 3 candidates, 20.00 pp"
    assert s.promote_zero_step(m(0.69), base, 0.01, pairs) == (True, f"zero-step drop 21.00 pp <= 21.00 pp ({how})")
    assert s.promote_zero_step(m(0.64), base, 0.01, pairs) == (False, f"zero-step drop 26.00 pp > 21.00 pp ({how})")
    assert s.zero_step_config(ash.FinetuneConfig(steps=50, lr=0.01)) == ash.FinetuneConfig(steps=0, lr=0.01)
    with pytest.raises(ash.ConfigError, match=r"screen zero_step=1; use true or false"):
        Screening(zero_step=1)


def test_a_search_with_the_rung_evaluates_each_candidate_without_fine_tune_first(
    tiny_model, tmp_path, monkeypatch
) -> None:
    """The rule is replaced by a fixed one (stop beyond 5 pp) so the plumbing is exact whatever the
    drops: stopped candidates are PRUNED with no screen, promoted ones are screened, and the tally
    counts both."""
    monkeypatch.setattr(
        Screening, "promote_zero_step", lambda self, z, b, d, p: (b.accuracy - z.accuracy <= 0.05, "fixed")
    )
    (tmp_path / "s.yaml").write_text("defaults:\n  bits: [32, 8, 3, 2]\n  sparsity: [0.0, 0.9]\nfinetune: {steps: 4}\n")
    r = ash.search(
        tiny_model,
        digits_task(device="cpu"),
        ash.load_space(tmp_path / "s.yaml"),
        n_trials=12,
        storage=f"sqlite:///{tmp_path}/z.db",
        study_name="z",
        latency=FAST,
        objectives=("accuracy", "size"),
        runtime="float",
        seed=0,
        sensitivity=False,
        max_accuracy_drop=0.02,
        screen={"share": 0.5, "zero_step": True},
        progress=False,
    )
    assert r.study.user_attrs["screen"]["zero_step"] is True
    rung = [t for t in r.study.trials if "zero_step" in t.user_attrs]
    assert rung and all(t.user_attrs["stage"] != "baseline" for t in rung)
    stopped = [t for t in rung if t.user_attrs["zero_step"]["decision"] == "stopped"]
    promoted = [t for t in rung if t.user_attrs["zero_step"]["decision"] == "promoted"]
    base = r.baseline.accuracy
    for t in rung:
        drop = base - t.user_attrs["zero_step"]["measurement"]["accuracy"]
        assert (drop <= 0.05) == (t in promoted)
    assert all(t.state.name == "PRUNED" and "screen" not in t.user_attrs for t in stopped)
    assert all("screen" in t.user_attrs for t in promoted)
    assert r.timing["screening"]["zero_step"]["stopped"] == len(stopped)
    assert r.timing["screening"]["zero_step"]["promoted"] == len(promoted)
    rows = r.trials.set_index("trial")
    for t in stopped:  # its cost is the zero-step evaluation's
        assert rows.loc[t.number, "eval_s"] == pytest.approx(t.user_attrs["zero_step"]["seconds"], abs=1e-3)
