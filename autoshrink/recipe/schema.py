"""The recipe format's rules: its keys and versions, the checksum, and the validation of every field
when a recipe is loaded (safe YAML data in, a Recipe's fields out)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, RecipeError, describe, finite_number
from ..measure import Measurement
from ..policy import BlockPolicy, LayerPolicy, Policy
from ..space.yaml_source import Source
from ..train import FinetuneConfig
from ..train.config import OPTIONAL_FIELDS
from .fingerprint import Fingerprint, InputSpec, LayerSignature, NamedInputSpec, normalize

FORMAT = "autoshrink-recipe/2"
MAX_INPUT_DIMS = 8  # example_input dimensions a recipe may record
MAX_INPUT_ELEMENTS = 2**26  # and elements: zeros of it are built to trace and time the model (256 MiB float32)
FORMAT_V1 = "autoshrink-recipe/1"
_FORMAT_RE = re.compile(r"autoshrink-recipe/(\d+)")
KEYS = (
    "format",
    "autoshrink_version",
    "torch_version",
    "source",
    "seed",
    "device",
    "example_input",
    "metrics",
    "baseline",
    "finetune",
    "train_transform",
    "policy",
    "model",
)
KEYS_V1 = tuple(k for k in KEYS if k != "train_transform")
OPTIONAL_KEYS = ("unlabeled",)  # written only where used: how many unlabeled inputs the fine-tune distilled on
# what a format-1 fine-tune did (its settings lack these keys)
FINETUNE_V1 = {"schedule": "oneshot", "ramp": 0.5, "ramp_updates": 10, "bn_batches": 0}
METRIC_KEYS = ("accuracy", "size_bytes", "latency_ms", "macs", "runtime", "batch_size", "threads")
# written where known: the selection split's example count, the held-out split's accuracy and count
SPLIT_KEYS = ("examples", "test_accuracy", "test_examples")
RUNTIMES = {
    "float": "float",
    "int8-dynamic": "int8",
    "int8-full": "int8-full",
    "onnxruntime": "onnxruntime",
    "onnxruntime-static": "onnxruntime-static",
    "cuda-graph": "cuda-graph",
    "cuda-int8": "cuda-int8",
}  # recorded runtime -> measure(runtime=...)


def metric_record(m: Measurement | Mapping[str, Any]) -> dict[str, Any]:
    """What a recipe records of a Measurement (or its dict): METRIC_KEYS, and the split figures where
    they are known (a recipe written without a held-out split reads as before)."""
    get = m.get if isinstance(m, Mapping) else lambda k, default=None: getattr(m, k, default)
    out = {k: get(k) for k in METRIC_KEYS}
    if get("examples"):
        out["examples"] = get("examples")
    if get("test_accuracy") is not None:
        out["test_accuracy"] = get("test_accuracy")
        out["test_examples"] = get("test_examples")
    return out


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

    def mapping(
        self, value: Any, path: str, keys: tuple[str, ...] | None = None, required: tuple[str, ...] = ()
    ) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(
                path,
                f"got {describe(value)}; expected a mapping"
                + (f" with {', '.join(keys)}" if keys else "")
                + ". Fix: re-export the recipe.",
            )
        root = path == "<root>"
        unknown = [k for k in value if keys is not None and k not in keys]
        if unknown:
            raise self.error(
                unknown[0] if root else f"{path}.{unknown[0]}",
                f"unknown field {unknown[0]!r}; allowed are {', '.join(keys)}. Fix: remove it.",
            )
        for k in required:
            if k not in value:
                raise self.error(
                    k if root else f"{path}.{k}",
                    f"missing; {'a recipe' if root else path} needs "
                    f"{', '.join(required)}. Fix: re-export the recipe, or add the field.",
                )
        return value

    def check(self, value: Any, path: str, ok: Callable[[Any], bool], rule: str) -> Any:
        if not ok(value):
            raise self.error(path, f"got {describe(value)}; {rule}.")
        return value

    def integer(self, value: Any, path: str, low: int = 0) -> int:
        return self.check(value, path, lambda v: type(v) is int and v >= low, f"expected an integer >= {low}")

    def number(self, value: Any, path: str, low: float = -math.inf) -> float:
        return float(
            self.check(value, path, lambda v: finite_number(v) and v >= low, f"expected a finite number >= {low}")
        )

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
        raise RecipeError(
            f"{src.at('format')}: written by a newer autoshrink (format {fmt}); this one reads "
            f"{FORMAT}. Fix: upgrade autoshrink."
        )
    got = "no 'format' field" if fmt is None else f"format {describe(fmt)}"
    raise RecipeError(
        f"{src.at('format')}: not an autoshrink recipe ({got}; expected 'format: {FORMAT}'). "
        "Fix: pass a file written by `autoshrink export` or Recipe.save."
    )


def _check_checksum(data: Mapping[str, Any], c: _Checker) -> None:
    if "checksum" not in data:
        return  # deleted on purpose: hand edits accepted
    if data["checksum"] != checksum(data):
        raise c.error(
            "checksum",
            "the recipe was modified after it was written (checksum mismatch). Fix: if "
            "the edit is intended, delete the checksum line to accept hand edits; else "
            "export the recipe again.",
        )


def _metrics(c: _Checker, value: Any, path: str, device: str) -> Measurement:
    m = c.mapping(value, path, METRIC_KEYS + SPLIT_KEYS, METRIC_KEYS)
    c.check(m["runtime"], f"{path}.runtime", lambda v: v in RUNTIMES, f"use one of {', '.join(RUNTIMES)}")
    test = m.get("test_accuracy")
    return Measurement(
        accuracy=c.number(m["accuracy"], f"{path}.accuracy"),
        size_bytes=c.integer(m["size_bytes"], f"{path}.size_bytes", 1),
        latency_ms=c.number(m["latency_ms"], f"{path}.latency_ms", 0.0),
        macs=c.integer(m["macs"], f"{path}.macs"),
        runtime=m["runtime"],
        batch_size=c.integer(m["batch_size"], f"{path}.batch_size", 1),
        threads=c.integer(m["threads"], f"{path}.threads", 1),
        device=device,
        examples=c.integer(m.get("examples", 0), f"{path}.examples"),
        test_accuracy=None if test is None else c.number(test, f"{path}.test_accuracy"),
        test_examples=c.integer(m.get("test_examples", 0), f"{path}.test_examples"),
    )


def _fingerprint(c: _Checker, value: Any) -> Fingerprint:
    m = c.mapping(value, "model", ("class", "sha256", "layers"), ("class", "layers"))
    layers: dict[str, LayerSignature] = {}
    for name, sig in c.mapping(m["layers"], "model.layers").items():
        where = f"model.layers.{name}"
        s = c.mapping(sig, where, ("type", "params"), ("type", "params"))
        params = {}
        for k, shape in c.mapping(s["params"], f"{where}.params").items():
            params[str(k)] = tuple(
                c.check(
                    shape,
                    f"{where}.params.{k}",
                    lambda v: isinstance(v, list) and all(type(d) is int and d >= 0 for d in v),
                    "expected a list of dimensions (integers >= 0)",
                )
            )
        layers[str(name)] = LayerSignature(c.text(s["type"], f"{where}.type"), params)
    fp = Fingerprint(c.text(m["class"], "model.class"), layers, m.get("sha256") or "")
    if fp.sha256 != fp.content_sha256:
        raise c.error(
            "model.sha256",
            f"got {describe(fp.sha256)}, which does not match model.class and "
            "model.layers (they were edited). Fix: delete the sha256 line to accept "
            "the edited layers.",
        )
    return fp


def _policy(c: _Checker, value: Any, fp: Fingerprint) -> Policy:
    m = c.mapping(value, "policy", ("layers", "distill", "blocks"), ("layers", "distill"))
    c.check(m["distill"], "policy.distill", lambda v: isinstance(v, bool), "expected true or false")
    known = {normalize(n) for n in fp.layers}
    layers = {}
    for name, lp in (c.mapping(m["layers"], "policy.layers") if m["layers"] is not None else {}).items():
        if normalize(str(name)) not in known:
            raise c.error(
                f"policy.layers.{name}",
                "names a layer that is not in the model fingerprint "
                "(model.layers). Fix: use a layer listed there, or remove it.",
            )
        try:
            layers[str(name)] = LayerPolicy.from_dict(lp, where=f"policy.layers.{name}")
        except ConfigError as exc:
            raise c.relocate(exc) from None
    blocks = {}
    for name, bp in (c.mapping(m["blocks"], "policy.blocks") if m.get("blocks") is not None else {}).items():
        try:
            blocks[str(name)] = BlockPolicy.from_dict(bp, where=f"policy.blocks.{name}")
        except ConfigError as exc:
            raise c.relocate(exc) from None
    return Policy(layers=layers, distill=m["distill"], blocks=blocks)


def _finetune(c: _Checker, value: Any, seed: Any, version: int) -> FinetuneConfig:
    keys = tuple(FinetuneConfig.__dataclass_fields__)
    required = tuple(k for k in keys if k not in OPTIONAL_FIELDS)
    if version == 1:
        v1 = tuple(k for k in required if k not in FINETUNE_V1)
        value = {**FINETUNE_V1, **c.mapping(value, "finetune", v1, v1)}
    m = c.mapping(value, "finetune", keys, required)
    try:
        cfg = FinetuneConfig.from_dict(m)
    except ConfigError as exc:
        raise c.relocate(exc) from None
    c.check(seed, "seed", lambda v: type(v) is int, "expected an integer")
    if seed != cfg.seed:
        raise c.error(
            "seed",
            f"got {seed} but finetune.seed is {cfg.seed}; the fine-tune replays with this seed, "
            "so they must agree. Fix: make them equal.",
        )
    return cfg


def parse_fields(data: Any, src: Source) -> dict[str, Any]:
    """Validate plain recipe data; the Recipe's fields (errors name the file, line, field and value)."""
    version = _check_format(data, src)
    c = _Checker(src)
    _check_checksum(data, c)
    keys = KEYS if version == 2 else KEYS_V1
    c.mapping(data, "<root>", keys + ("checksum", *OPTIONAL_KEYS), keys)
    transform = data.get("train_transform")
    if transform is not None:
        c.text(transform, "train_transform")
    unlabeled = data.get("unlabeled")
    if unlabeled is not None:
        unlabeled = c.integer(unlabeled, "unlabeled", low=1)
    device = c.text(data["device"], "device")
    source = c.mapping(data["source"], "source", ("study", "storage", "trial"), ("study", "storage", "trial"))
    fp = _fingerprint(c, data["model"])
    return dict(
        model=fp,
        policy=_policy(c, data["policy"], fp),
        finetune=_finetune(c, data["finetune"], data["seed"], version),
        train_transform=transform,
        unlabeled=unlabeled,
        example_input=_example_input(c, data["example_input"]),
        metrics=_metrics(c, data["metrics"], "metrics", device),
        baseline=_metrics(c, data["baseline"], "baseline", device),
        source=Origin(
            c.text(source["study"], "source.study"),
            c.text(source["storage"], "source.storage"),
            c.integer(source["trial"], "source.trial"),
        ),
        autoshrink_version=c.text(data["autoshrink_version"], "autoshrink_version"),
        torch_version=c.text(data["torch_version"], "torch_version"),
        path=src.name,
    )


