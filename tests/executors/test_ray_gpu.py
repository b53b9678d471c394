"""GPU paths of the Ray executor; skipped where CUDA is absent (CI has no GPU)."""

from __future__ import annotations

import pytest
import torch

import autoshrink as ash
from autoshrink.executors import Job
from autoshrink.zoo import digits_model, digits_task

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
ray = pytest.importorskip("ray")


def test_four_actors_share_a_gpu_and_evaluate_on_cuda(tmp_path) -> None:
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.2", logging_level="ERROR")
    try:
        task = digits_task(device="auto")
        r = ash.search(
            digits_model("cnn"),
            task,
            ash.load_space("default"),
            n_trials=8,
            finetune_steps=50,
            executor=ash.RayExecutor(actors=4, gpus_per_actor=0.25),
            storage=f"sqlite:///{tmp_path}/g.db",
            study_name="g",
        )
        trials = r.study.trials
        failures = {t.number: t.user_attrs.get("failure") for t in trials if t.state.name == "FAIL"}
        assert not failures, failures
        # every trial finished: fully evaluated, or stopped after its screen (multi-fidelity; kept as PRUNED)
        assert len(trials) == 8 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
        assert all(t.user_attrs["screen"]["decision"] == "stopped" for t in trials if t.state.name == "PRUNED")
        measured = [
            t.user_attrs["measurement"] if t.state.name == "COMPLETE" else t.user_attrs["screen"]["measurement"]
            for t in trials
        ]
        assert all(m["device"].startswith("cuda") for m in measured), {m["device"] for m in measured}
    finally:
        ray.shutdown()


def test_cuda_latency_is_synchronized_and_recorded() -> None:
    task = digits_task(device="cuda", deploy_batch=64)
    m = ash.measure(digits_model("cnn"), task)
    assert m.device.startswith("cuda") and m.latency_ms > 0 and m.runtime == "float"
    job = Job(model=digits_model("mlp"), task=task, finetune=ash.FinetuneConfig(steps=20))
    assert job.task.torch_device.type == "cuda"
