"""Scale-out figures: many drivers on one PostgreSQL study, a SIGKILLed driver, a native 2-node Ray
cluster against one local process, and PostgreSQL against SQLite -- per seed, medians over seeds.

Parts (all on the digits MLP, digits task, the default space, `--steps` fine-tune steps, no screen so
every finished candidate is COMPLETE):
  drivers     two `ash.search` processes on one PostgreSQL study, n_trials = 2 x --trials: COMPLETE
              trials, enqueued policies evaluated more than once ("duplicates"), trials left RUNNING or
              WAITING or failed ("lost"), each driver's share, wall time.
  kill        the same, but driver A is SIGKILLed while it runs a trial (after 2 of its trials
              completed) and restarted: what happened to A's running trials and to B's.
  throughput  the same --trials policies (random sampler, no pre-pass, no warm start) on one local
              process (2 torch threads) and on a native loopback Ray cluster of two nodes (127.0.0.2 and
              127.0.0.3, 1 CPU each, 2 actors), both on SQLite: trials/min end to end and where the
              driver's time goes -- waiting for evaluations, dispatch (submitting/collecting on Ray),
              the rest (study storage, sampling).
  storage     the throughput part's local run on PostgreSQL and on SQLite: driver time per trial not
              spent evaluating (study I/O + sampling) and wall per trial.

The PostgreSQL server is the tests' (tests/pgserver.py: initdb + pg_ctl on a loopback port, stopped by
PID); the Ray cluster too (tests/executors/cluster.py, RAY_AUTH_MODE=disabled, stopped by PID).
Usage: make bench-deps; .venv/bin/python benchmarks/scale_out.py [--trials 20] [--steps 100]
       [--seeds 0 1 2] [--parts drivers kill throughput storage] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the loopback cluster runs without token auth

import optuna  # noqa: E402

from autoshrink.search.study.storage import counted  # noqa: E402

DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import autoshrink as ash
    from autoshrink.zoo import digits_model, digits_task
    r = ash.search(digits_model("mlp"), digits_task(device="cpu"), ash.load_space("default"), n_trials={n},
                   finetune_steps={steps}, storage={storage!r}, study_name={study!r}, seed={seed}, screen=False,
                   objectives=("accuracy", "size"))
    print("done", round(r.timing["wall_s"], 2), flush=True)
""")


def _driver(storage: str, study: str, n: int, steps: int, seed: int) -> subprocess.Popen:
    code = DRIVER.format(root=str(ROOT), n=n, steps=steps, storage=storage, study=study, seed=seed)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen) -> None:
    out, err = p.communicate(timeout=1800)
    if p.returncode:
        raise RuntimeError(f"driver {p.pid} exited {p.returncode}: {err[-2000:]}")


def _pid(t: optuna.trial.FrozenTrial) -> str:
    return (t.user_attrs.get("driver") or "?:?").split(":")[1]


def _audit(study: optuna.Study) -> dict:
    """COMPLETE, duplicates (an enqueued policy evaluated twice, or a trial retried twice), lost
    (RUNNING/WAITING left, FAIL that is not a crash re-run elsewhere), and each driver's trials."""
    trials = study.get_trials(deepcopy=False)
    first = [t for t in trials if "retry_of" not in t.user_attrs]
    enq = [
        repr(sorted(t.params.items()))
        for t in first
        if t.user_attrs.get("baseline_policy") or t.user_attrs.get("warm_start")
    ]
    retries = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
    crashed = {t.number for t in trials if t.user_attrs.get("crashed")}
    lost = [
        t.number
        for t in trials
        if t.state.name in ("RUNNING", "WAITING")
        or (t.state.name == "FAIL" and t.number not in crashed)
        or (t.number in crashed and t.number not in retries)
    ]
    per: dict[str, int] = {}
    for t in trials:
        if t.state.name == "COMPLETE":
            per[_pid(t)] = per.get(_pid(t), 0) + 1
    return {
        "complete": sum(t.state.name == "COMPLETE" for t in trials),
        "pruned_skipped": sum(t.state.name == "PRUNED" and "skipped" in t.user_attrs for t in trials),
        "counted": counted(study),
        "trials": len(trials),
        "duplicates": (len(enq) - len(set(enq))) + (len(retries) - len(set(retries))),
        "lost": len(lost),
        "crashed": sorted(crashed),
        "per_driver": sorted(per.values()),
    }


def part_drivers(pg, seed: int, args) -> dict:
    url = pg.url(pg.create_db())
    t0 = time.perf_counter()
    a, b = (_driver(url, "drivers", 2 * args.trials, args.steps, seed) for _ in range(2))
    _finish(a)
    _finish(b)
    wall = time.perf_counter() - t0
    storage = optuna.storages.RDBStorage(pg.url(url.rsplit("/", 1)[1], driver="psycopg"))
    out = {**_audit(optuna.load_study(study_name="drivers", storage=storage)), "wall_s": round(wall, 1)}
    storage.engine.dispose()
    return out


