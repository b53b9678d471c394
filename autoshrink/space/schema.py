"""Search space schema: choices per layer field, rules keyed by module names or types.

YAML form (commented example: autoshrink/spaces/default.yaml, the built-in space "default"):
`defaults` for every Linear/Conv layer (sparsity, bits, structured, rank, codebook, rounding,
group_size, criterion: each a list of choices or {low, high, step}); `rules`, applied in order, later
ones overriding earlier ones field by field, each with `match` (exact name, glob or "re:" regex)
and/or `type` (module type names), then fields or `skip: true`; `distill` and `finetune`; `blocks`
(transformer models): `heads`, `neurons` (fractions removed), `criterion` and `refit` choices for every
recognized transformer block, and its own `rules` (each with `match` on block names, fields or `skip`). A rule
with `match` that matches no compressible layer is an error unless `optional: true`; a `type`-only
rule may match nothing, but its types must be real module classes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..policy import ALLOWED_BITS, BLOCK_CRITERIA, CODEBOOKS, CRITERIA, ROUNDINGS, SEMI_STRUCTURED
from ..train import FinetuneConfig
from .yaml_source import Source

FIELDS = ("sparsity", "structured", "bits", "rank", "codebook", "rounding", "group_size", "criterion")
MAX_RANGE_VALUES = 1_000  # a {low, high, step} range expands to at most this many choices
MAX_NUMBER = 2**53  # integers beyond this are not a setting anyone means
IDENTITY = {
    "sparsity": 0.0,
    "structured": False,
    "bits": 32,
    "rank": 1.0,
    "codebook": "linear",
    "rounding": "nearest",
    "group_size": 0,
    "criterion": "magnitude",
}
WORDS = {
    "structured": "[false, true]",
    "distill": "[false, true]",
    "refit": "[false, true]",
    "codebook": "[linear, kmeans]",
}
WORDS |= {"rounding": "[nearest, gptq]", "criterion": "[magnitude, wanda, sparsegpt]"}
WORDS |= {"block_criterion": "[magnitude, activation]"}
_RULE_KEYS = set(FIELDS) | {"match", "type", "skip", "optional"}
_TOP_KEYS = {"defaults", "rules", "distill", "finetune", "description", "version", "blocks"}
BLOCK_FIELDS = ("heads", "neurons", "criterion", "refit")
BLOCK_IDENTITY = {"heads": 0.0, "neurons": 0.0, "criterion": "magnitude", "refit": False}
_BLOCK_RULE_KEYS = set(BLOCK_FIELDS) | {"match", "skip", "optional"}


def _finite(v: Any) -> bool:
    """A number (not a bool) that is finite and of sensible size."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return abs(v) <= MAX_NUMBER if isinstance(v, int) else math.isfinite(v)


def _text_hint(v: Any) -> str:
    """For a number YAML read as text (YAML 1.1 wants a dot in 1.0e-3): how to write it."""
    try:
        float(v) if isinstance(v, str) else None
    except ValueError:
        return ""
    return f" (YAML read {v!r} as text: write it with a dot, e.g. 1.0e-3)" if isinstance(v, str) else ""


def _valid_value(fld: str, v: Any) -> str | None:
    """Why `v` is not a valid value for `fld`, or None."""
    if fld in ("structured", "distill", "refit"):
        return None if isinstance(v, bool) else "must be true or false"
    if fld == "codebook":
        return None if v in CODEBOOKS else f"must be one of {', '.join(CODEBOOKS)}"
    if fld == "rounding":
        return None if v in ROUNDINGS else f"must be one of {', '.join(ROUNDINGS)}"
    if fld == "criterion":
        return None if v in CRITERIA else f"must be one of {', '.join(CRITERIA)}"
    if fld == "block_criterion":
        return None if v in BLOCK_CRITERIA else f"must be one of {', '.join(BLOCK_CRITERIA)}"
    if fld in ("heads", "neurons"):
        return None if _finite(v) and 0 <= v < 1 else "must be a fraction in [0, 1)" + _text_hint(v)
    if fld == "group_size":
        ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_NUMBER
        return None if ok else "must be 0 (one scale per output channel) or a positive whole number, e.g. 64"
    if fld == "sparsity" and v == SEMI_STRUCTURED:
        return None
    if not _finite(v):
        why = f"must be a finite number{' or ' + repr(SEMI_STRUCTURED) if fld == 'sparsity' else ''}"
        return why + _text_hint(v)
    if fld == "sparsity" and not 0 <= v < 1:
        sexagesimal = " (YAML reads an unquoted 2:4 as the number 124: write it in quotes)" if v == 124 else ""
        return f"must be in [0, 1) or {SEMI_STRUCTURED!r}{sexagesimal}"
    if fld == "bits" and (v != int(v) or int(v) not in ALLOWED_BITS):
        return f"must be one of {', '.join(map(str, ALLOWED_BITS))}"
    if fld == "rank" and not 0 < v <= 1:
        return "must be in (0, 1]"
    return None


