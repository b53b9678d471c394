"""Sensitivity pre-pass, narrowed space, warm start and multi-fidelity screening."""

from __future__ import annotations

import copy
import dataclasses

import optuna
import pytest
import torch

import autoshrink as ash
from autoshrink.executors import LocalExecutor, Outcome
from autoshrink.measure import Measurement, RuntimeTiming
from autoshrink.search.objectives import OBJECTIVES
from autoshrink.search.stages.fidelity import Screening
from autoshrink.search.stages.narrow import narrow, narrow_cutoff
from autoshrink.search.stages.sensitivity import FIRST_KEY
from autoshrink.search.stages.warmstart import Combo, allocate, compounded, layer_combos, warm_start_params
from autoshrink.search.tell import twin_verdict
from autoshrink.space import bind
from autoshrink.zoo import digits_task

from .conftest import FAST

L = ash.LayerPolicy


@pytest.fixture(scope="module")
def trap_model(tiny_model):
    """The tiny MLP with one huge weight per fc1 row on input pixel 0, which is 0 in every digits image:
    the function is unchanged, but at 2 bits each row's scale is that weight and every other weight of
    fc1 rounds to 0 -- fc1 at 2 bits is catastrophic, every other choice harmless."""
    assert bool((digits_task(device="cpu").train_data.tensors[0].flatten(1)[:, 0] == 0).all())
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.fc1.weight[:, 0] = 10 * model.fc1.weight.abs().amax(dim=1)
    return model


@pytest.fixture
def trap_space(tmp_path):
    p = tmp_path / "trap.yaml"
    p.write_text(
        "defaults:\n  sparsity: [0.0, 0.5]\n  bits: [32, 8]\nrules:\n  - match: fc1\n    bits: [32, 8, 2]\n"
        "distill: [false]\nfinetune: {steps: 4}\n"
    )
    return ash.load_space(p)


def test_the_table_shows_the_catastrophic_choice_and_narrowing_drops_exactly_it(trap_model, trap_space) -> None:
    task = digits_task(device="cpu")
    table = ash.sensitivity(trap_model, task, trap_space, latency=FAST)
    got = {(r.layer, r.field, r.value) for r in table.itertuples()}
    assert got == {
        ("fc1", "sparsity", 0.5),
        ("fc1", "bits", 8),
        ("fc1", "bits", 2),
        ("fc2", "sparsity", 0.5),
        ("fc2", "bits", 8),
    }
    drops = {(r.layer, r.field, r.value): r.accuracy_drop for r in table.itertuples()}
    assert drops[("fc1", "bits", 2)] > 0.5  # near chance: the model is broken by this one choice
    assert max(v for k, v in drops.items() if k != ("fc1", "bits", 2)) < 0.05
    assert (table.bytes_saved > 0).all() and (table.macs_saved == 0).all() and table.error.isna().all()
    base = ash.Measurement.from_dict(table.attrs["baseline"])
    row = table[(table.layer == "fc1") & (table.field == "bits") & (table.value == 8)].iloc[0]
    assert row.bytes_saved == base.size_bytes - row.size_bytes and row.accuracy_drop == base.accuracy - row.accuracy
    bound = bind(trap_space, trap_model)
    narrowed, removed = narrow(bound, table.to_dict("records"), narrow_cutoff(0.01))
    assert [(r["layer"], r["field"], r["value"]) for r in removed] == [("fc1", "bits", 2)]
    assert narrowed.layers["fc1"]["bits"].values == (32, 8) and narrowed.layers["fc2"] == bound.layers["fc2"]
    assert "alone it costs" in removed[0]["reason"] and removed[0]["accuracy_drop"] == drops[("fc1", "bits", 2)]


def test_narrow_cutoff_values() -> None:
    # max(20 x constraint, 35 pp); 1 pp stands in for no constraint; an override wins
    assert narrow_cutoff(0.005) == 0.35 and narrow_cutoff(None) == 0.35 and narrow_cutoff(0.01) == 0.35
    assert narrow_cutoff(0.02) == pytest.approx(0.40, abs=1e-15) and narrow_cutoff(0.005, 0.1) == 0.1