def part_kill(pg, seed: int, args) -> dict:
    url = pg.url(pg.create_db())
    storage = optuna.storages.RDBStorage(pg.url(url.rsplit("/", 1)[1], driver="psycopg"))  # one pool for the polling
    t0 = time.perf_counter()
    b = _driver(url, "kill", 2 * args.trials, args.steps, seed)
    a = _driver(url, "kill", 2 * args.trials, args.steps, seed)
    killed: list[int] = []
    b_running: list[int] = []
    while not killed:
        time.sleep(0.05)
        try:
            trials = optuna.load_study(study_name="kill", storage=storage).get_trials(deepcopy=False)
        except KeyError:
            continue
        mine = [t for t in trials if _pid(t) == str(a.pid)]
        if sum(t.state.name == "COMPLETE" for t in mine) >= 2 and any(t.state.name == "RUNNING" for t in mine):
            a.send_signal(signal.SIGKILL)
            a.wait()
            trials = optuna.load_study(study_name="kill", storage=storage).get_trials(deepcopy=False)
            killed = [t.number for t in trials if _pid(t) == str(a.pid) and t.state.name == "RUNNING"]
            b_running = [t.number for t in trials if _pid(t) == str(b.pid) and t.state.name == "RUNNING"]
        if a.poll() is not None and not killed:
            raise RuntimeError("driver A finished before it could be killed; use more --trials")
    a2 = _driver(url, "kill", 2 * args.trials, args.steps, seed)
    _finish(a2)
    _finish(b)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name="kill", storage=storage)
    trials = study.get_trials(deepcopy=False)
    requeued = [
        n
        for n in killed
        if trials[n].user_attrs.get("crashed")  # PRUNED: a warm-start twin skipped
        and any(t.user_attrs.get("retry_of") == n and t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    ]
    # finished by B itself (PRUNED: a warm-start twin B skipped the moment after claiming it), never crashed
    untouched = [
        n
        for n in b_running
        if trials[n].state.name in ("COMPLETE", "PRUNED")
        and not trials[n].user_attrs.get("crashed")
        and _pid(trials[n]) == str(b.pid)
    ]
    storage.engine.dispose()
    return {
        **_audit(study),
        "killed_running": killed,
        "requeued_and_finished": requeued,
        "other_running_at_kill": b_running,
        "other_untouched": untouched,
        "wall_s": round(wall, 1),
    }


def _search(executor, storage: str, args, seed: int, stamps: list[float]):
    import autoshrink as ash
    from autoshrink.zoo import digits_model, digits_task

    return ash.search(
        digits_model("mlp"),
        digits_task(device="cpu"),
        ash.load_space("default"),
        n_trials=args.trials,
        finetune_steps=args.steps,
        storage=storage,
        study_name="t",
        seed=seed,
        sampler="random",
        sensitivity=False,
        warm_start=False,
        screen=False,
        objectives=("accuracy", "size"),
        executor=executor,
        progress=lambda p: stamps.append(time.perf_counter()),
    )


def _timing(r, stamps: list[float]) -> dict:
    """Throughput end to end and steady (first to last finished trial), and the driver's time per trial:
    waiting for evaluations, study calls (claims, sampling, attributes, tells), dispatch (Ray), the rest
    (start-up: executor, baseline, study creation)."""
    t = r.timing
    n = len(r.study.trials)
    rest = t["overhead_s"] - t["study_s"] - t["dispatch_s"]
    return {
        "trials": n,
        "wall_s": round(t["wall_s"], 2),
        "trials_per_min": round(n / t["wall_s"] * 60, 1),
        "steady_trials_per_min": round((len(stamps) - 1) / (stamps[-1] - stamps[0]) * 60, 1),
        "eval_s": round(t["eval_s"], 2),
        "wait_s": round(t["wait_s"], 2),
        "study_ms_per_trial": round(t["study_s"] / n * 1e3, 2),
        "dispatch_ms_per_trial": round(t["dispatch_s"] / n * 1e3, 2),
        "startup_and_rest_s": round(rest, 2),
        "params": [sorted(tr.params.items()) for tr in r.study.trials],
    }


def part_throughput(seed: int, args) -> dict:
    import autoshrink as ash
    from tests.executors.cluster import LoopbackCluster

    tmp = tempfile.mkdtemp()
    stamps: list[float] = []
    local = _search("local", f"sqlite:///{tmp}/local.db", args, seed, stamps)
    out = {"local": _timing(local, stamps)}
    with LoopbackCluster() as cluster:
        ex = ash.RayExecutor(address=cluster.address, actors=2)
        stamps = []
        remote = _search(ex, f"sqlite:///{tmp}/ray.db", args, seed, stamps)
        out["ray"] = _timing(remote, stamps)
        out["ray"]["nodes"] = sorted({t.user_attrs["eval"]["worker"].split(":")[0] for t in remote.study.trials})
    if cluster.leftover:
        raise RuntimeError(f"Ray processes left running: {cluster.leftover}")
    out["same_trials"] = out["local"].pop("params") == out["ray"].pop("params")
    out["ratio"] = round(out["local"]["wall_s"] / out["ray"]["wall_s"], 3)
    out["ratio_steady"] = round(out["ray"]["steady_trials_per_min"] / out["local"]["steady_trials_per_min"], 3)
    return out


def part_storage(pg, seed: int, args) -> dict:
    tmp = tempfile.mkdtemp()
    out = {}
    for name, url in (("sqlite", f"sqlite:///{tmp}/s.db"), ("postgresql", pg.url(pg.create_db()))):
        stamps: list[float] = []
        t = _timing(_search("local", url, args, seed, stamps), stamps)
        t.pop("params")
        out[name] = t
    out["ratio_study_ms"] = round(out["postgresql"]["study_ms_per_trial"] / out["sqlite"]["study_ms_per_trial"], 2)
    return out


def _median(rows: list[dict], *path: str) -> float:
    vals = []
    for r in rows:
        for p in path:
            r = r[p]
        vals.append(r)
    return statistics.median(vals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--parts", nargs="+", default=["drivers", "kill", "throughput", "storage"])
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    from tests.pgserver import PostgresServer

    pg = PostgresServer()
    results: dict[str, list[dict]] = {p: [] for p in args.parts}
    t_all = time.perf_counter()
    try:
        for seed in args.seeds:
            for part in args.parts:
                t0 = time.perf_counter()
                if part == "throughput":
                    r = part_throughput(seed, args)
                else:
                    r = {"drivers": part_drivers, "kill": part_kill, "storage": part_storage}[part](pg, seed, args)
                r["part_wall_s"] = round(time.perf_counter() - t0, 1)
                results[part].append(r)
                print(f"seed {seed} {part}: {json.dumps(r)}", flush=True)
    finally:
        pg.stop()
    print(f"\nmedians over seeds {args.seeds} ({time.perf_counter() - t_all:.0f} s in all):")
    if results.get("drivers"):
        d = results["drivers"]
        print(
            f"drivers: counted {[r['counted'] for r in d]} = COMPLETE {[r['complete'] for r in d]} + skipped twins "
            f"{[r['pruned_skipped'] for r in d]}, duplicates {max(r['duplicates'] for r in d)}, lost "
            f"{max(r['lost'] for r in d)}, per driver {[r['per_driver'] for r in d]}, wall {_median(d, 'wall_s')} s"
        )
    if results.get("kill"):
        k = results["kill"]
        print(
            f"kill: counted {[r['counted'] for r in k]} (COMPLETE {[r['complete'] for r in k]}), killed running "
            f"{[r['killed_running'] for r in k]} -> "
            f"re-queued and finished {[r['requeued_and_finished'] for r in k]}; other driver's running "
            f"{[r['other_running_at_kill'] for r in k]} untouched {[r['other_untouched'] for r in k]}; duplicates "
            f"{max(r['duplicates'] for r in k)}, lost {max(r['lost'] for r in k)}"
        )
    if results.get("throughput"):
        t = results["throughput"]
        print(
            f"throughput: local {_median(t, 'local', 'trials_per_min')} trials/min end to end "
            f"({_median(t, 'local', 'steady_trials_per_min')} steady), 2-node Ray "
            f"{_median(t, 'ray', 'trials_per_min')} ({_median(t, 'ray', 'steady_trials_per_min')} steady); ratio "
            f"{_median(t, 'ratio')}x end to end, {_median(t, 'ratio_steady')}x steady; per trial: study "
            f"{_median(t, 'ray', 'study_ms_per_trial')} ms (local {_median(t, 'local', 'study_ms_per_trial')}), Ray "
            f"dispatch {_median(t, 'ray', 'dispatch_ms_per_trial')} ms; start-up and rest "
            f"{_median(t, 'ray', 'startup_and_rest_s')} s (local {_median(t, 'local', 'startup_and_rest_s')} s); "
            f"evaluation summed {_median(t, 'ray', 'eval_s')} s (local {_median(t, 'local', 'eval_s')} s); same "
            f"trials {[r['same_trials'] for r in t]}"
        )
    if results.get("storage"):
        s = results["storage"]
        print(
            f"storage: study calls per trial SQLite {_median(s, 'sqlite', 'study_ms_per_trial')} ms, PostgreSQL "
            f"{_median(s, 'postgresql', 'study_ms_per_trial')} ms (ratio {_median(s, 'ratio_study_ms')}x); wall "
            f"per trial SQLite {_median(s, 'sqlite', 'wall_s') / args.trials:.3f} s, PostgreSQL "
            f"{_median(s, 'postgresql', 'wall_s') / args.trials:.3f} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