def value_key(value: Any) -> Any:
    """A choice's value as the pre-pass table's rows are keyed: numbers as float, "2:4" as it is."""
    return value if value == SEMI_STRUCTURED else float(value)


@dataclass(frozen=True)
class Choice:
    """The values one field may take: a finite, ordered tuple (lists and expanded ranges)."""

    values: tuple[Any, ...]
    is_range: bool = False

    @property
    def fixed(self) -> bool:
        return len(self.values) == 1

    def nearest(self, target: Any) -> Any:
        """The allowed value closest to `target` (first on ties)."""
        if target in self.values:
            return target
        numbers = [v for v in self.values if not isinstance(v, (bool, str))]  # sparsity may offer "2:4"
        if isinstance(target, (bool, str)) or not numbers:
            return self.values[0]
        return min(numbers, key=lambda v: abs(float(v) - float(target)))


def parse_choice(raw: Any, fld: str, path: str, src: Source) -> Choice:
    """A list of values, a single value, or {low, high, step} -> Choice (validated)."""
    if isinstance(raw, Mapping):
        unknown = sorted(set(raw) - {"low", "high", "step"})
        if unknown or "low" not in raw or "high" not in raw:
            raise src.error(path, f"got {dict(raw)!r}; a range needs exactly low, high and optional step.")
        if fld in WORDS:
            raise src.error(path, f"a range makes no sense for this field; give a list, e.g. {WORDS[fld]}.")
        low, high = raw["low"], raw["high"]
        for name, v in (("low", low), ("high", high), ("step", raw.get("step", 1))):
            if not _finite(v):
                raise src.error(f"{path}.{name}", f"got {v!r}; it must be a finite number{_text_hint(v)}.")
            if fld in ("bits", "group_size") and v != int(v):
                raise src.error(f"{path}.{name}", f"got {v!r}; {fld} are whole numbers.")
        if not low <= high:
            raise src.error(path, f"low {low} > high {high}; swap them.")
        step = raw.get("step", 1 if fld in ("bits", "group_size") else None)
        if step is None:
            raise src.error(path, f"a range of {fld} needs a step, e.g. {{low: {low}, high: {high}, step: 0.1}}.")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            raise src.error(f"{path}.step", f"got {step!r}; it must be a number.")
        if step <= 0:
            raise src.error(f"{path}.step", f"got {step}; it must be > 0.")
        span = (high - low) / step
        if not span < MAX_RANGE_VALUES:  # also inf and nan
            raise src.error(
                path,
                f"low {low}, high {high}, step {step} give more than {MAX_RANGE_VALUES:,} values; use a larger step.",
            )
        n = int(math.floor(span + 1e-9)) + 1
        values = tuple(round(low + i * step, 10) for i in range(n))
        is_range = True
    else:
        items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        if not items:
            raise src.error(path, "the list of choices is empty; give at least one value.")
        values, is_range = tuple(items), False
    for i, v in enumerate(values):
        why = _valid_value(fld, v)
        if why:
            where = path if is_range or not isinstance(raw, (list, tuple)) else f"{path}[{i}]"
            raise src.error(where, f"got {v!r}; {fld.removeprefix('block_')} {why}.")
    if fld in ("bits", "group_size"):
        values = tuple(int(v) for v in values)
    elif fld in ("sparsity", "rank", "heads", "neurons"):
        values = tuple(v if v == SEMI_STRUCTURED else float(v) for v in values)
    if len(set(values)) != len(values):
        raise src.error(path, f"got {list(values)!r}; the choices repeat a value.")
    return Choice(values, is_range)


@dataclass(frozen=True)
class Rule:
    """Overrides for the layers it matches (by name patterns and/or module type names)."""

    match: tuple[str, ...]
    types: tuple[str, ...]
    fields: Mapping[str, Choice]
    skip: bool
    path: str
    optional: bool = False