def _example_input(c: _Checker, raw: Any) -> InputSpec | NamedInputSpec:
    """{shape, dtype} of a tensor input, or {inputs: {name: {shape, dtype}}} of keyword inputs."""
    if isinstance(raw, Mapping) and "inputs" in raw:
        c.mapping(raw, "example_input", ("inputs",), ("inputs",))
        named = c.mapping(raw["inputs"], "example_input.inputs")
        if not named or len(named) > MAX_INPUT_DIMS:
            raise c.error("example_input.inputs", f"got {len(named)} inputs; expected 1 to {MAX_INPUT_DIMS}.")
        return NamedInputSpec(
            tuple(
                (c.text(k, "example_input.inputs"), _tensor_spec(c, v, f"example_input.inputs.{k}"))
                for k, v in named.items()
            )
        )
    return _tensor_spec(c, raw, "example_input")


def _tensor_spec(c: _Checker, raw: Any, path: str) -> InputSpec:
    spec = c.mapping(raw, path, ("shape", "dtype"), ("shape", "dtype"))
    shape = c.check(
        spec["shape"],
        f"{path}.shape",
        lambda v: (
            isinstance(v, list)
            and len(v) <= MAX_INPUT_DIMS
            and all(type(d) is int and d >= 1 for d in v)
            and math.prod(v) <= MAX_INPUT_ELEMENTS
        ),
        f"expected at most {MAX_INPUT_DIMS} dimensions (integers >= 1) of at most {MAX_INPUT_ELEMENTS:,} "
        "elements in all, e.g. [1, 1, 28, 28]",
    )
    dtype = c.check(
        spec["dtype"],
        f"{path}.dtype",
        lambda v: isinstance(v, str) and isinstance(getattr(torch, v, None), torch.dtype),
        "expected a torch dtype name such as float32 or int64",
    )
    return InputSpec(tuple(shape), dtype)
