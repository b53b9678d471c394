"""Recipe: the chosen policy and everything needed to replay and check it, as versioned YAML.

Fields (format autoshrink-recipe/2): autoshrink_version, torch_version; source {study, storage, trial};
seed (== finetune.seed); device; example_input {shape, dtype}; metrics / baseline; finetune
(FinetuneConfig); train_transform (augmentation name or null); policy; model {class, sha256, layers}
(the fingerprint); checksum (sha256 of the canonical content; delete the line to accept hand edits).
Loading uses yaml.safe_load only and validates every field; errors name the file, line, field and value.
Format 1 files (autoshrink 0.1) still load and replay as then (oneshot, bn_batches 0, no augmentation).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import yaml

from ..errors import ConfigError, RecipeError, describe, finite_number
from ..measure import Measurement
from ..policy import LayerPolicy, Policy
from ..space.yaml_source import Source, load_yaml
from ..train import FinetuneConfig
from ..version import __version__
from .fingerprint import Fingerprint, InputSpec, LayerSignature, normalize

FORMAT = "autoshrink-recipe/2"
FORMAT_V1 = "autoshrink-recipe/1"
_FORMAT_RE = re.compile(r"autoshrink-recipe/(\d+)")
KEYS = ("format", "autoshrink_version", "torch_version", "source", "seed", "device", "example_input", "metrics",
        "baseline", "finetune", "train_transform", "policy", "model")
KEYS_V1 = tuple(k for k in KEYS if k != "train_transform")
# what a format-1 fine-tune did (its settings lack these keys)
FINETUNE_V1 = {"schedule": "oneshot", "ramp": 0.5, "ramp_updates": 10, "bn_batches": 0}
METRIC_KEYS = ("accuracy", "size_bytes", "latency_ms", "macs", "runtime", "batch_size", "threads")
RUNTIMES = {"float": "float", "int8-dynamic": "int8", "onnxruntime": "onnxruntime",
            "onnxruntime-static": "onnxruntime-static"}  # recorded runtime -> measure(runtime=...)
HEADER = ("# autoshrink recipe: a compression policy and how to replay it (docs: README, 'Recipes').\n"
          "# autoshrink apply <this file> --model pkg.module:factory [--task pkg.module:factory] --out model.ashz\n"
          "# Hand edits: delete the checksum line at the end, or loading refuses the modified file.\n")


def versions() -> dict[str, str]:
    """The producing versions a recipe records: {"autoshrink": ..., "torch": ...}."""
    return {"autoshrink": __version__, "torch": torch.__version__}


def checksum(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of `data` without its checksum (key order and YAML layout do not matter)."""
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Origin:
    """The study and trial a recipe was exported from."""

    study: str
    storage: str
    trial: int


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
        """The `measure(runtime=...)` that reproduces the recorded runtime: "float" or "int8"."""
        return RUNTIMES[self.metrics.runtime]

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """Plain data in the YAML layout (without the checksum)."""
        return {
            "format": FORMAT, "autoshrink_version": self.autoshrink_version, "torch_version": self.torch_version,
            "source": {"study": self.source.study, "storage": self.source.storage, "trial": self.source.trial},
            "seed": self.seed, "device": self.device, "example_input": self.example_input.to_dict(),
            "metrics": {k: getattr(self.metrics, k) for k in METRIC_KEYS},
            "baseline": {k: getattr(self.baseline, k) for k in METRIC_KEYS},
            "finetune": self.finetune.to_dict(), "train_transform": self.train_transform,
            "policy": self.policy.to_dict(), "model": self.model.to_dict(),
        }

    def to_yaml(self) -> str:
        data = self.to_dict()
        data["checksum"] = checksum(data)
        return HEADER + yaml_dump(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the recipe YAML to `path` atomically (a temporary file, then os.replace)."""
        target = Path(path)
        text = self.to_yaml()
        tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:  # write then rename: a failure never leaves a half-written recipe at `path`
            tmp.write_text(text)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RecipeError(f"{target}: cannot write the recipe ({exc.strerror}); check the folder exists "
                              "and is writable.") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Recipe":
        """Read and validate a recipe YAML (safe YAML only: loading never runs code)."""
        try:
            data, src = load_yaml(path)
        except RecipeError:
            raise
        except ConfigError as exc:
            raise RecipeError(str(exc)) from None
        return cls.from_dict(data, src)

    @classmethod
    def from_dict(cls, data: Any, src: Source | None = None) -> "Recipe":
        """Validate plain recipe data (as loaded from YAML); `src` locates errors (file and line)."""
        return _parse(data, src or Source("<recipe>"))


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

class _Checker:
    """Field validation against a Source: every error names file:line, the field, the value and the fix."""

    def __init__(self, src: Source) -> None:
        self.src = src

    def error(self, path: str, message: str) -> RecipeError:
        return RecipeError(f"{self.src.at(path)}: {message}")

    def relocate(self, exc: ConfigError) -> RecipeError:
        """A PolicyError / ConfigError whose message starts with a field path, located in the file."""
        path, _, rest = str(exc).partition(": ")
        return self.error(path, rest) if rest else RecipeError(f"{self.src.name}: {exc}")

    def mapping(self, value: Any, path: str, keys: tuple[str, ...] | None = None,
                required: tuple[str, ...] = ()) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(path, f"got {describe(value)}; expected a mapping"
                                   + (f" with {', '.join(keys)}" if keys else "") + ". Fix: re-export the recipe.")
        root = path == "<root>"
        unknown = [k for k in value if keys is not None and k not in keys]
        if unknown:
            raise self.error(unknown[0] if root else f"{path}.{unknown[0]}", f"unknown field {unknown[0]!r}; allowed "
                                                                            f"are {', '.join(keys)}. Fix: remove it.")
        for k in required:
            if k not in value:
                raise self.error(k if root else f"{path}.{k}", f"missing; {'a recipe' if root else path} needs "
                                 f"{', '.join(required)}. Fix: re-export the recipe, or add the field.")
        return value

    def check(self, value: Any, path: str, ok: Callable[[Any], bool], rule: str) -> Any:
        if not ok(value):
            raise self.error(path, f"got {describe(value)}; {rule}.")
        return value

    def integer(self, value: Any, path: str, low: int = 0) -> int:
        return self.check(value, path, lambda v: type(v) is int and v >= low, f"expected an integer >= {low}")

    def number(self, value: Any, path: str, low: float = -math.inf) -> float:
        return float(self.check(value, path, lambda v: finite_number(v) and v >= low,
                                f"expected a finite number >= {low}"))

    def text(self, value: Any, path: str) -> str:
        return self.check(value, path, lambda v: isinstance(v, str) and v != "", "expected a non-empty string")


def _check_format(data: Any, src: Source) -> int:
    """The format version (1 or 2) of a recipe, or a one-line error."""
    fmt = data.get("format") if isinstance(data, Mapping) else None
    if fmt == FORMAT:
        return 2
    if fmt == FORMAT_V1:
        return 1
    m = _FORMAT_RE.fullmatch(fmt) if isinstance(fmt, str) else None
    if m and int(m.group(1)) > 2:
        raise RecipeError(f"{src.at('format')}: written by a newer autoshrink (format {fmt}); this one reads "
                          f"{FORMAT}. Fix: upgrade autoshrink.")
    got = "no 'format' field" if fmt is None else f"format {describe(fmt)}"
    raise RecipeError(f"{src.at('format')}: not an autoshrink recipe ({got}; expected 'format: {FORMAT}'). "
                      "Fix: pass a file written by `autoshrink export` or Recipe.save.")


def _check_checksum(data: Mapping[str, Any], c: _Checker) -> None:
    if "checksum" not in data:
        return  # deleted on purpose: hand edits accepted
    if data["checksum"] != checksum(data):
        raise c.error("checksum", "the recipe was modified after it was written (checksum mismatch). Fix: if "
                                  "the edit is intended, delete the checksum line to accept hand edits; else "
                                  "export the recipe again.")


def _metrics(c: _Checker, value: Any, path: str, device: str) -> Measurement:
    m = c.mapping(value, path, METRIC_KEYS, METRIC_KEYS)
    c.check(m["runtime"], f"{path}.runtime", lambda v: v in RUNTIMES, f"use one of {', '.join(RUNTIMES)}")
    return Measurement(
        accuracy=c.number(m["accuracy"], f"{path}.accuracy"),
        size_bytes=c.integer(m["size_bytes"], f"{path}.size_bytes", 1),
        latency_ms=c.number(m["latency_ms"], f"{path}.latency_ms", 0.0), macs=c.integer(m["macs"], f"{path}.macs"),
        runtime=m["runtime"], batch_size=c.integer(m["batch_size"], f"{path}.batch_size", 1),
        threads=c.integer(m["threads"], f"{path}.threads", 1), device=device)


def _fingerprint(c: _Checker, value: Any) -> Fingerprint:
    m = c.mapping(value, "model", ("class", "sha256", "layers"), ("class", "layers"))
    layers: dict[str, LayerSignature] = {}
    for name, sig in c.mapping(m["layers"], "model.layers").items():
        where = f"model.layers.{name}"
        s = c.mapping(sig, where, ("type", "params"), ("type", "params"))
        params = {}
        for k, shape in c.mapping(s["params"], f"{where}.params").items():
            params[str(k)] = tuple(c.check(shape, f"{where}.params.{k}", lambda v: isinstance(v, list) and all(
                type(d) is int and d >= 0 for d in v), "expected a list of dimensions (integers >= 0)"))
        layers[str(name)] = LayerSignature(c.text(s["type"], f"{where}.type"), params)
    fp = Fingerprint(c.text(m["class"], "model.class"), layers, m.get("sha256") or "")
    if fp.sha256 != fp.content_sha256:
        raise c.error("model.sha256", f"got {describe(fp.sha256)}, which does not match model.class and "
                                      "model.layers (they were edited). Fix: delete the sha256 line to accept "
                                      "the edited layers.")
    return fp


def _policy(c: _Checker, value: Any, fp: Fingerprint) -> Policy:
    m = c.mapping(value, "policy", ("layers", "distill"), ("layers", "distill"))
    c.check(m["distill"], "policy.distill", lambda v: isinstance(v, bool), "expected true or false")
    known = {normalize(n) for n in fp.layers}
    layers = {}
    for name, lp in (c.mapping(m["layers"], "policy.layers") if m["layers"] is not None else {}).items():
        if normalize(str(name)) not in known:
            raise c.error(f"policy.layers.{name}", "names a layer that is not in the model fingerprint "
                                                   "(model.layers). Fix: use a layer listed there, or remove it.")
        try:
            layers[str(name)] = LayerPolicy.from_dict(lp, where=f"policy.layers.{name}")
        except ConfigError as exc:
            raise c.relocate(exc) from None
    return Policy(layers=layers, distill=m["distill"])


def _finetune(c: _Checker, value: Any, seed: Any, version: int) -> FinetuneConfig:
    keys = tuple(FinetuneConfig.__dataclass_fields__)
    if version == 1:
        v1 = tuple(k for k in keys if k not in FINETUNE_V1)
        value = {**FINETUNE_V1, **c.mapping(value, "finetune", v1, v1)}
    m = c.mapping(value, "finetune", keys, keys)
    try:
        cfg = FinetuneConfig.from_dict(m)
    except ConfigError as exc:
        raise c.relocate(exc) from None
    c.check(seed, "seed", lambda v: type(v) is int, "expected an integer")
    if seed != cfg.seed:
        raise c.error("seed", f"got {seed} but finetune.seed is {cfg.seed}; the fine-tune replays with this seed, "
                              "so they must agree. Fix: make them equal.")
    return cfg


def _parse(data: Any, src: Source) -> Recipe:
    version = _check_format(data, src)
    c = _Checker(src)
    _check_checksum(data, c)
    keys = KEYS if version == 2 else KEYS_V1
    c.mapping(data, "<root>", keys + ("checksum",), keys)
    transform = data.get("train_transform")
    if transform is not None:
        c.text(transform, "train_transform")
    device = c.text(data["device"], "device")
    spec = c.mapping(data["example_input"], "example_input", ("shape", "dtype"), ("shape", "dtype"))
    shape = c.check(spec["shape"], "example_input.shape", lambda v: isinstance(v, list) and all(
        type(d) is int and d >= 0 for d in v), "expected a list of dimensions (integers >= 0), e.g. [1, 1, 28, 28]")
    dtype = c.check(spec["dtype"], "example_input.dtype", lambda v: isinstance(v, str) and isinstance(
        getattr(torch, v, None), torch.dtype), "expected a torch dtype name such as float32 or int64")
    source = c.mapping(data["source"], "source", ("study", "storage", "trial"), ("study", "storage", "trial"))
    fp = _fingerprint(c, data["model"])
    return Recipe(
        model=fp, policy=_policy(c, data["policy"], fp),
        finetune=_finetune(c, data["finetune"], data["seed"], version), train_transform=transform,
        example_input=InputSpec(tuple(shape), dtype),
        metrics=_metrics(c, data["metrics"], "metrics", device),
        baseline=_metrics(c, data["baseline"], "baseline", device),
        source=Origin(c.text(source["study"], "source.study"), c.text(source["storage"], "source.storage"),
                      c.integer(source["trial"], "source.trial")),
        autoshrink_version=c.text(data["autoshrink_version"], "autoshrink_version"),
        torch_version=c.text(data["torch_version"], "torch_version"), path=src.name,
    )


def recipe_from_search(*, study: str, storage: str, trial: int, policy: Mapping[str, Any],
                       measurement: Mapping[str, Any], baseline: Mapping[str, Any], finetune: Mapping[str, Any],
                       fingerprint: Mapping[str, Any], example_input: Mapping[str, Any],
                       train_transform: str | None = None, produced_by: Mapping[str, str] | None = None) -> Recipe:
    """A Recipe from a study's stored records (plain dicts: no model needed). A password in the
    storage URL is masked."""
    produced = {**versions(), **(produced_by or {})}
    storage = re.sub(r"//([^:/@]*):[^/]*@", r"//\1:***@", storage)  # never write a database password
    data = {
        "format": FORMAT, "autoshrink_version": produced["autoshrink"], "torch_version": produced["torch"],
        "source": {"study": study, "storage": storage, "trial": trial}, "seed": finetune.get("seed"),
        "device": measurement.get("device"), "example_input": dict(example_input),
        "metrics": {k: measurement.get(k) for k in METRIC_KEYS}, "baseline": {k: baseline.get(k) for k in METRIC_KEYS},
        "finetune": {**FINETUNE_V1, **dict(finetune)}, "train_transform": train_transform, "policy": dict(policy),
        "model": dict(fingerprint),
    }
    return _parse(data, Source(f"study {study!r} trial {trial}"))
