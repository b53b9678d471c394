"""Bind a SearchSpace to a model: the choices of every layer, by module name."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..policy import SEMI_STRUCTURED, BlockPolicy, LayerPolicy, Policy
from ..techniques.layers import WEIGHT_LAYERS
from ..techniques.transformer_blocks import find_blocks
from .schema import BLOCK_FIELDS, BLOCK_IDENTITY, FIELDS, IDENTITY, BlockSpace, Choice, Rule, SearchSpace

# Layers the defaults cover; Embedding is compressed only when a rule names it.
DEFAULT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


CRITERION_PREFERENCE = ("sparsegpt", "wanda", "magnitude")  # most accurate first (benchmarks/calibrated.py)


def calibrated_variant(fields: Mapping[str, Choice]) -> dict[str, Any]:
    """The most accurate rounding, group size and criterion a layer's choices offer: "gptq" over
    "nearest", the smallest group (0, per channel, only where no group is offered), and the first of
    CRITERION_PREFERENCE offered. The pre-pass measures these, and the baselines and warm start use them."""
    groups = [g for g in fields["group_size"].values if g > 0]
    return {
        "rounding": "gptq" if "gptq" in fields["rounding"].values else fields["rounding"].values[0],
        "group_size": min(groups) if groups else 0,
        "criterion": next(c for c in CRITERION_PREFERENCE if c in (*fields["criterion"].values, "magnitude")),
    }


def without_moot(values: dict[str, Any]) -> dict[str, Any]:
    """The layer's field values with the choices that do not apply set to their identity: a codebook,
    rounding or group size where the weight is not 2..8-bit codes (a k-means codebook takes no
    rounding or groups), `structured` where the sparsity is "2:4", a pruning criterion where nothing is
    pruned, "sparsegpt" for structured pruning (which ranks channels by "magnitude" or "wanda")."""
    out = dict(values)
    codes = 2 <= out["bits"] <= 8
    if not codes:
        out["codebook"] = "linear"
    if not codes or out["codebook"] != "linear":
        out["rounding"], out["group_size"] = "nearest", 0
    if out["sparsity"] == SEMI_STRUCTURED:
        out["structured"] = False  # the 2:4 pattern zeroes single weights
    if out["sparsity"] == 0 or (out["structured"] and out["criterion"] == "sparsegpt"):
        out["criterion"] = "magnitude"  # sparsegpt chooses single weights; channels rank by magnitude or wanda
    return out


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def _rule_matches(rule: Rule, name: str, module: nn.Module) -> bool:
    if rule.match and not any(_name_matches(p, name) for p in rule.match):
        return False
    if rule.types and not any(t == type(module).__name__ or t == type(module).__qualname__ for t in rule.types):
        return False
    return True


@dataclass(frozen=True)
class BoundSpace:
    """Per-layer choices for one model, and per transformer block. Parameter names: '<layer>.<field>',
    '<block>.heads' / '.neurons' / '.criterion' / '.refit' and 'distill'."""

    layers: Mapping[str, Mapping[str, Choice]]
    distill: Choice
    space: SearchSpace
    blocks: Mapping[str, Mapping[str, Choice]] = field(default_factory=dict)

    def params(self) -> Iterator[tuple[str, Choice]]:
        """Every searched parameter (choices with more than one value), in a stable order."""
        for layer, fields in self.layers.items():
            for f in FIELDS:
                if not fields[f].fixed:
                    yield f"{layer}.{f}", fields[f]
        for block, fields in self.blocks.items():
            for f in BLOCK_FIELDS:
                if not fields[f].fixed:
                    yield f"{block}.{f}", fields[f]
        if not self.distill.fixed:
            yield "distill", self.distill

    def policy_from_params(self, params: Mapping[str, Any]) -> Policy:
        """The Policy for a full parameter assignment (fixed fields take their single value)."""
        layers = {}
        for layer, fields in self.layers.items():
            values = {f: params.get(f"{layer}.{f}", fields[f].values[0]) for f in FIELDS}
            lp = LayerPolicy(**without_moot(values), where=f"layers.{layer}")
            if not lp.is_identity:
                layers[layer] = lp
        blocks = {}
        for block, fields in self.blocks.items():
            values = {f: params.get(f"{block}.{f}", fields[f].values[0]) for f in BLOCK_FIELDS}
            bp = BlockPolicy(**values, where=f"blocks.{block}")
            if not bp.is_identity:
                blocks[block] = bp
        distill = params.get("distill", self.distill.values[0])
        return Policy(layers=layers, distill=bool(distill) and bool(layers or blocks), blocks=blocks)

    def without_structured(self, layers: Mapping[str, str]) -> BoundSpace:
        """A copy where the named layers can only be pruned unstructured (structured fixed false)."""
        fixed = {n: ({**f, "structured": Choice((False,))} if n in layers else f) for n, f in self.layers.items()}
        return BoundSpace(layers=fixed, distill=self.distill, space=self.space, blocks=self.blocks)

    def restricted(self, values: Mapping[str, Mapping[str, tuple[Any, ...]]]) -> BoundSpace:
        """A copy where the given layers' fields take only the given values (layer -> field -> values);
        each must be a non-empty subset of the field's choices, kept in their order."""
        layers = {}
        for name, fields in self.layers.items():
            new = dict(fields)
            for f, keep in values.get(name, {}).items():
                kept = tuple(v for v in fields[f].values if v in keep)
                if not kept:
                    raise ValueError(f"restricting {name}.{f} to {keep!r} leaves no choice")
                new[f] = Choice(kept, fields[f].is_range)
            layers[name] = new
        return BoundSpace(layers=layers, distill=self.distill, space=self.space, blocks=self.blocks)

    def structured_candidates(self) -> list[str]:
        """Layers whose `structured` choice includes true."""
        return [n for n, f in self.layers.items() if True in f["structured"].values]

    def sample(self, trial: Any) -> Policy:
        """Ask `trial` (an Optuna trial, duck-typed) for every searched parameter; return the Policy."""
        params = {}
        for name, choice in self.params():
            params[name] = trial.suggest_categorical(name, list(choice.values))
        return self.policy_from_params(params)

    def untouched(self, name: str) -> Any:
        """What a searched parameter is set to where a stage chooses nothing for it: the identity, but
        the layer's calibrated_variant for rounding, group_size and criterion."""
        layer, _, fld = name.rpartition(".")
        if name == "distill":
            return False
        if layer in self.blocks:
            return BLOCK_IDENTITY[fld] if fld in ("heads", "neurons") else self.blocks[layer][fld].values[0]
        if fld in ("rounding", "group_size", "criterion"):
            return calibrated_variant(self.layers[layer])[fld]
        return IDENTITY[fld]

    def nearest_params(self, targets: Mapping[str, Any]) -> dict[str, Any]:
        """Searched params set to the allowed values nearest `targets` (field -> value; missing: `untouched`)."""
        out = {}
        for name, choice in self.params():
            fld = name.rsplit(".", 1)[-1] if name != "distill" else "distill"
            out[name] = choice.nearest(targets[fld] if fld in targets else self.untouched(name))
        return out