def test_search_narrows_stores_the_prepass_and_a_resume_does_not_repeat_it(trap_model, trap_space, tmp_path) -> None:
    class Counting(LocalExecutor):
        prepass = 0

        def submit(self, key, policy, finetune=None, **kw):
            Counting.prepass += key <= FIRST_KEY
            super().submit(key, policy, finetune, **kw)

    kw = dict(
        storage=f"sqlite:///{tmp_path}/n.db",
        study_name="n",
        latency=FAST,
        objectives=("accuracy", "size"),
        sensitivity="full",
    )
    r = ash.search(trap_model, digits_task(device="cpu"), trap_space, n_trials=6, executor=Counting(), **kw)
    attrs = r.study.user_attrs
    assert Counting.prepass == 5 and len(attrs["sensitivity"]["rows"]) == 5 and r.timing["sensitivity_s"] > 0
    assert [(x["layer"], x["field"], x["value"]) for x in attrs["narrowed"]] == [("fc1", "bits", 2)]
    assert all(t.params.get("fc1.bits") != 2 for t in r.study.trials)
    again = ash.search(trap_model, digits_task(device="cpu"), trap_space, n_trials=9, executor=Counting(), **kw)
    assert Counting.prepass == 5 and again.timing["sensitivity_s"] == 0.0 and len(again.study.trials) == 9
    with pytest.raises(ash.ConfigError, match="different search setup.*narrow_cutoff"):
        ash.search(trap_model, digits_task(device="cpu"), trap_space, n_trials=10, **{**kw, "sensitivity": False})


def _combo(drop: float, nbytes: float, **kw) -> Combo:
    return Combo(
        sparsity=kw.get("s", 0.0),
        structured=False,
        bits=kw.get("b", 32),
        rank=1.0,
        drop=drop,
        bytes=nbytes,
        macs=0.0,
        latency=0.0,
    )


def test_allocation_respects_the_budget_and_prefers_the_less_sensitive_layer() -> None:
    # two layers of 1000 bytes; compressing "sensitive" to 100 B costs 5 pp, "robust" the same for 0.1 pp
    combos = {
        "sensitive": [_combo(0.0, 1000), _combo(0.01, 400, b=8), _combo(0.05, 100, b=2)],
        "robust": [_combo(0.0, 1000), _combo(0.0005, 400, b=8), _combo(0.001, 100, b=2)],
    }
    for budget, expected in (
        (2000, (1000, 1000)),
        (1500, (1000, 400)),
        (1100, (1000, 100)),
        (800, (400, 100)),
        (500, (400, 100)),
        (200, (100, 100)),
    ):
        alloc = allocate(combos, "bytes", budget)
        got = (alloc["sensitive"].bytes, alloc["robust"].bytes)
        assert got == expected, (budget, got)
        assert sum(got) <= budget
    assert allocate(combos, "bytes", 199) is None  # nothing fits


def test_warm_start_policies_respect_their_predicted_budgets(trap_model, trap_space) -> None:
    task = digits_task(device="cpu")
    table = ash.sensitivity(trap_model, task, trap_space, latency=FAST)
    base = ash.Measurement.from_dict(table.attrs["baseline"])
    bound, _ = narrow(bind(trap_space, trap_model), table.to_dict("records"), 0.2)
    out = warm_start_params(trap_model, bound, table.to_dict("records"), base, ["accuracy", "size"], 4)
    assert 1 <= len(out) <= 4 and len({tuple(sorted(p.items())) for p, _ in out}) == len(out)
    for params, what in out:
        assert what["budget"].startswith("size <= ") and what["predicted_size"] <= what["budget_size"]
        assert params.get("fc1.bits") != 2 and set(params) == {n for n, _ in bound.params()}
        policy = bound.policy_from_params(params)
        small = ash.apply_policy(trap_model, policy)
        measured = ash.measure(small, task, latency=FAST).size_bytes
        assert abs(measured - what["predicted_size"]) <= 0.1 * measured  # the size prediction is close


