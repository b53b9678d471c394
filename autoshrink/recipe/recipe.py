"""Recipe: the chosen policy and everything needed to replay and check it, as versioned YAML.

Fields (format autoshrink-recipe/2): autoshrink_version, torch_version; source {study, storage, trial};
seed (== finetune.seed); device; example_input {shape, dtype}; metrics / baseline; finetune
(FinetuneConfig); train_transform (augmentation name or null); unlabeled (written only where the fine-tune
distilled on Task.unlabeled_data: its example count); policy; model {class, sha256, layers}
(the fingerprint); checksum (sha256 of the canonical content; delete the line to accept hand edits).
Loading uses yaml.safe_load only and validates every field; errors name the file, line, field and value.
Format 1 files (autoshrink 0.1) still load and replay as then (oneshot, bn_batches 0, no augmentation).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from ..errors import ConfigError, RecipeError
from ..files import write_atomically
from ..measure import Measurement
from ..policy import Policy
from ..space.yaml_source import Source, load_yaml
from ..train import FinetuneConfig
from ..version import __version__
from .fingerprint import Fingerprint, InputSpec
from .schema import FINETUNE_V1, FORMAT, RUNTIMES, Origin, checksum, metric_record, parse_fields

HEADER = (
    "# autoshrink recipe: a compression policy and how to replay it (docs: README, 'Recipes').\n"
    "# autoshrink apply <this file> --model pkg.module:factory [--task pkg.module:factory] --out model.ashz\n"
    "# Hand edits: delete the checksum line at the end, or loading refuses the modified file.\n"
)


def versions() -> dict[str, str]:
    """The producing versions a recipe records: {"autoshrink": ..., "torch": ...}."""
    return {"autoshrink": __version__, "torch": torch.__version__}


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A compression policy with its fine-tune settings, the model fingerprint it fits, the example
    input spec, what it measured (and the untouched baseline), and where it came from.

    `save(path)` writes YAML with a checksum; `Recipe.load(path)` validates everything;
    `ash.apply_recipe(model, recipe, task)` replays it. `metrics` and `baseline` are Measurements
    holding the recorded fields only (accuracy, size_bytes, latency_ms, macs, runtime, batch_size,
    threads, device).
    """

    model: Fingerprint
    policy: Policy
    finetune: FinetuneConfig
    example_input: InputSpec
    metrics: Measurement
    baseline: Measurement
    source: Origin
    train_transform: str | None = None
    unlabeled: int | None = None
    autoshrink_version: str = __version__
    torch_version: str = torch.__version__
    path: str = field(default="", compare=False, repr=False)

    # ------------------------------------------------------------------ views
    @property
    def seed(self) -> int:
        return self.finetune.seed

    @property
    def device(self) -> str:
        return self.metrics.device

    @property
    def measurement(self) -> Measurement:
        """The recorded metrics (alias of `metrics`)."""
        return self.metrics

    @property
    def trial(self) -> int:
        return self.source.trial

    @property
    def measure_runtime(self) -> str:
        """The `measure(runtime=...)` that reproduces the recorded runtime ("float", "int8", "int8-full", ...)."""
        return RUNTIMES[self.metrics.runtime]

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """Plain data in the YAML layout (without the checksum)."""
        return {
            "format": FORMAT,
            "autoshrink_version": self.autoshrink_version,
            "torch_version": self.torch_version,
            "source": {"study": self.source.study, "storage": self.source.storage, "trial": self.source.trial},
            "seed": self.seed,
            "device": self.device,
            "example_input": self.example_input.to_dict(),
            "metrics": metric_record(self.metrics),
            "baseline": metric_record(self.baseline),
            "finetune": self.finetune.to_dict(),
            "train_transform": self.train_transform,
            **({"unlabeled": self.unlabeled} if self.unlabeled is not None else {}),
            "policy": self.policy.to_dict(),
            "model": self.model.to_dict(),
        }

    def to_yaml(self) -> str:
        data = self.to_dict()
        data["checksum"] = checksum(data)
        return HEADER + yaml_dump(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the recipe YAML to `path` atomically (files.write_atomically)."""
        write_atomically(path, self.to_yaml(), "recipe", RecipeError)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read and validate a recipe YAML (safe YAML only: loading never runs code)."""
        try:
            data, src = load_yaml(path)
        except RecipeError:
            raise
        except ConfigError as exc:
            raise RecipeError(str(exc)) from None
        return cls.from_dict(data, src)

    @classmethod
    def from_dict(cls, data: Any, src: Source | None = None) -> Recipe:
        """Validate plain recipe data (as loaded from YAML); `src` locates errors (file and line)."""
        return cls(**parse_fields(data, src or Source("<recipe>")))


class _Flow(dict):
    """A mapping written on one line (a layer's policy or signature)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=True))
_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def yaml_dump(data: Mapping[str, Any]) -> str:
    """Block style for sections, one line per layer (policy and fingerprint) and per shape."""
    data = dict(data)
    data["policy"] = {**data["policy"], "layers": {n: _Flow(v) for n, v in data["policy"]["layers"].items()}}
    data["model"] = {**data["model"], "layers": {n: _Flow(v) for n, v in data["model"]["layers"].items()}}
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=200)


# ---------------------------------------------------------------------------------------------- validation


def recipe_from_search(
    *,
    study: str,
    storage: str,
    trial: int,
    policy: Mapping[str, Any],
    measurement: Mapping[str, Any],
    baseline: Mapping[str, Any],
    finetune: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    example_input: Mapping[str, Any],
    train_transform: str | None = None,
    produced_by: Mapping[str, str] | None = None,
    unlabeled: int | None = None,
) -> Recipe:
    """A Recipe from a study's stored records (plain dicts: no model needed). A password in the
    storage URL is masked."""
    produced = {**versions(), **(produced_by or {})}
    storage = re.sub(r"//([^:/@]*):[^/]*@", r"//\1:***@", storage)  # never write a database password
    data = {
        "format": FORMAT,
        "autoshrink_version": produced["autoshrink"],
        "torch_version": produced["torch"],
        "source": {"study": study, "storage": storage, "trial": trial},
        "seed": finetune.get("seed"),
        "device": measurement.get("device"),
        "example_input": dict(example_input),
        "metrics": metric_record(measurement),
        "baseline": metric_record(baseline),
        "finetune": {**FINETUNE_V1, **dict(finetune)},
        "train_transform": train_transform,
        **({"unlabeled": unlabeled} if unlabeled is not None else {}),
        "policy": dict(policy),
        "model": dict(fingerprint),
    }
    return Recipe(**parse_fields(data, Source(f"study {study!r} trial {trial}")))