def bind(space: SearchSpace, model: nn.Module) -> BoundSpace:
    """Resolve defaults and rules against `model.named_modules()`.

    Errors (naming the file, line and rule): a rule matching no compressible module; a rule that
    only matches modules no technique compresses (BatchNorm, LayerNorm, ...).
    """
    src = space.source
    modules = [(n, m) for n, m in model.named_modules() if n]
    compressible = [(n, m) for n, m in modules if isinstance(m, WEIGHT_LAYERS)]
    chosen: dict[str, dict[str, Choice]] = {
        n: dict(space.defaults) for n, m in compressible if isinstance(m, DEFAULT_LAYERS)
    }
    skipped: set[str] = set()
    known_types = {type(m).__name__ for _, m in modules} | {n for n in dir(nn) if isinstance(getattr(nn, n), type)}
    for rule in space.rules:
        unknown = [t for t in rule.types if t not in known_types]
        if unknown:
            raise src.error(
                f"{rule.path}.type",
                f"{unknown[0]!r} is not a torch.nn module class nor a class in "
                f"{type(model).__name__}; check the spelling (e.g. Conv2d, Linear).",
            )
        hits = [(n, m) for n, m in compressible if _rule_matches(rule, n, m)]
        if not hits and (rule.optional or not rule.match):
            continue
        if not hits:
            others = [f"{n} ({type(m).__name__})" for n, m in modules if _rule_matches(rule, n, m)]
            what = " and ".join(
                filter(
                    None,
                    [
                        f"match {list(rule.match)}" if rule.match else "",
                        f"type {list(rule.types)}" if rule.types else "",
                    ],
                )
            )
            hint = (
                f"it matches only modules no technique compresses: {', '.join(others[:5])}"
                if others
                else f"the model's compressible layers are: {', '.join(n for n, _ in compressible[:20])}"
            )
            raise src.error(rule.path, f"{what} matches no compressible layer of {type(model).__name__}; {hint}.")
        for n, _ in hits:
            if rule.skip:
                skipped.add(n)
                chosen.pop(n, None)
                continue
            skipped.discard(n)
            fields = chosen.setdefault(n, dict(space.defaults))
            fields.update(rule.fields)
    order = [n for n, _ in compressible if n in chosen]
    blocks = _bind_blocks(space, space.blocks, model) if space.blocks is not None else {}
    return BoundSpace(layers={n: chosen[n] for n in order}, distill=space.distill, space=space, blocks=blocks)


def _bind_blocks(space: SearchSpace, blocks: BlockSpace, model: nn.Module) -> dict[str, dict[str, Choice]]:
    """Every recognized transformer block's choices: `blocks` defaults, then its rules in order."""
    src = space.source
    names = [b.name for b in find_blocks(model)]
    if not names:
        raise src.error(
            "blocks",
            f"{type(model).__name__} has no transformer block autoshrink recognizes (an attention module with "
            "query/key/value Linear layers and a head count, and an FFN pair: BERT, RoBERTa, DistilBERT, "
            "ViT-style). Fix: remove `blocks` from the space, or use the space 'default'.",
        )
    chosen = {n: dict(blocks.defaults) for n in names}
    skipped: set[str] = set()
    for rule in blocks.rules:
        hits = [n for n in names if any(_name_matches(p, n) for p in rule.match)]
        if not hits and not rule.optional:
            raise src.error(
                rule.path,
                f"match {list(rule.match)} matches no transformer block of {type(model).__name__}; its blocks are: "
                f"{', '.join(names[:12])}.",
            )
        for n in hits:
            if rule.skip:
                skipped.add(n)
                chosen[n] = {f: Choice((BLOCK_IDENTITY[f],)) for f in BLOCK_FIELDS}
                continue
            if n in skipped:  # as for layers: a rule after skip starts again from the defaults
                skipped.discard(n)
                chosen[n] = dict(blocks.defaults)
            chosen[n].update(rule.fields)
    return chosen
