"""search(max_latency_ms=...): a constraint on the measured latency, and candidates the lookup table
predicts clearly over it are not run (search/latency_limit.py)."""

from __future__ import annotations

import optuna
import pytest

import autoshrink as ash
from autoshrink.cli import main
from autoshrink.search import load_result
from autoshrink.search.stages.latency_limit import SKIP_MARGIN, skip_margin, skip_reason
from autoshrink.zoo import digits_task

from .test_latency_records import AdditiveStub

LIMIT = 0.5  # ms; the stub's untouched model takes 1.1 ms (0.3 + 0.4 per 32-bit dense layer)


class Recording(AdditiveStub):
    """The additive stub, remembering which trials it evaluated."""

    def __init__(self) -> None:
        super().__init__()
        self.evaluated: list[int] = []

    def wait(self, timeout=None):
        out = super().wait(timeout)
        self.evaluated += [o.key for o in out]
        return out


def _search(tiny_model, tiny_space, tmp_path, ex, **kw) -> ash.SearchResult:
    return ash.search(
        tiny_model,
        digits_task(device="cpu"),
        tiny_space,
        n_trials=40,
        executor=ex,
        seed=0,
        storage=f"sqlite:///{tmp_path}/lim.db",
        study_name="lim",
        objectives=("accuracy", "size", "latency"),
        sensitivity=False,
        screen=False,
        finetune_steps=5,
        sampler="random",
        **kw,
    )


