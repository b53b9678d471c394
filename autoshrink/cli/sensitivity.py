"""`autoshrink sensitivity`: the sensitivity table of a study config's model, task and space."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..search.study.schema import StudyAttr


def pivot(table: pd.DataFrame) -> str:
    """Layers by single choices, the accuracy drop of each alone in pp ('x' where it failed)."""
    from ..report.stages import choice_label

    df = table.copy()
    df["choice"] = [choice_label(f, v) for f, v in zip(df["field"], df["value"])]
    df["drop"] = [("x" if isinstance(e, str) else f"{d * 100:.2f}") for d, e in zip(df["accuracy_drop"], df["error"])]
    order = list(dict.fromkeys(df["choice"]))
    wide = df.pivot(index="layer", columns="choice", values="drop").reindex(columns=order)
    wide = wide.reindex(list(dict.fromkeys(df["layer"]))).fillna("-")
    return wide.to_string()


def _stored(name: str, storage: str | None) -> pd.DataFrame | None:
    """The pre-pass table a search of this study already stored, if any (read-only)."""
    from ..errors import ConfigError
    from ..search import load_result
    from ..search.stages.sensitivity import table

    url = storage or f"sqlite:///studies/{name}.db"
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        return None
    try:
        result = load_result(name, url)
    except ConfigError:  # no such study (or no baseline yet) in that storage: measure it
        return None
    rows = (result.study.user_attrs.get(StudyAttr.SENSITIVITY) or {}).get("rows")
    if not rows:
        return None
    df = table(rows)
    df.attrs["baseline"] = result.baseline.to_dict()
    df.attrs["narrowed"] = result.study.user_attrs.get(StudyAttr.NARROWED) or []
    df.attrs["source"] = f"stored in study {name!r} ({url})"
    return df


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from torch import nn

    from ..search.stages.narrow import narrow, narrow_cutoff
    from ..search.stages.sensitivity import sensitivity
    from ..search.study_config import call_factory, load_study_config
    from ..space import bind, load_space
    from ..techniques.structured import structured_blockers

    cfg = load_study_config(args.config)
    space = load_space(cfg.space_path())
    df = None if args.fresh else _stored(cfg.name, cfg.settings.storage)
    model = task = None
    if df is None:
        task = cfg.build_task()
        model = call_factory(cfg.model, cfg.model_args, "model", cfg.source, nn.Module)
        runtime = cfg.settings.runtime if cfg.settings.runtime != "auto" else "float"
        df = sensitivity(
            model, task, space, executor=args.executor or cfg.settings.executor, runtime=runtime, seed=cfg.settings.seed
        )
        df.attrs["source"] = f"measured now ({df.attrs['seconds']:.1f} s, runtime {runtime})"
    cutoff = narrow_cutoff(cfg.settings.max_accuracy_drop, args.cutoff)
    if "narrowed" in df.attrs and args.cutoff is None:
        removed = df.attrs["narrowed"]
    else:
        if model is None:
            model = call_factory(cfg.model, cfg.model_args, "model", cfg.source, nn.Module)
            task = cfg.build_task()
        bound = bind(space, model)
        bound = bound.without_structured(structured_blockers(model, bound.structured_candidates(), task.example_input))
        _, removed = narrow(bound, df.to_dict("records"), cutoff)
    if args.json:
        print(
            json.dumps(
                {
                    "study": cfg.name,
                    "source": df.attrs["source"],
                    "cutoff": cutoff,
                    "removed": removed,
                    "baseline": df.attrs.get("baseline"),
                    "rows": json.loads(df.to_json(orient="records")),
                },
                indent=1,
            )
        )
        return 0
    base = df.attrs.get("baseline") or {}
    print(
        f"sensitivity of {cfg.name!r} ({df.attrs['source']}): accuracy drop in pp of each choice applied alone to "
        f"one layer, no fine-tune; baseline accuracy {base.get('accuracy', float('nan')) * 100:.2f}%, "
        f"{base.get('size_bytes', '?')} B"
    )
    print(pivot(df))
    print(
        f"\nnarrowed space (cutoff {cutoff * 100:.2f} pp): "
        + (
            "nothing removed"
            if not removed
            else "; ".join(f"{r['layer']} {r['field']} {r['value']}: {r['reason']}" for r in removed)
        )
    )
    return 0


def add_parser(sub: Any) -> None:
    sen = sub.add_parser(
        "sensitivity",
        help="print the per-layer sensitivity table of a study config",
        description="Every single choice of the study's space applied alone to one layer, measured "
        "without fine-tuning: the accuracy drop, bytes, MACs and latency saved (the "
        "search's pre-pass). Printed from the study when a search stored it, else "
        "measured now (nothing is written).",
    )
    sen.add_argument("config", help="study config YAML, e.g. studies/digits_cnn.yaml")
    sen.add_argument("--fresh", action="store_true", help="measure again even if the study stored a table")
    sen.add_argument("--cutoff", type=float, help="narrowing cutoff (a drop fraction, 0.1 = 10 pp) to show")
    sen.add_argument("--executor", choices=("local", "ray"), help="override the executor")
    sen.add_argument("--json", action="store_true", help="print the table as JSON")
    sen.set_defaults(func=_cmd_sensitivity)
