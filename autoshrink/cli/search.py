"""`autoshrink search`: run or resume a study from its config YAML."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..search.config import SETTINGS
from ..search.study.schema import StudyAttr
from .common import front_table, progress_printer

if TYPE_CHECKING:
    from ..search.config import SearchConfig
    from ..search.study_config import StudyConfig


def cli_settings(args: argparse.Namespace, cfg: StudyConfig) -> SearchConfig:
    """The config's settings with the flags given on the command line over them, each checked as the
    YAML key of the same name would be."""
    import yaml

    from ..errors import ConfigError, describe
    from ..search.config import from_mapping

    given: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        text = getattr(args, f"set_{name}", None)
        if text is None:
            continue
        if setting.cli != "yaml":
            given[name] = text
            continue
        try:
            given[name] = yaml.safe_load(text) if len(text) <= 10_000 else text
        except yaml.YAMLError:
            raise ConfigError(
                f"search: --{name.replace('_', '-')} {text!r}: not a YAML value; quote it or fix the syntax."
            ) from None

    def error(name: str, value: Any, fix: str) -> Exception:
        return ConfigError(f"search: --{name.replace('_', '-')} {describe(value)}: {fix}")

    def rule(name: str, message: str) -> Exception:
        return ConfigError(f"search: {message}")

    return from_mapping(given, error, rule, base=cfg.settings)


def pick_executor(args: argparse.Namespace, cfg: StudyConfig) -> Any:
    """The executor: --executor and the --ray-* flags over the config's executor and executor_args.

    Any --ray-* flag implies Ray; each replaces the config's value of that setting (flag paths are
    relative to the current directory, the config's to its file). Without Ray settings: 'local' or 'ray'."""
    from ..errors import ConfigError
    from ..executors import make_executor
    from ..executors.runtime_env import check_py_modules, check_working_dir

    flags = {
        "address": args.ray_address,
        "working_dir": args.ray_working_dir,
        "py_modules": args.ray_py_module,
        "actors": args.ray_actors,
    }
    if args.ray_actors is not None and args.ray_actors < 1:
        raise ConfigError(f"search: --ray-actors {args.ray_actors}; use a positive number of actors.")
    given = {name: value for name, value in flags.items() if value}
    if given and args.executor == "local":
        shown = [f"--ray-address {args.ray_address}"] if args.ray_address else []
        shown += [f"--ray-working-dir {args.ray_working_dir}"] if args.ray_working_dir else []
        shown += [f"--ray-py-module {m}" for m in args.ray_py_module or []]
        shown += [f"--ray-actors {args.ray_actors}"] if args.ray_actors else []
        raise ConfigError(
            f"search: {' '.join(shown)} runs the trials on Ray, but --executor local was given; drop one of them."
        )
    if "working_dir" in given:
        given["working_dir"] = check_working_dir(given["working_dir"], "search: --ray-working-dir")
    if "py_modules" in given:
        given["py_modules"] = check_py_modules(given["py_modules"], "search: --ray-py-module")
    kind = "ray" if given else (args.executor or cfg.settings.executor)
    if kind != "ray" or not (given or cfg.executor_args):
        return kind
    return make_executor("ray", **{**cfg.executor_args, **given})


def _cmd_search(args: argparse.Namespace) -> int:
    from torch import nn

    from ..search import search
    from ..search.study.urls import redact
    from ..search.study_config import call_factory, load_study_config
    from ..space import load_space

    cfg = load_study_config(args.config)
    settings = cli_settings(args, cfg)
    executor = pick_executor(args, cfg)  # settings checked before the model is built
    quiet = args.quiet or args.json
    src = cfg.source
    space = load_space(cfg.space_path())
    task = cfg.build_task(args.holdout)
    model = call_factory(cfg.model, cfg.model_args, "model", src, nn.Module)
    drop = settings.max_accuracy_drop
    drop_label = f"{drop * 100:g} pp" if drop is not None else "1 pp"
    line = progress_printer(drop_label)
    try:
        result = search(model, task, space, settings.replace(executor=executor), progress=False if quiet else line)
    finally:
        line.end()
    front = result.pareto
    if args.json:
        print(
            json.dumps(
                {
                    "study": result.study.study_name,
                    "baseline": result.baseline.to_dict(),
                    "timing": result.timing,
                    "hypervolume": result.hypervolume(),
                    "pareto": json.loads(front.to_json(orient="records")),
                },
                indent=1,
            )
        )
        return 0
    print(front_table(result))
    t = result.timing
    rt = result.study.user_attrs.get(StudyAttr.RUNTIME) or {}
    if rt:
        print(f"\nruntime: {rt.get('runtime')} ({rt.get('decided_by')})")
    print(
        f"\n{t['wall_s']:.1f} s wall, {t['eval_s']:.1f} s evaluating, engine overhead "
        f"{t['overhead_fraction'] * 100:.1f}%; hypervolume {result.hypervolume():.4f}; "
        f"study {result.study.study_name!r} in {redact(result.storage)}"
    )
    return 0


def add_parser(sub: Any) -> None:
    srch = sub.add_parser(
        "search",
        help="run (or resume) a search from a study config YAML",
        description="Run the study described by a studies/<name>.yaml config; re-running resumes it.",
    )
    srch.add_argument("config", help="study config YAML, e.g. studies/digits_cnn.yaml")
    for name, setting in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        if name == "executor":
            srch.add_argument(flag, choices=("local", "ray"), help="override the executor")
            continue
        kind = {"int": int, "float": float}.get(setting.cli, str)
        srch.add_argument(
            flag,
            type=kind,
            metavar="N" if kind is int else "X" if kind is float else "VALUE",
            dest=f"set_{name}",
            help=f"override {name}: {setting.help}" + (" (read as YAML)" if setting.cli == "yaml" else ""),
        )
    srch.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the trials on the Ray cluster whose head listens at HOST:PORT (implies --executor ray)",
    )
    srch.add_argument(
        "--ray-working-dir",
        metavar="DIR",
        help="ship DIR (your model/task modules) to every Ray worker; it is on their path "
        "(implies --executor ray; overrides the config's executor_args.working_dir)",
    )
    srch.add_argument(
        "--ray-py-module",
        metavar="PATH",
        action="append",
        help="ship a module (package directory, .py or .whl file) to every Ray worker; repeatable "
        "(implies --executor ray; overrides the config's executor_args.py_modules)",
    )
    srch.add_argument(
        "--ray-actors",
        type=int,
        metavar="N",
        help="this driver's Ray actors (default: as many as the cluster's free CPUs fit; give each of "
        "several drivers on one cluster its share; implies --executor ray)",
    )
    srch.add_argument(
        "--holdout",
        type=float,
        metavar="SHARE",
        help="hold out this share of the task's eval_data as its test_data (deterministic, stratified): the "
        "final front is scored there once, after the search decided (overrides the config's holdout)",
    )
    srch.add_argument("--json", action="store_true", help="print the result as JSON")
    srch.add_argument("--quiet", action="store_true", help="no live progress")
    srch.set_defaults(func=_cmd_search)