def test_warm_start_enqueues_each_allocation_with_and_without_the_teacher(trap_model, trap_space, tmp_path) -> None:
    task = digits_task(device="cpu")
    table = ash.sensitivity(trap_model, task, trap_space, latency=FAST)
    base = ash.Measurement.from_dict(table.attrs["baseline"])
    rows = table.to_dict("records")
    bound, _ = narrow(bind(trap_space, trap_model), rows, 0.2)
    single = warm_start_params(trap_model, bound, rows, base, ["accuracy", "size"], 3)
    assert all("distill" not in p for p, _ in single)  # distill: [false] -- nothing to pair
    p = tmp_path / "both.yaml"
    p.write_text((tmp_path / "trap.yaml").read_text().replace("distill: [false]", "distill: [false, true]"))
    both_space = ash.load_space(p)
    bound2, _ = narrow(bind(both_space, trap_model), rows, 0.2)
    paired = warm_start_params(trap_model, bound2, rows, base, ["accuracy", "size"], 3)
    assert [p["distill"] for p, _ in paired] == [True, False] * len(single)
    for i, ((on, what_on), (off, what_off), (alone, what)) in enumerate(zip(paired[::2], paired[1::2], single)):
        assert (
            {k: v for k, v in on.items() if k != "distill"} == alone == {k: v for k, v in off.items() if k != "distill"}
        )
        assert what_on == what_off == {**what, "allocation": i}


def test_after_one_twin_verdict_the_losing_setting_is_not_run_again(trap_model, trap_space, tmp_path) -> None:
    p = tmp_path / "both.yaml"
    p.write_text((tmp_path / "trap.yaml").read_text().replace("distill: [false]", "distill: [false, true]"))
    r = ash.search(
        trap_model,
        digits_task(device="cpu"),
        ash.load_space(p),
        n_trials=20,
        seed=0,
        latency=FAST,
        storage=f"sqlite:///{tmp_path}/tw.db",
        study_name="tw",
        objectives=("accuracy", "size"),
        screen=False,
        warm_start=4,
    )
    warm = [t for t in r.study.trials if t.user_attrs.get("stage") == "warm-start"]
    assert len(warm) >= 4
    verdict = twin_verdict(r.study, r.baseline)
    assert verdict is not None
    winner, allocation = verdict
    for t in warm:
        a, distill = t.user_attrs["warm_start"]["allocation"], t.user_attrs["policy"]["distill"]
        if a <= allocation or distill == winner:  # run: up to the verdict, and the winner after it
            assert t.state.name == "COMPLETE" and "skipped" not in t.user_attrs, t.number
        else:  # the loser after the verdict: not evaluated at all
            assert t.state.name == "PRUNED" and "measurement" not in t.user_attrs and "screen" not in t.user_attrs
            assert t.user_attrs["skipped"].startswith(
                f"not run: on warm-start allocation {allocation} distill={winner}"
            )
    assert any("skipped" in t.user_attrs for t in warm)
    assert r.trials["skipped"].notna().sum() == sum("skipped" in t.user_attrs for t in warm)
    twins = {
        bool(t.user_attrs["policy"]["distill"]): t.values[0]
        for t in warm
        if t.user_attrs["warm_start"]["allocation"] == allocation
    }
    assert (twins[True] > twins[False]) == winner