def test_latency_limit_skips_predicted_slow_candidates_and_keeps_slow_trials_off_the_front(
    tiny_model, tiny_space, tmp_path
) -> None:
    ex = Recording()
    r = _search(tiny_model, tiny_space, tmp_path, ex, max_latency_ms=LIMIT)
    trials = r.study.trials
    skipped = [t for t in trials if "predicted latency" in str(t.user_attrs.get("skipped"))]
    assert skipped, "the stub's space has many candidates far over 0.5 ms: some must be skipped"
    for t in skipped:  # PRUNED, never evaluated, predicted over the limit by more than the margin
        assert t.state == optuna.trial.TrialState.PRUNED and t.number not in ex.evaluated
        assert t.user_attrs["latency_predicted_ms"] > LIMIT * (1 + SKIP_MARGIN)
        assert "measurement" not in t.user_attrs
    for t in trials:  # everything predicted within the margin ran
        pred = t.user_attrs.get("latency_predicted_ms")
        if pred is not None and pred <= LIMIT * (1 + SKIP_MARGIN):
            assert t.number in ex.evaluated
    # skipped candidates count towards n_trials like every finished candidate
    assert len(trials) == 40  # baselines included, as without a limit
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    for t in done:  # the Optuna constraint: measured / limit - 1
        assert t.system_attrs["constraints:latency"] == pytest.approx(
            t.user_attrs["measurement"]["latency_ms"] / LIMIT - 1
        )
    over = {t.number for t in done if t.user_attrs["measurement"]["latency_ms"] > LIMIT}
    assert over, "the baselines (1.1 ms untouched) are over the limit"
    front = r.pareto
    assert len(front) and (front.latency_ms <= LIMIT).all() and not over & set(front.trial)
    pick = r.best(max_accuracy_drop=1.0, minimize="size")
    assert pick.metrics.latency_ms <= LIMIT
    assert r.best(max_accuracy_drop=1.0, minimize="size", max_latency_ms=10.0).trial is not None
    with pytest.raises(
        ash.ConfigError,
        match=r"no trial within 100.00 pp runs in 0.01 ms or less; the fastest is "
        r"trial \d+ at [0-9.]+ ms\. Relax max_latency_ms",
    ):
        r.best(max_accuracy_drop=1.0, max_latency_ms=0.01)
    again = load_result("lim", f"sqlite:///{tmp_path}/lim.db")  # the limit is stored with the study
    assert again.max_latency_ms == LIMIT and list(again.pareto.trial) == list(front.trial)
    # the CLI: export honours the stored limit, --max-latency-ms overrides it
    storage, out = f"sqlite:///{tmp_path}/lim.db", tmp_path / "r.yaml"
    assert main(["export", "lim", "--storage", storage, "--max-accuracy-drop", "1", "-o", str(out)]) == 0
    assert ash.Recipe.load(out).metrics.latency_ms <= LIMIT
    assert (
        main(
            [
                "export",
                "lim",
                "--storage",
                storage,
                "--max-accuracy-drop",
                "1",
                "--max-latency-ms",
                "0.01",
                "-o",
                str(tmp_path / "none.yaml"),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "export",
                "lim",
                "--storage",
                storage,
                "--trial",
                "3",
                "--max-latency-ms",
                "1",
                "-o",
                str(tmp_path / "none.yaml"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "none.yaml").exists()


def test_without_a_limit_nothing_is_skipped(tiny_model, tiny_space, tmp_path) -> None:
    r = _search(tiny_model, tiny_space, tmp_path, Recording())
    assert not any(t.user_attrs.get("skipped") for t in r.study.trials)
    assert r.max_latency_ms is None and not any("constraints:latency" in t.system_attrs for t in r.study.trials)


@pytest.mark.parametrize(
    "value, message",
    [
        (0, r"max_latency_ms=0; use a latency in milliseconds > 0"),
        (-1.0, r"max_latency_ms=-1.0; use"),
        (float("nan"), r"max_latency_ms=nan; use"),
        (float("inf"), r"max_latency_ms=inf; use"),
        (True, r"max_latency_ms=True; use"),
        ("1", r"max_latency_ms='1'; use"),
    ],
)
def test_bad_limits_are_refused_before_a_study_exists(tiny_model, tiny_space, tmp_path, value, message) -> None:
    with pytest.raises(ash.ConfigError, match=message):
        _search(tiny_model, tiny_space, tmp_path, Recording(), max_latency_ms=value)
    assert not (tmp_path / "lim.db").exists()


def test_a_limit_needs_the_latency_objective(tiny_model, tiny_space, tmp_path) -> None:
    with pytest.raises(ash.ConfigError, match=r"max_latency_ms needs 'latency' among the objectives"):
        ash.search(
            tiny_model,
            digits_task(device="cpu"),
            tiny_space,
            n_trials=2,
            executor=Recording(),
            storage=f"sqlite:///{tmp_path}/x.db",
            study_name="x",
            objectives=("accuracy", "size"),
            max_latency_ms=1.0,
        )
    assert not (tmp_path / "x.db").exists()


def test_skip_rule_and_margin_from_checked_predictions(tmp_path) -> None:
    assert skip_reason(1.49, 1.0, 0.5) is None and skip_reason(None, 1.0, 0.5) is None
    assert skip_reason(9.0, None, 0.5) is None
    assert skip_reason(1.51, 1.0, 0.5) == (
        "not run: predicted latency 1.51 ms (lookup table, sum rule) is over the "
        "limit max_latency_ms=1 by more than the table's margin (50 %)"
    )
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/m.db", study_name="m")

    def add(pred: float, measured: float) -> None:
        t = study.ask()
        t.set_user_attr("latency_predicted_ms", pred)
        t.set_user_attr("measurement", {"latency_ms": measured})
        study.tell(t, 0.0)

    for _ in range(4):  # fewer than MIN_CHECKED checked predictions: the fixed margin
        add(2.0, 1.0)
    assert skip_margin(study) == SKIP_MARGIN
    for _ in range(6):  # ten predictions 100 % off: the margin follows the table's error
        add(2.0, 1.0)
    assert skip_margin(study) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("max_latency_ms: -1\n", r"s.yaml:4: max_latency_ms: got -1; use a latency in milliseconds > 0"),
        ("max_latency_ms: .nan\n", r"s.yaml:4: max_latency_ms: got nan; use a latency in milliseconds > 0"),
        (
            "objectives: [accuracy, size]\nmax_latency_ms: 2\n",
            r"s.yaml:5: max_latency_ms: needs 'latency' among the objectives",
        ),
    ],
)
def test_study_config_limits_are_checked_at_load(tmp_path, extra, message) -> None:
    from autoshrink.search.study_config import load_study_config

    p = tmp_path / "s.yaml"
    p.write_text("name: s\nmodel: autoshrink.zoo:digits_model\ntask: autoshrink.zoo:digits_task\n" + extra)
    with pytest.raises(ash.ConfigError, match=message):
        load_study_config(p)


def test_study_config_passes_the_limit(tmp_path) -> None:
    from autoshrink.search.study_config import load_study_config

    p = tmp_path / "s.yaml"
    p.write_text(
        "name: s\nmodel: autoshrink.zoo:digits_model\ntask: autoshrink.zoo:digits_task\nmax_latency_ms: 0.25\n"
    )
    assert load_study_config(p).settings.max_latency_ms == 0.25
