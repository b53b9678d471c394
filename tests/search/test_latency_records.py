"""The study's latency lookup table: filled by a search, predictions stored and checked against measurements."""

from __future__ import annotations

import optuna
import pytest

import autoshrink as ash
from autoshrink.executors import Outcome
from autoshrink.measure import Measurement
from autoshrink.search.study.latency_records import load_table
from autoshrink.zoo import digits_task

from .test_efficiency import StubExecutor

L = ash.LayerPolicy


class AdditiveStub(StubExecutor):
    """The efficiency tests' stub (queue, cancel, shutdown), timing each layer: a fixed time per choice
    (0.4 ms x bits/32 x density), the model 0.3 ms more, so the sum rule is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.layers: tuple[str, ...] = ()

    def start(self, job) -> None:
        self.layers = job.latency.layers

    def wait(self, timeout=None) -> list[Outcome]:
        if not self.queue:
            return []
        key, policy, ft = self.queue.pop(0)
        if ft == "probe":
            return [self.probe(key)]
        per = {
            name: 0.4 * policy.layers.get(name, L()).bits / 32 * (1 - policy.layers.get(name, L()).sparsity)
            for name in self.layers
        }
        m = Measurement(
            accuracy=0.95 - 0.001 * len(policy.active()),
            size_bytes=1 + int(100 * sum(per.values())),
            latency_ms=0.3 + sum(per.values()),
            macs=100,
            device="cpu",
            threads=1,
            batch_size=1,
            layer_latency_ms=per,
        )
        return [Outcome(key, m, None, 0.01, "stub")]


def test_a_search_fills_the_table_and_predicts_exactly_on_an_additive_stub(tiny_model, tiny_space, tmp_path) -> None:
    ex = AdditiveStub()
    r = ash.search(
        tiny_model,
        digits_task(device="cpu"),
        tiny_space,
        n_trials=40,
        executor=ex,
        seed=0,
        storage=f"sqlite:///{tmp_path}/lut.db",
        study_name="lut",
        objectives=("accuracy", "size", "latency"),
        sensitivity=False,
        screen=False,
        finetune_steps=5,
    )
    assert ex.layers == ("fc1", "fc2")  # every searched layer is timed alone
    pred = r.latency_predictions()
    assert len(pred) >= 5 and set(pred.fidelity) == {"full"}
    assert pred.error.abs().max() == pytest.approx(0.0, abs=1e-5)  # predictions are stored to 1e-6 ms
    for row in pred.itertuples():  # a prediction is stored only where every key was observed before the trial ran
        t = r.study.trials[int(row.trial)]
        assert t.user_attrs["latency_predicted_ms"] == pytest.approx(t.values[2])
    table = r.latency_table()
    assert set(table.layer) == {"fc1", "fc2"} and set(table.runtime) == {"float"}
    assert (table.choice == "none").sum() == 2
    stored = load_table(optuna.load_study(study_name="lut", storage=f"sqlite:///{tmp_path}/lut.db"))
    assert stored.entries == load_table(r.study).entries and stored.entries


def test_without_a_latency_objective_nothing_is_timed_per_layer(tiny_model, tiny_space, tmp_path) -> None:
    class NoLatency(AdditiveStub):
        def start(self, job) -> None:
            assert job.latency is None or job.latency.layers == ()
            self.layers = ()

    r = ash.search(
        tiny_model,
        digits_task(device="cpu"),
        tiny_space,
        n_trials=4,
        executor=NoLatency(),
        seed=0,
        storage=f"sqlite:///{tmp_path}/nl.db",
        study_name="nl",
        objectives=("accuracy", "size"),
        sensitivity=False,
        screen=False,
        finetune_steps=5,
    )
    assert r.latency_table().empty and r.latency_predictions().empty
