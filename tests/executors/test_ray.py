"""Ray executor: same numbers as local, faults, GPU fail-fast, a real two-node loopback cluster.

Ray runs with explicit small resources on loopback; every process a test starts is stopped by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import autoshrink as ash
from autoshrink.errors import ConfigError
from autoshrink.executors import Job, LocalExecutor
from autoshrink.zoo import digits_task

from ..search.conftest import FAST, Tiny
from .cluster import LoopbackCluster, alive, descendants

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]
L = ash.LayerPolicy


@pytest.fixture(scope="module")
def ray_local():
    """One private Ray instance for this module: 2 CPUs, loopback (127.0.0.2: Ray rewrites .1), small store."""
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        _node_ip_address="127.0.0.2",
        logging_level="ERROR",
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_trained():
    torch.manual_seed(0)
    model = Tiny()
    ash.finetune(model, digits_task(device="cpu"), steps=200, lr=3e-3)
    return model


POLICIES = [
    ash.Policy(),
    ash.Policy(layers={"fc1": L(bits=8)}),
    ash.Policy(layers={"fc1": L(sparsity=0.8, bits=4), "fc2": L(bits=8)}, distill=True),
    ash.Policy(layers={"fc1": L(rank=0.25), "fc2": L(sparsity=0.5)}),
]


def _run_all(ex, job, policies):
    ex.start(job)
    try:
        for i, p in enumerate(policies):
            ex.submit(i, p)
        out = {}
        while len(out) < len(policies):
            for o in ex.wait():
                out[o.key] = o
        return out
    finally:
        ex.shutdown()


def test_import_autoshrink_does_not_import_ray() -> None:
    code = "import sys, autoshrink; assert 'ray' not in sys.modules, 'ray imported'; autoshrink.RayExecutor"
    proc = subprocess.run(
        [sys.executable, "-c", code + "; assert 'ray' in sys.modules"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_ray_and_local_measure_the_same(ray_local, tiny_trained) -> None:
    job = Job(model=tiny_trained, task=digits_task(device="cpu"), finetune=ash.FinetuneConfig(steps=60), latency=FAST)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float reductions depend on the thread count: compare like with like
    try:
        local = _run_all(LocalExecutor(), job, POLICIES)
    finally:
        torch.set_num_threads(threads)
    remote = _run_all(ash.RayExecutor(actors=2), job, POLICIES)
    for i in range(len(POLICIES)):
        a, b = local[i].measurement, remote[i].measurement
        assert a.size_bytes == b.size_bytes and a.macs == b.macs and a.params == b.params
        assert b.accuracy == a.accuracy  # same thread count (1): bitwise the same fine-tune
        assert remote[i].worker.startswith("127.0.0.2:") and remote[i].attempts == 1
    assert {remote[i].worker for i in remote} and all(remote[i].measurement.threads == 1 for i in remote)


def test_the_sensitivity_prepass_runs_on_ray_actors_as_locally(ray_local, tiny_trained, tmp_path) -> None:
    """The pre-pass goes through the executor like any trial: on 2 actors it gives the local table."""
    space = tmp_path / "s.yaml"
    space.write_text("defaults: {sparsity: [0.0, 0.5], bits: [32, 8, 4], rank: [1.0, 0.25]}\nfinetune: {steps: 2}\n")
    space = ash.load_space(space)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the 1-CPU actors
    try:
        local = ash.sensitivity(tiny_trained, digits_task(device="cpu"), space, latency=FAST)
    finally:
        torch.set_num_threads(threads)
    remote = ash.sensitivity(
        tiny_trained, digits_task(device="cpu"), space, executor=ash.RayExecutor(actors=2), latency=FAST
    )
    exact = ["layer", "field", "value", "accuracy", "size_bytes", "bytes_saved", "macs_saved"]
    assert len(local) == 8 and local[exact].equals(remote[exact])


def test_an_exception_fails_one_trial_and_the_actor_lives_on(ray_local, tiny_trained) -> None:
    job = Job(model=tiny_trained, task=digits_task(device="cpu"), finetune=ash.FinetuneConfig(steps=0), latency=FAST)
    ex = ash.RayExecutor(actors=1)
    out = _run_all(ex, job, [ash.Policy(layers={"nope": L(bits=8)}), ash.Policy(layers={"fc1": L(bits=8)})])
    assert out[0].error.startswith("PolicyError: policy names 1 layer(s) the model does not have: 'nope'")
    assert out[1].ok and out[1].worker == out[0].worker  # same actor process served both


def test_gpu_request_without_gpus_fails_fast(ray_local, tiny_trained) -> None:
    job = Job(model=tiny_trained, task=digits_task(device="cpu"), finetune=ash.FinetuneConfig(steps=0))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"gpus_per_actor=0.25 but the Ray cluster has no GPU"):
        ash.RayExecutor(actors=2, gpus_per_actor=0.25).start(job)
    assert time.perf_counter() - t0 < 10


def test_too_many_actors_is_a_clear_error(ray_local, tiny_trained) -> None:
    job = Job(model=tiny_trained, task=digits_task(device="cpu"), finetune=ash.FinetuneConfig(steps=0))
    with pytest.raises(
        ConfigError,
        match=r"3 actors need 3 CPU and 0 GPU, but the cluster has 2 CPU and 0 GPU; ask for fewer actors \(at most 2\)",
    ):
        ash.RayExecutor(actors=3).start(job)


def test_actor_killed_mid_search_is_replaced_and_its_trial_retried(ray_local, tiny_trained, tmp_path) -> None:
    space_file = tmp_path / "s.yaml"
    space_file.write_text("defaults: {sparsity: [0.0, 0.5, 0.9], bits: [32, 8, 4]}\nfinetune: {steps: 600}\n")
    ex = ash.RayExecutor(actors=2)
    killed: dict[str, object] = {}

    def kill_a_busy_actor(progress) -> None:
        if killed or progress.stage != "trials" or progress.done < 2:
            return
        busy = ex.in_flight()
        if busy:
            key, info = next(iter(busy.items()))
            os.kill(info["pid"], signal.SIGKILL)
            killed.update(key=key, pid=info["pid"])

    r = ash.search(
        tiny_trained,
        digits_task(device="cpu"),
        ash.load_space(space_file),
        n_trials=8,
        executor=ex,
        storage=f"sqlite:///{tmp_path}/k.db",
        study_name="k",
        latency=FAST,
        progress=kill_a_busy_actor,
    )
    assert killed, "no actor was busy to kill"
    trials = r.study.trials
    # every candidate finished: in full, or stopped by the screen (PRUNED, with its screened numbers)
    assert len(trials) == 8 and all(
        t.state.name == "COMPLETE" or (t.state.name == "PRUNED" and "screen" in t.user_attrs) for t in trials
    )
    # The retried trial is the killed one, or -- if the kill landed just after it returned -- the next
    # trial sent to the dead actor. Either way exactly one trial needed a second attempt, on a live actor.
    retried = [t for t in trials if t.user_attrs["eval"]["attempts"] == 2]
    assert len(retried) == 1 and retried[0].number >= killed["key"]
    assert not retried[0].user_attrs["eval"]["worker"].endswith(f":{killed['pid']}")
    assert all(t.user_attrs["eval"]["attempts"] == 1 for t in trials if t is not retried[0])


# ----------------------------------------------------------------------------- two-node cluster

DRIVER = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {root!r})
    import autoshrink as ash
    from autoshrink.zoo import digits_task
    from tests.search.conftest import Tiny, FAST
    torch.manual_seed(0)
    model = Tiny()
    ex = ash.RayExecutor(address={address!r}, actors=2)
    space = ash.load_space({space!r})
    r = ash.search(model, digits_task(device="cpu"), space, n_trials=6, executor=ex, latency=FAST,
                   storage={storage!r}, study_name="cluster", sampler="random")
    print(json.dumps([t.user_attrs["eval"]["worker"] for t in r.study.trials]))
""")


