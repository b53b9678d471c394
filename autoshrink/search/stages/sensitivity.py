"""Sensitivity pre-pass: every single choice of the space, applied alone to one layer, measured.

One row per (layer, choice): "sparsity", "structured", "bits" or "rank", applied to that layer only with
no fine-tuning (BatchNorm re-estimated per FinetuneConfig.bn_batches where the structure changed) and
measured on the study's runtime: the accuracy drop, and the bytes, MACs and latency it saves. Where the
layer's space offers calibrated choices (rounding gptq, group sizes, criterion wanda / sparsegpt), bits
and sparsity rows use the most accurate of them (calibrated_variant; the row records which). The rows
run in parallel on the executor. The table drives narrow.py and warmstart.py and is stored in the study
(user attribute "sensitivity"), so a resume does not measure it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from torch import nn

from ...errors import ConfigError
from ...executors import Job, Outcome, make_executor
from ...measure import LatencyConfig, Measurement
from ...measure.cost import COLUMNS as COST_COLUMNS
from ...measure.cost import columns
from ...policy import SEMI_STRUCTURED, LayerPolicy, Policy
from ...space import BoundSpace, SearchSpace, bind
from ...space.bind import calibrated_variant
from ...task import Task, require_model_and_task
from ...task_check import check_task
from ...techniques.structured import structured_blockers
from ...train import FinetuneConfig

COLUMNS = [
    "layer",
    "field",
    "value",
    "accuracy",
    "accuracy_drop",
    "size_bytes",
    "bytes_saved",
    "macs_saved",
    "latency_ms",
    "latency_saved",
    "skipped",
    "error",
    "seconds",
    *COST_COLUMNS,
]
FIRST_KEY = -1000  # executor keys of the rows: FIRST_KEY - i (trials use numbers >= 0)


@dataclass(frozen=True)
class Choice1:
    """One choice of one layer, applied alone. A bits choice of 2..8 is rounded by `rounding` with
    `group_size`, a sparsity choice pruned by `criterion`: the most accurate variants the layer's space
    offers (calibrated_variant), so the table says what the best candidate with that choice loses."""

    layer: str
    field: str  # sparsity | structured | bits | rank
    value: float | str  # sparsity may be "2:4"
    rounding: str = "nearest"
    group_size: int = 0
    criterion: str = "magnitude"

    def policy(self) -> Policy:
        if self.field == "sparsity":
            lp = LayerPolicy(sparsity=self.value, criterion=self.criterion)
        elif self.field == "structured":
            lp = LayerPolicy(sparsity=self.value, structured=True, criterion=self.criterion)
        elif self.field == "bits":
            codes = 2 <= int(self.value) <= 8
            lp = LayerPolicy(
                bits=int(self.value),
                rounding=self.rounding if codes else "nearest",
                group_size=self.group_size if codes else 0,
            )
        else:
            lp = LayerPolicy(rank=self.value)
        return Policy(layers={self.layer: lp})

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Choice1:
        """The choice a table row measured (rows stored before calibrated variants read as plain ones)."""
        return cls(
            r["layer"],
            r["field"],
            r["value"],
            r.get("rounding", "nearest"),
            int(r.get("group_size", 0)),
            r.get("criterion", "magnitude"),
        )


def choices(bound: BoundSpace) -> list[Choice1]:
    """Every non-identity single choice of the bound space, layer by layer."""
    out: list[Choice1] = []
    for layer, fields in bound.layers.items():
        v = calibrated_variant(fields)
        structured = fields["structured"].values
        for s in fields["sparsity"].values:
            if s == 0:
                continue
            if False in structured or s == SEMI_STRUCTURED:  # 2:4 is never structured (without_moot)
                out.append(Choice1(layer, "sparsity", s, criterion=v["criterion"]))
            if True in structured and s != SEMI_STRUCTURED:  # channels rank by wanda where it is the variant
                channels = "wanda" if v["criterion"] == "wanda" else "magnitude"
                out.append(Choice1(layer, "structured", s, criterion=channels))
        out += [
            Choice1(layer, "bits", b, rounding=v["rounding"], group_size=v["group_size"])
            for b in fields["bits"].values
            if b != 32
        ]
        out += [Choice1(layer, "rank", r) for r in fields["rank"].values if r < 1.0]
    return out


def row(c: Choice1, o: Outcome, baseline: Measurement, base_accuracy: float | None = None) -> dict[str, Any]:
    """A table row from one measured choice (a failed one keeps its error and no numbers); a
    calibrated variant's rounding, group size and criterion are kept where they are not the defaults.
    `base_accuracy`: the untouched model's on the examples the choice was scored on (default: all)."""
    r: dict[str, Any] = {
        "layer": c.layer,
        "field": c.field,
        "value": c.value,
        "seconds": round(o.seconds, 4),
        "skipped": None,
        "error": o.error,
    }
    variant = {"rounding": c.rounding, "group_size": c.group_size, "criterion": c.criterion}
    r.update({k: v for k, v in variant.items() if v != Choice1.__dataclass_fields__[k].default})
    if o.ok:
        m = o.measurement
        r.update(
            accuracy=m.accuracy,
            accuracy_drop=(baseline.accuracy if base_accuracy is None else base_accuracy) - m.accuracy,
            size_bytes=m.size_bytes,
            bytes_saved=baseline.size_bytes - m.size_bytes,
            macs_saved=baseline.macs - m.macs,
            latency_ms=m.latency_ms,
            latency_saved=baseline.latency_ms - m.latency_ms,
            skipped="; ".join(m.skipped) or None,
            **columns(m.cost),
        )
        if m.layer_latency_ms:  # the latency lookup table's entries (not a column of the table)
            r["layer_latency_ms"] = dict(m.layer_latency_ms)
    return r