class StubExecutor:
    """Evaluates nothing: a policy's accuracy is 0.95 - 0.02 per layer at <= 4 bits - 0.01 per layer at
    sparsity >= 0.8, its size 100 bytes per untouched layer and less per compressed one, and a screen
    (fewer steps than the full fine-tune) reads 0.015 lower."""

    capacity = 1

    def __init__(self) -> None:
        self.queue: list = []
        self.full_steps = None
        self.requests: list[tuple[int, int]] = []

    def start(self, job) -> None:
        self.full_steps = job.finetune.steps

    def submit(self, key, policy, finetune=None, *, runtime=None, probe=False) -> None:
        self.queue.append((key, policy, "probe" if probe else finetune))

    @staticmethod
    def probe(key: int) -> Outcome:
        """The runtime decision (runtime="auto"): float is the faster here."""
        return Outcome(key, None, None, 0.01, "stub", timing=RuntimeTiming({"float": 1.0}, "cpu", 1))

    @staticmethod
    def accuracy(policy: ash.Policy, screened: bool) -> float:
        acc = 0.95 - sum(0.02 for lp in policy.layers.values() if lp.bits <= 4)
        acc -= sum(0.01 for lp in policy.layers.values() if lp.sparsity >= 0.8)
        return acc - (0.015 if screened else 0.0)

    def wait(self, timeout=None) -> list[Outcome]:
        if not self.queue:
            return []
        key, policy, ft = self.queue.pop(0)
        if ft == "probe":
            return [self.probe(key)]
        steps = self.full_steps if ft is None else ft.steps
        screened = 0 < steps < self.full_steps and bool(policy.active())
        self.requests.append((key, steps))
        size = sum(100 * (lp.bits / 32) * (1 - lp.sparsity) for lp in policy.layers.values())
        size += 100 * (2 - len(policy.layers))
        m = Measurement(
            accuracy=self.accuracy(policy, screened),
            size_bytes=max(1, int(size)),
            latency_ms=1.0,
            macs=100,
            device="cpu",
            threads=1,
            batch_size=1,
            runtime="float",
        )
        return [Outcome(key, m, None, 0.01, "stub")]

    def cancel(self) -> list[int]:
        keys = [k for k, _, _ in self.queue]
        self.queue.clear()
        return keys

    def shutdown(self) -> None:
        self.queue.clear()


def test_multi_fidelity_promotes_and_stops_exactly_the_expected_candidates(tiny_model, tiny_space, tmp_path) -> None:
    ex = StubExecutor()
    r = ash.search(
        tiny_model,
        digits_task(device="cpu"),
        tiny_space,
        n_trials=24,
        executor=ex,
        seed=1,
        storage=f"sqlite:///{tmp_path}/mf.db",
        study_name="mf",
        objectives=("accuracy", "size"),
        max_accuracy_drop=0.03,
        sensitivity=False,
        screen=Screening(share=0.4, slack=0.01),
        finetune_steps=10,
    )
    stopped = promoted = 0
    for t in r.study.trials:
        policy = ash.Policy.from_dict(t.user_attrs["policy"])
        if t.user_attrs["stage"] == "baseline" or not policy.active():
            assert t.state == optuna.trial.TrialState.COMPLETE and "screen" not in t.user_attrs
            assert [s for k, s in ex.requests if k == t.number] == [10]
            continue
        screened_drop = 0.95 - StubExecutor.accuracy(policy, screened=True)
        expect_promoted = screened_drop <= 0.03 + 0.01 + 1e-12
        assert t.user_attrs["screen"]["decision"] == ("promoted" if expect_promoted else "stopped")
        assert t.user_attrs["screen"]["steps"] == 4
        if expect_promoted:
            promoted += 1
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.user_attrs["measurement"]["accuracy"] == pytest.approx(StubExecutor.accuracy(policy, False))
            assert [s for k, s in ex.requests if k == t.number] == [4, 10]
        else:
            stopped += 1
            assert t.state == optuna.trial.TrialState.PRUNED and t.values is None
            assert [s for k, s in ex.requests if k == t.number] == [4]
    assert promoted and stopped
    assert r.timing["screening"]["promoted"] == promoted and r.timing["screening"]["stopped"] == stopped
    assert r.timing["screening"]["saved_s_estimated"] == pytest.approx(stopped * 0.01)
    assert len(r.study.trials) == 24  # n_trials counts every candidate, stopped ones too
    assert not set(r.pareto.trial) & {t.number for t in r.study.trials if t.state.name == "PRUNED"}
    assert r.study.user_attrs["screen"] == {
        "share": 0.4,
        "slack": 0.01,
        "margin": 0.01,
        "calibrate": True,
        "limit": 0.04,
    }


class NoRecovery(StubExecutor):
    """A screen reads 0.005 *higher* than the full fine-tune: the rest of the fine-tune recovers nothing."""

    @staticmethod
    def probe(key: int) -> Outcome:
        """The runtime decision (runtime="auto"): float is the faster here."""
        return Outcome(key, None, None, 0.01, "stub", timing=RuntimeTiming({"float": 1.0}, "cpu", 1))

    @staticmethod
    def accuracy(policy: ash.Policy, screened: bool) -> float:
        return StubExecutor.accuracy(policy, False) + (0.005 if screened else 0.0)