def test_two_node_loopback_cluster(tmp_path) -> None:
    with LoopbackCluster() as cluster:
        space = tmp_path / "s.yaml"
        space.write_text("defaults: {bits: [32, 8, 4], sparsity: [0.0, 0.5]}\nfinetune: {steps: 20}\n")
        code = DRIVER.format(
            root=str(ROOT), address=cluster.address, space=str(space), storage=f"sqlite:///{tmp_path}/c.db"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=cluster.env
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        import json

        workers = json.loads(proc.stdout.strip().splitlines()[-1])
        nodes = {w.split(":")[0] for w in workers}
        assert nodes == {"127.0.0.2", "127.0.0.3"}, workers
    assert cluster.leftover == []


CTRL_C_DRIVER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    import autoshrink as ash
    from autoshrink.zoo import digits_task
    from tests.search.conftest import Tiny, FAST
    torch.manual_seed(0)
    ex = ash.RayExecutor(actors=2, init_kwargs={{"num_cpus": 2, "object_store_memory": 150 * 1024**2}})
    def show(p):
        if p.stage == "trials":
            print("done", p.done, flush=True)
    ash.search(Tiny(), digits_task(device="cpu"), ash.load_space({space!r}), n_trials=40, executor=ex, latency=FAST,
               storage={storage!r}, study_name="c", progress=show)
""")


def test_ctrl_c_fails_and_requeues_pending_trials_and_releases_ray(tmp_path) -> None:
    import optuna

    space = tmp_path / "s.yaml"
    # long trials: the search cannot finish in the moment between "done 2" and the signal
    space.write_text("defaults: {bits: [32, 8, 4], sparsity: [0.0, 0.5]}\nfinetune: {steps: 2000}\n")
    storage = f"sqlite:///{tmp_path}/c.db"
    code = CTRL_C_DRIVER.format(root=str(ROOT), space=str(space), storage=storage)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait until two trials finished, so two more are in flight
            if line.startswith("done 2"):
                break
        below = descendants(proc.pid)
        assert below, "the driver started no Ray processes"
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err, rest = proc.stderr.read(), proc.stdout.read()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, (proc.returncode, rest[-500:], err[-2000:])
    deadline = time.time() + 20
    while time.time() < deadline and any(alive(p) for p in below):
        time.sleep(0.5)
    assert not [p for p in below if alive(p)], "Ray processes outlived the interrupted driver"
    study = optuna.load_study(study_name="c", storage=storage)
    interrupted = [t for t in study.trials if t.user_attrs.get("crashed")]
    assert interrupted and all(t.state.name == "FAIL" for t in interrupted)
    waiting = {
        t.user_attrs.get("retry_of"): t.system_attrs["fixed_params"]  # queued trials hold their params here
        for t in study.trials
        if t.state.name == "WAITING" and t.user_attrs.get("retry_of") is not None
    }
    assert {t.number: t.params for t in interrupted} == waiting  # same parameters queued again


def test_a_job_the_workers_cannot_load_is_a_clear_error(ray_local, tmp_path) -> None:
    """A model whose class the workers cannot import: one clear message, no actor left behind."""
    import types

    mod = types.ModuleType("autoshrink_test_vanishing_module")
    exec("import torch\nclass Gone(torch.nn.Linear):\n    pass\n", mod.__dict__)
    sys.modules[mod.__name__] = mod  # importable here, not in the Ray workers
    try:
        job = Job(model=mod.Gone(64, 10), task=digits_task(device="cpu"), finetune=ash.FinetuneConfig(steps=0))
        ex = ash.RayExecutor(actors=1)
        with pytest.raises(ConfigError, match=r"the Ray workers could not load the job .*must be importable on every"):
            ex.start(job)
        assert ex.in_flight() == {} and not ex._slots
    finally:
        del sys.modules[mod.__name__]


def test_a_failed_start_releases_ray_and_the_sigint_handler(tiny_trained, tmp_path) -> None:
    import signal as _signal

    before = _signal.getsignal(_signal.SIGINT)
    was_running = ray.is_initialized()  # a Ray the executor did not start must be left alone
    with pytest.raises(ConfigError, match="ask for fewer actors"):
        ash.search(
            tiny_trained,
            digits_task(device="cpu"),
            ash.load_space("quantize_only"),
            n_trials=2,
            executor=ash.RayExecutor(actors=64, init_kwargs={"num_cpus": 2}),
            storage=f"sqlite:///{tmp_path}/f.db",
            study_name="f",
        )
    assert _signal.getsignal(_signal.SIGINT) is before
    assert ray.is_initialized() == was_running


def test_default_actor_count_leaves_other_drivers_actors_alone(ray_local, tiny_trained) -> None:
    """Two drivers on one cluster: the first one's actors hold their CPUs, so a second executor without
    `actors` is refused clearly (not left waiting forever), and one asking for what is free fits."""
    job = Job(model=tiny_trained, task=digits_task(device="cpu"), finetune=ash.FinetuneConfig(steps=5), latency=FAST)
    from autoshrink.errors import ExecutorUnavailable
    from autoshrink.executors.ray import RayExecutor
    from autoshrink.executors.ray.resources import actor_count

    first = RayExecutor(actors=1)
    first.start(job)
    try:
        assert first.capacity == 1
        assert actor_count(None, 1, 0, settle_s=0) == 1  # the one CPU the first driver left free
        with pytest.raises(
            ExecutorUnavailable,
            match=r"^RayExecutor: the cluster's 2 CPU and 0 GPU are held by other "
            r"jobs \(another search driver\?\); 1 CPU and 0 GPU are free, too "
            r"few for 2 actor\(s\)\. Fix: give each driver fewer actors",
        ):
            actor_count(2, 1, 0, settle_s=0.2)
        second = RayExecutor()
        second.start(job)
        try:
            assert second.capacity == 1
            with pytest.raises(ExecutorUnavailable, match="0 CPU and 0 GPU are free, too few for 1 actor"):
                actor_count(None, 1, 0, settle_s=0.2)
        finally:
            second.shutdown()
    finally:
        first.shutdown()