def table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS)


def run_choices(
    ex: Any,
    wait: Callable[[Any], list[Outcome]],
    items: Sequence[Choice1],
    baseline: Measurement,
    runtime: str,
    bn_batches: int,
    seed: int,
    on_row: Callable[[int, Choice1, Outcome], None] | None = None,
    deadline: float | None = None,
    examples: tuple[int, ...] | None = None,
    base_accuracy: float | None = None,
    bias_correction: bool = False,
) -> tuple[list[dict[str, Any]], float]:
    """Measure every choice on the executor (all submitted at once, in `items` order: the executor keeps
    its workers busy); return the rows in `items` order and the summed evaluation seconds. `on_row(done,
    choice, outcome)` is called as each finishes (progress). Past `deadline` (a time.perf_counter()
    value) the choices not yet finished are cancelled and have no row. `examples`: score each on these
    indices of the selection split only, its drop against `base_accuracy` (the untouched model's there);
    `bias_correction`: as the search's fine-tune settings say (FinetuneConfig)."""
    cfg = FinetuneConfig(steps=0, bn_batches=bn_batches, seed=seed, bias_correction=bias_correction)
    keys = {FIRST_KEY - i: c for i, c in enumerate(items)}
    sub = {} if examples is None else {"examples": examples}
    for key, c in keys.items():
        ex.submit(key, c.policy(), cfg, runtime=runtime, **sub)
    got: dict[int, Outcome] = {}
    try:
        while len(got) < len(keys):
            for o in wait(ex):
                got[o.key] = o
                if on_row is not None:
                    on_row(len(got), keys[o.key], o)
            if deadline is not None and len(got) < len(keys) and time.perf_counter() >= deadline:
                ex.cancel()
                break
    except BaseException:
        ex.cancel()
        raise
    rows = [row(keys[k], got[k], baseline, base_accuracy) for k in keys if k in got]
    return rows, sum(o.seconds for o in got.values())


def sensitivity(
    model: nn.Module,
    task: Task,
    space: SearchSpace,
    *,
    executor: Any = "local",
    runtime: str = "float",
    latency: LatencyConfig | None = None,
    bn_batches: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The sensitivity table of `model` on `task` over `space` (see the module docstring): one row per
    layer and single choice, with columns layer, field, value, accuracy, accuracy_drop (fraction),
    size_bytes, bytes_saved, macs_saved, latency_ms, latency_saved (ms), skipped (what the technique
    left undone), error, seconds, and its cost split (apply_s .. latency_s, measure/cost.py). `runtime`
    is "float" or "int8"; the untouched model is measured first (`.attrs["baseline"]`, and
    `.attrs["seconds"]` the evaluation time)."""
    from .runtime import check_runtime

    require_model_and_task(model, task, "sensitivity")
    if not isinstance(space, SearchSpace):
        raise ConfigError(f"sensitivity: space must be a SearchSpace (use ash.load_space), got {type(space).__name__}.")
    check_task(model, task)
    if check_runtime(runtime) == "auto":
        runtime = "float"
    bound = bind(space, model)
    bound = bound.without_structured(structured_blockers(model, bound.structured_candidates(), task.example_input))
    ex = make_executor(executor)
    cfg = space.finetune
    t0 = time.perf_counter()
    try:
        ex.start(Job(model=model, task=task, finetune=cfg, latency=latency))
        ex.submit(FIRST_KEY + 1, Policy(), FinetuneConfig(steps=0), runtime=runtime)
        base: list[Outcome] = []
        while not base:
            base = ex.wait()
        if not base[0].ok:
            raise ConfigError(f"measuring the untouched model failed: {base[0].error}")
        baseline = base[0].measurement
        rows, _ = run_choices(
            ex,
            lambda e: e.wait(),
            choices(bound),
            baseline,
            runtime,
            cfg.bn_batches if bn_batches is None else bn_batches,
            seed,
        )
    finally:
        ex.shutdown()
    df = table(rows)
    df.attrs["baseline"] = baseline.to_dict()
    df.attrs["seconds"] = time.perf_counter() - t0
    return df