def test_screen_slack_becomes_the_recovery_measured_per_distill_setting(tiny_model, tiny_space, tmp_path) -> None:
    r = ash.search(
        tiny_model,
        digits_task(device="cpu"),
        tiny_space,
        n_trials=40,
        executor=NoRecovery(),
        seed=2,
        storage=f"sqlite:///{tmp_path}/cal.db",
        study_name="cal",
        objectives=("accuracy", "size"),
        max_accuracy_drop=0.03,
        sensitivity=False,
        screen=Screening(share=0.4, slack=0.01),
        finetune_steps=10,
        sampler="random",
    )
    pairs: dict[bool, int] = {True: 0, False: 0}
    calibrated = 0
    for t in r.study.trials:
        if "screen" not in t.user_attrs:
            continue
        policy = ash.Policy.from_dict(t.user_attrs["policy"])
        screened_drop = 0.95 - NoRecovery.accuracy(policy, screened=True)
        # the fixed slack (1 pp) until 3 promoted candidates of this distill setting, then their
        # recovery: -0.5 pp, clipped to 0
        limit = 0.03 + (0.01 if pairs[policy.distill] < 3 else 0.0)
        calibrated += pairs[policy.distill] >= 3
        expect = screened_drop <= limit + 1e-12
        assert t.user_attrs["screen"]["decision"] == ("promoted" if expect else "stopped"), t.number
        if pairs[policy.distill] >= 3:
            assert "the -0.50 pp the" in t.user_attrs["screen"]["reason"]
        pairs[policy.distill] += expect
    assert calibrated and min(pairs.values()) >= 3
    # the same without calibration: the fixed limit for every candidate
    r = ash.search(
        tiny_model,
        digits_task(device="cpu"),
        tiny_space,
        n_trials=40,
        executor=NoRecovery(),
        seed=2,
        storage=f"sqlite:///{tmp_path}/fixed.db",
        study_name="fixed",
        objectives=("accuracy", "size"),
        max_accuracy_drop=0.03,
        sensitivity=False,
        screen=Screening(share=0.4, slack=0.01, calibrate=False),
        finetune_steps=10,
        sampler="random",
    )
    for t in r.study.trials:
        if "screen" in t.user_attrs:
            drop = 0.95 - NoRecovery.accuracy(ash.Policy.from_dict(t.user_attrs["policy"]), screened=True)
            assert t.user_attrs["screen"]["decision"] == ("promoted" if drop <= 0.04 + 1e-12 else "stopped")


def test_without_a_constraint_screening_stops_what_a_screened_candidate_beats() -> None:
    s = Screening(margin=0.01)
    obj = OBJECTIVES
    base = Measurement(accuracy=0.9, size_bytes=1000, latency_ms=1.0, macs=100, device="cpu", threads=1, batch_size=1)

    def m(acc: float, size: int, macs: int = 100, lat: float = 1.0) -> Measurement:
        return Measurement(
            accuracy=acc, size_bytes=size, latency_ms=lat, macs=macs, device="cpu", threads=1, batch_size=1
        )

    objs = (obj["accuracy"], obj["size"], obj["latency"])
    others = [m(0.88, 500)]
    assert s.promote(m(0.875, 400), base, None, objs, others)[0]  # smaller: not dominated
    assert s.promote(m(0.875, 500), base, None, objs, others)[0]  # within the margin
    ok, why = s.promote(m(0.86, 600), base, None, objs, others)  # worse in both, by 2 pp
    assert not ok and "2.00 pp more accurate" in why
    assert s.promote(m(0.86, 600, macs=50, lat=9.0), base, None, objs, others)[0]  # fewer MACs: latency's proxy
    with pytest.raises(ash.ConfigError, match="screen share=1.5"):
        Screening(share=1.5)


