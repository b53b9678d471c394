"""`autoshrink report`: a study's self-contained HTML report (no model needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .outputs import check_output
from .recipes import _study_location, study_inputs


def _cmd_report(args: argparse.Namespace) -> int:
    from ..report import write_report
    from ..report.figures import with_recorded_constraint
    from ..search import load_result

    name, storage = _study_location(args.study, args.storage)
    target = check_output(
        args.output or Path("studies") / name / "report.html",
        "-o",
        "report",
        study_inputs(args.study, storage),
        make_parent=True,
    )
    result = with_recorded_constraint(load_result(name, storage))
    path = write_report(result, target)
    trials = result.trials
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    summary = {
        "path": str(path),
        "study": name,
        "trials": len(trials),
        "complete": int(states.get("COMPLETE", 0)),
        "failed": int(states.get("FAIL", 0)),
        "front": len(result.pareto),
        "hypervolume": result.hypervolume(),
        "bytes": path.stat().st_size,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(
        f"wrote {path} ({summary['bytes']} bytes): study {name!r}, {summary['trials']} trials "
        f"({summary['complete']} complete, {summary['failed']} failed), front {summary['front']}, "
        f"hypervolume {summary['hypervolume']:.6g}"
    )
    return 0


def add_parser(sub: Any) -> None:
    rep = sub.add_parser(
        "report",
        help="write a study's HTML report (Pareto plots, hypervolume, policies)",
        description="Write one self-contained HTML page (works offline) for a study: the baseline, "
        "Pareto scatters, the hypervolume history, the front's per-layer policies, "
        "the front as a table and the failed trials. Opens the study read-only.",
    )
    rep.add_argument("study", metavar="STUDY", help="a study config YAML (its name and storage) or a study name")
    rep.add_argument(
        "-o", "--output", metavar="PATH", help="the HTML file to write (default studies/<name>/report.html)"
    )
    rep.add_argument("--storage", help="Optuna storage URL (default: the config's, or sqlite:///studies/<name>.db)")
    rep.add_argument("--json", action="store_true", help="print path, trial counts, front size and hypervolume as JSON")
    rep.set_defaults(func=_cmd_report)