@dataclass(frozen=True)
class BlockSpace:
    """The choices of every recognized transformer block (BLOCK_FIELDS), and rules by block name."""

    defaults: Mapping[str, Choice]
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space, not yet bound to a model (see `bind`)."""

    defaults: Mapping[str, Choice]
    rules: tuple[Rule, ...]
    distill: Choice
    finetune: FinetuneConfig
    source: Source = field(compare=False, repr=False, default_factory=lambda: Source("<space>"))
    description: str = ""
    blocks: BlockSpace | None = None


def _str_list(raw: Any, path: str, src: Source) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(s, str) and s for s in items):
        raise src.error(path, f"got {raw!r}; expected a non-empty string or list of strings.")
    for i, item in enumerate(items):
        if item.startswith("re:"):
            try:
                re.compile(item[3:])
            except re.error as exc:
                where = path if isinstance(raw, str) else f"{path}[{i}]"
                raise src.error(
                    where,
                    f"got {item!r}; not a valid regular expression ({exc}). Fix the pattern, or "
                    "use a glob without the re: prefix.",
                ) from None
    return tuple(items)


def parse_space(data: Any, src: Source) -> SearchSpace:
    """Validate the parsed YAML of a search space; errors name the file, line, path and value."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise src.error("<root>", f"got {type(data).__name__}; a search space is a mapping (defaults, rules, ...).")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise src.error(unknown[0], f"unknown key {unknown[0]!r}; allowed are {', '.join(sorted(_TOP_KEYS))}.")
    raw_defaults = data.get("defaults") or {}
    if not isinstance(raw_defaults, Mapping):
        raise src.error("defaults", f"got {raw_defaults!r}; expected a mapping of field -> choices.")
    bad = sorted(set(raw_defaults) - set(FIELDS))
    if bad:
        raise src.error(f"defaults.{bad[0]}", f"unknown field {bad[0]!r}; allowed are {', '.join(FIELDS)}.")
    defaults = {f: parse_choice(raw_defaults.get(f, IDENTITY[f]), f, f"defaults.{f}", src) for f in FIELDS}
    rules = _parse_rules(data.get("rules") or [], "rules", _LAYER_RULES, src)
    distill = parse_choice(data.get("distill", [False]), "distill", "distill", src)
    raw_ft = data.get("finetune") or {}
    if not isinstance(raw_ft, Mapping):
        raise src.error("finetune", f"got {raw_ft!r}; expected a mapping of fine-tune settings.")
    try:
        finetune = FinetuneConfig.from_dict(raw_ft)
    except ConfigError as exc:  # names the field; add the file and line
        raise src.error("finetune", str(exc)) from None
    description = data.get("description", "")
    if not isinstance(description, str):
        raise src.error("description", "expected a string.")
    blocks = _parse_blocks(data["blocks"], src) if "blocks" in data else None
    return SearchSpace(
        defaults=defaults,
        rules=rules,
        distill=distill,
        finetune=finetune,
        source=src,
        description=description,
        blocks=blocks,
    )


def _block_choice(raw: Any, fld: str, path: str, src: Source) -> Choice:
    return parse_choice(raw, "block_criterion" if fld == "criterion" else fld, path, src)


def _parse_blocks(raw: Any, src: Source) -> BlockSpace:
    """`blocks`: {heads, neurons, criterion, rules}; every field optional (default: leave alone)."""
    if not isinstance(raw, Mapping):
        raise src.error("blocks", f"got {raw!r}; expected a mapping with heads, neurons, criterion, refit and rules.")
    bad = sorted(set(raw) - set(BLOCK_FIELDS) - {"rules"})
    if bad:
        raise src.error(f"blocks.{bad[0]}", f"unknown key {bad[0]!r}; allowed are {', '.join(BLOCK_FIELDS)} and rules.")
    defaults = {f: _block_choice(raw.get(f, BLOCK_IDENTITY[f]), f, f"blocks.{f}", src) for f in BLOCK_FIELDS}
    rules = _parse_rules(raw.get("rules") or [], "blocks.rules", _BLOCK_RULES, src)
    return BlockSpace(defaults=defaults, rules=rules)


@dataclass(frozen=True)
class _RuleForm:
    """What a list of rules may hold: the layers' (match and/or type) or the blocks' (match only)."""

    keys: frozenset[str]
    fields: tuple[str, ...]
    choice: Callable[[Any, str, str, Source], Choice]
    shape: str  # what a rule is, for the messages
    needs: str  # the message for a rule that says what it matches
    types: bool  # `type` allowed


_LAYER_RULES = _RuleForm(
    frozenset(_RULE_KEYS),
    tuple(FIELDS),
    parse_choice,
    "match and/or type plus fields",
    "a rule needs `match` (module names) and/or `type` (module types).",
    True,
)
_BLOCK_RULES = _RuleForm(
    frozenset(_BLOCK_RULE_KEYS),
    tuple(BLOCK_FIELDS),
    _block_choice,
    "match plus fields or skip",
    "a block rule needs `match` (block names: exact, glob or re:).",
    False,
)


def _parse_rules(raw: Any, where: str, form: _RuleForm, src: Source) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        raise src.error(where, f"expected a list of rules (each a mapping with {form.shape}).")
    rules = []
    for i, r in enumerate(raw):
        path = f"{where}[{i}]"
        if not isinstance(r, Mapping):
            raise src.error(path, f"got {r!r}; a rule is a mapping with {form.shape}.")
        bad = sorted(set(r) - form.keys)
        if bad:
            raise src.error(f"{path}.{bad[0]}", f"unknown key {bad[0]!r}; allowed are {', '.join(sorted(form.keys))}.")
        if "match" not in r and not (form.types and "type" in r):
            raise src.error(path, form.needs)
        skip, optional = r.get("skip", False), r.get("optional", False)
        for key, v in (("skip", skip), ("optional", optional)):
            if not isinstance(v, bool):
                raise src.error(f"{path}.{key}", f"got {v!r}; it must be true or false.")
        rules.append(
            Rule(
                match=_str_list(r["match"], f"{path}.match", src) if "match" in r else (),
                types=_str_list(r["type"], f"{path}.type", src) if form.types and "type" in r else (),
                fields={f: form.choice(r[f], f, f"{path}.{f}", src) for f in form.fields if f in r},
                skip=skip,
                path=path,
                optional=optional,
            )
        )
    return tuple(rules)