def test_default_screening_limit_is_twice_the_constraint_with_half_a_pp_at_least() -> None:
    s = Screening()
    obj = (OBJECTIVES["accuracy"], OBJECTIVES["size"])
    base = Measurement(accuracy=0.9, size_bytes=1000, latency_ms=1.0, macs=100, device="cpu", threads=1, batch_size=1)

    def m(drop: float) -> Measurement:
        return Measurement(
            accuracy=0.9 - drop, size_bytes=10, latency_ms=1.0, macs=100, device="cpu", threads=1, batch_size=1
        )

    assert s.promote(m(0.0099), base, 0.005, obj, [])[0] and not s.promote(m(0.0101), base, 0.005, obj, [])[0]
    assert s.promote(m(0.0399), base, 0.02, obj, [])[0] and not s.promote(m(0.0401), base, 0.02, obj, [])[0]
    assert s.promote(m(0.0069), base, 0.002, obj, [])[0] and not s.promote(m(0.0071), base, 0.002, obj, [])[0]
    assert "1.01 pp > 1.00 pp" in s.promote(m(0.0101), base, 0.005, obj, [])[1]
    assert s.limit(0.005) == pytest.approx(0.01) and Screening(slack=0.0).limit(0.005) == pytest.approx(0.005)
    assert s.config(ash.FinetuneConfig(steps=300)).steps == 75 and s.config(ash.FinetuneConfig(steps=2)).steps == 1


def test_compounded_savings_take_each_share_of_what_the_others_left() -> None:
    assert compounded([400.0, 500.0], 1000.0) == pytest.approx(700.0, abs=1e-9)  # 1000 * (1 - 0.6 * 0.5)
    assert compounded([800.0, 900.0], 1000.0) == pytest.approx(980.0, abs=1e-9)  # never more than the base
    assert compounded([1500.0, -3.0], 1000.0) == 1000.0  # shares clipped to [-1, 1]
    assert compounded([500.0, -100.0], 1000.0) == pytest.approx(450.0, abs=1e-9)  # a cost scales what is left up
    assert compounded([-5000.0], 1000.0) == -1000.0
    assert compounded([2.0, 3.0], 0.0) == 5.0  # no base: the plain sum
    assert compounded([], 1000.0) == 0.0


def _compute_case(tmp_path):
    from collections import OrderedDict

    model = torch.nn.Sequential(
        OrderedDict(fc1=torch.nn.Linear(40, 20), act=torch.nn.ReLU(), fc2=torch.nn.Linear(20, 4))
    )
    p = tmp_path / "compute.yaml"
    p.write_text(
        "defaults:\n  sparsity: [0.0, 0.5]\n  structured: [false, true]\n  bits: [32, 8]\n  rank: [1.0, 0.25]\n"
        "distill: [false]\n"
    )
    bound = bind(ash.load_space(p), model)
    rows = [
        ("fc1", "structured", 0.5, 0.002, 400, 0.4),
        ("fc1", "rank", 0.25, 0.003, 500, 0.5),
        ("fc1", "bits", 8, 0.001, 0, 0.3),
        ("fc1", "sparsity", 0.5, 0.004, 0, 0.0),
        ("fc2", "bits", 8, 0.001, 0, 0.01),
    ]  # fc2's int8 saving is 1 % of the baseline: noise
    table = [
        dict(layer=l, field=f, value=v, accuracy_drop=d, macs_saved=m, latency_saved=s) for l, f, v, d, m, s in rows
    ]
    base = Measurement(
        accuracy=0.9,
        size_bytes=5000,
        latency_ms=1.0,
        macs=1000,
        device="cpu",
        threads=1,
        batch_size=1,
        runtime="onnxruntime",
    )
    return model, bound, table, base


def test_structured_low_rank_combinations_only_where_compute_is_an_objective(tmp_path) -> None:
    model, bound, table, base = _compute_case(tmp_path)
    size_only = layer_combos(model, bound, table, base, ("accuracy", "size"))
    assert not [c for c in size_only["fc1"] if c.structured and c.rank < 1]
    assert not [c for c in size_only["fc1"] if c.sparsity > 0 and c.rank < 1]
    timed = layer_combos(model, bound, table, base, ("accuracy", "size", "latency"))
    both = {(c.bits, c.sparsity): c for c in timed["fc1"] if c.structured and c.rank < 1}
    assert set(both) == {(32, 0.5), (8, 0.5)}
    assert not [c for c in timed["fc1"] if c.sparsity > 0 and not c.structured and c.rank < 1]  # unstructured: never
    c = both[(8, 0.5)]
    assert c.drop == pytest.approx(0.002 + 0.003 + 0.001, abs=1e-12)
    # rank 0.25 of 20 -> 5: first factor 5 x 40 = 200 kept, second 20 x 5 rows halved = 50; 1 byte each at 8 bits,
    # plus a float16 scale per kept output channel (10 x 2 B)
    assert c.bytes == pytest.approx(200 + 50 + 20, abs=1e-9)
    assert c.macs == pytest.approx(-1000 * (1 - 0.6 * 0.5), abs=1e-9)
    assert c.latency == pytest.approx(-1.0 * (1 - 0.6 * 0.5 * 0.7), abs=1e-12)
    assert both[(32, 0.5)].latency == pytest.approx(-1.0 * (1 - 0.6 * 0.5), abs=1e-12)  # float32: no bits saving
    fc2_int8 = next(c for c in timed["fc2"] if c.bits == 8 and c.sparsity == 0 and c.rank == 1)
    assert fc2_int8.latency == 0.0  # under 2 % of the baseline's latency: not counted
    table.append(dict(layer="fc2", field="bits", value=8, accuracy_drop=0.001, macs_saved=0, latency_saved=-0.05))
    table.pop(4)  # fc2 at int8 now measured 5 % slower: a cost the latency budgets see
    timed = layer_combos(model, bound, table, base, ("accuracy", "size", "latency"))
    fc2_int8 = next(c for c in timed["fc2"] if c.bits == 8 and c.sparsity == 0 and c.rank == 1)
    assert fc2_int8.latency == pytest.approx(0.05, abs=1e-12)
    floating = layer_combos(model, bound, table, dataclasses.replace(base, runtime="float"), ("accuracy", "latency"))
    assert {c.latency for c in floating["fc2"]} == {0.0}  # float kernels: a bit-width's timing is noise, not used
    assert next(c for c in floating["fc1"] if c.bits == 8 and c.rank == 1 and c.sparsity == 0).latency == 0.0


def test_latency_budgets_can_allocate_structured_low_rank(tmp_path) -> None:
    model, bound, table, base = _compute_case(tmp_path)
    combos = layer_combos(model, bound, table, base, ("accuracy", "size", "latency"))
    alloc = allocate(combos, "latency", -0.75)  # save at least 0.75 ms of 1.0: only fc1 structured + rank + int8 does
    assert (alloc["fc1"].structured, alloc["fc1"].sparsity, alloc["fc1"].rank, alloc["fc1"].bits) == (
        True,
        0.5,
        0.25,
        8,
    )
    assert alloc["fc1"].latency == pytest.approx(-0.79, abs=1e-12)
    assert allocate(combos, "latency", -0.80) is None  # 0.79 ms is the most fc1 can save, fc2's int8 (noise) none


def test_latency_budgets_compound_across_layers_and_stay_positive(tmp_path) -> None:
    model, bound, table, base = _compute_case(tmp_path)
    # fc2 at rank 0.25 alone saves 0.6 of 1.0 ms: with fc1's best (0.79) the plain sum of savings exceeds the baseline
    table.append(dict(layer="fc2", field="rank", value=0.25, accuracy_drop=0.001, macs_saved=0, latency_saved=0.6))
    out = warm_start_params(model, bound, table, base, ("accuracy", "size", "latency"), 8)
    timed = [w for _, w in out if w["budget"].startswith("latency")]
    assert len(timed) >= 3  # the sweep spreads (a plain sum collapsed every budget below 0 onto one allocation)
    for w in timed:
        assert 0 < w["predicted_latency"] <= w["budget_latency"] * (1 + 1e-9)
    # the fastest: fc1 keeps 0.6 * 0.5 * 0.7 = 0.21 of the model's time, fc2 0.4 (its int8 saving is noise)
    assert min(w["predicted_latency"] for w in timed) == pytest.approx(0.21 * 0.4, rel=1e-9)
    assert max(w["budget_latency"] for w in timed) == pytest.approx(0.5, rel=1e-9)  # at most half the baseline's
