"""Structured channel pruning: remove whole output channels physically, with torch-pruning.

Per target (Linear, Conv1d, Conv2d, or a `Factorized` pair's `.second`) n = round(sparsity * C) of its C
output channels go (at least one stays), lowest importance first (ties: lower index): the L2 magnitude over
the coupled group, or with criterion "wanda" what removing the channel takes from the layers that read it
(channel_importance.py; from calibration data, on the model as low-rank left it). torch-pruning's
DependencyGraph (once per `apply`, from `example_input`) keeps coupled layers consistent. Never pruned:
channels reaching the output, groups coupled to grouped convs or parametrized layers; a prune that changes the
output shapes is rolled back and reported as Skipped. Coupled targets are pruned once, by the largest n.
Context keys: "structured_counts" (a gradual round's n per name), "structured" (name -> (channels_before,
channels_after)), "structured_notes".
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from ..inputs import call, to_device
from ..policy import LayerPolicy
from .channel_importance import channel_importance, feature_energy
from .lowrank import Factorized
from .registry import Skipped, Technique, register

NO_INPUT = "structured pruning needs Task.example_input to trace the model"
_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_OUTPUT = tp.ops.OPTYPE.OUTPUT
_PARAMETER = tp.ops.OPTYPE.PARAMETER


@dataclass
class _Target:
    """A resolved target: the layer whose output channels are removed, and how many."""

    name: str
    layer: nn.Module
    channels: int
    n: int
    criterion: str = "magnitude"


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _resolve(model: nn.Module, name: str, lp: LayerPolicy, count: int | None = None) -> _Target | str:
    """The layer to prune for target `name`, or the reason it cannot be pruned. `count` (channels to
    remove now) overrides round(sparsity * channels): the rounds of gradual pruning use it."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return f"no module named {name!r} in the model"
    layer = module.second if isinstance(module, Factorized) else module
    if not isinstance(layer, _SUPPORTED):
        return (
            f"{type(layer).__name__} is not structurally pruned "
            "(only Linear, Conv1d and Conv2d, or a low-rank Factorized pair)"
        )
    if isinstance(layer, nn.Conv1d | nn.Conv2d) and layer.padding_mode != "zeros":
        return f"padding_mode={layer.padding_mode!r} is not supported for structured pruning"
    if torch.nn.utils.parametrize.is_parametrized(layer):
        return "the layer's weight is parametrized (masked or quantized); prune it structurally before that"
    channels = _out_channels(layer)
    n = min(int(round(lp.sparsity * channels)) if count is None else count, channels - 1)
    if n < 1:
        return f"sparsity {lp.sparsity} of {channels} output channels removes no channel"
    return _Target(name, layer, channels, n, lp.criterion)


def _tensors(out: Any) -> list[Tensor]:
    """Every tensor in a (nested) model output."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in _tensors(v)]
    return []


def _signature(out: Any) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of every tensor in a (nested) model output."""
    return [(tuple(t.shape), t.dtype) for t in _tensors(out)]


def _run(model: nn.Module, x: Any) -> Any:
    with torch.no_grad():
        return call(model, x)


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg[:300]}" if msg else type(exc).__name__


def _build_graph(model: nn.Module, x: Tensor) -> tuple[tp.DependencyGraph, set[int]]:
    """Trace `model` on `x`: the dependency graph and the ids of the nodes that make the outputs.

    torch-pruning marks an output with its own node only when no module produced it, so the
    nodes of layers whose result *is* an output are found here from the outputs' grad_fns.
    Tracing follows autograd, so frozen parameters are unfrozen meanwhile.
    """
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    outputs: list[Any] = []

    def forward(m: nn.Module, inp: Tensor) -> Any:
        # passed explicitly: torch-pruning would otherwise first try m(*inp), unpacking the batch.
        # verbose=False below only drops its notes on bare nn.Parameters and unknown element-wise
        # ops, which it handles; its errors still raise.
        outputs.append(call(m, inp))
        return outputs[-1]

    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, forward_fn=forward, verbose=False)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    fns = {t.grad_fn for t in _tensors(outputs[-1]) if t.grad_fn is not None}
    ends = {id(node) for node in dg.module2node.values() if node.grad_fn in fns or node.type == _OUTPUT}
    return dg, ends


def _blocker(group: Any, names: dict[int, str]) -> str | None:
    """Why a coupled group must not be pruned, or None.

    Grouped (not depthwise) convolutions: torch-pruning would drop channels without keeping the
    groups aligned, so the model would run but compute something else. Parametrized weights:
    assigning a pruned weight goes through the parametrization and cannot be rolled back.
    """
    for dep, _ in group:
        m = dep.target.module
        if not isinstance(m, nn.Module):
            continue
        where = names.get(id(m), type(m).__name__)
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not m.groups == m.in_channels == m.out_channels:
            return (
                f"its channels are coupled to the grouped convolution {where} (groups={m.groups}), "
                "whose groups would not stay aligned"
            )
        if torch.nn.utils.parametrize.is_parametrized(m):
            return f"its channels are coupled to {where}, whose weights are parametrized"
    return None


class _Snapshot:
    """The state of the modules a pruning group touches, to roll a failed prune back.

    Pruning replaces parameters and buffers by new tensors and rewrites plain attributes, so a
    shallow copy of each module's `__dict__` (containers copied, tensors shared) restores it
    exactly, weight tying included. Parameter `requires_grad` flags are re-applied after pruning.
    """

    def __init__(self, model: nn.Module, group: Any) -> None:
        own = {id(m): m for m in model.modules()}
        mods: dict[int, nn.Module] = {}
        params = [dep.target.module for dep, _ in group if dep.target.type == _PARAMETER]
        for dep, _ in group:
            if id(dep.target.module) in own:
                mods[id(dep.target.module)] = dep.target.module
        for m in own.values():  # the owners of unwrapped nn.Parameters in the group
            if any(p is q for p in m._parameters.values() for q in params):
                mods[id(m)] = m
        self.states = [
            (m, {k: (v.copy() if isinstance(v, dict | list) else v) for k, v in m.__dict__.items()})
            for m in mods.values()
        ]
        self.grad_flags = [
            (m, k, p.requires_grad) for m in mods.values() for k, p in m._parameters.items() if p is not None
        ]

    def keep_grad_flags(self) -> None:
        for m, k, flag in self.grad_flags:
            p = m._parameters.get(k)
            if p is not None:
                p.requires_grad_(flag)

    def restore(self) -> None:
        for m, state in self.states:
            m.__dict__.clear()
            m.__dict__.update(state)


@register
class StructuredPrune(Technique):
    """Remove output channels physically (LayerPolicy.structured with sparsity > 0)."""

    name = "structured"
    order = 20

    def selects(self, lp: LayerPolicy) -> bool:
        return lp.structured and lp.sparsity > 0

    def apply(self, model: nn.Module, targets: dict[str, LayerPolicy], context: dict[str, Any]) -> list[Skipped]:
        report: dict[str, tuple[int, int]] = context.setdefault("structured", {})
        notes: list[str] = context.setdefault("structured_notes", [])
        x = context.get("example_input")
        if x is None:
            return [Skipped(name, self.name, NO_INPUT) for name in targets]
        skipped: list[Skipped] = []
        pending: list[_Target] = []
        counts: dict[str, int] = context.get("structured_counts", {})
        for name, lp in targets.items():
            t = _resolve(model, name, lp, counts.get(name))
            if isinstance(t, str):
                skipped.append(Skipped(name, self.name, t))
            else:
                pending.append(t)
        if not pending:
            return skipped
        energy = None
        if any(t.criterion == "wanda" for t in pending):
            batches = context.get("calibration")
            if batches is None:  # apply.py refuses calibrated policies without data before any work
                raise RuntimeError("activation-aware structured pruning without calibration data")
            t0 = time.perf_counter()
            energy = feature_energy(model, batches)
            context["calibration_s"] = context.get("calibration_s", 0.0) + time.perf_counter() - t0
        modes = [(m, m.training) for m in model.modules()]
        try:
            skipped += self._prune_all(model, pending, x, report, notes, energy)
        finally:
            for m, mode in modes:
                m.training = mode
        return skipped

    def _prune_all(
        self,
        model: nn.Module,
        pending: list[_Target],
        x: Tensor,
        report: dict[str, tuple[int, int]],
        notes: list[str],
        energy: dict[int, Tensor] | None = None,
    ) -> list[Skipped]:
        """Prune the resolved targets one coupled group at a time; return those left alone."""
        param = next(model.parameters(), None)
        x = to_device(x, param.device if param is not None else torch.device("cpu"))
        model.eval()
        try:
            ref = _signature(_run(model, x))
        except Exception as exc:  # recorded per target, never hidden
            return [
                Skipped(t.name, self.name, f"the model does not run on example_input ({_error(exc)})") for t in pending
            ]
        if not ref:
            return [
                Skipped(t.name, self.name, "the model's output holds no tensor to check the pruned model against")
                for t in pending
            ]
        skipped: list[Skipped] = []
        done: set[int] = set()
        dg: tp.DependencyGraph | None = None
        ends: set[int] = set()
        for i, t in enumerate(pending):
            if i in done:
                continue
            if dg is None:
                try:
                    dg, ends = _build_graph(model, x)
                except Exception as exc:
                    reason = f"torch-pruning could not trace the model ({_error(exc)})"
                    return skipped + [
                        Skipped(u.name, self.name, reason) for j, u in enumerate(pending) if j not in done
                    ]
            done.add(i)
            if t.layer not in dg.module2node:
                skipped.append(Skipped(t.name, self.name, "the example input does not reach this layer"))
                continue
            fn = dg.get_pruner_of_module(t.layer).prune_out_channels
            try:
                full = dg.get_pruning_group(t.layer, fn, list(range(t.channels)))
            except Exception as exc:
                skipped.append(Skipped(t.name, self.name, f"torch-pruning found no pruning group ({_error(exc)})"))
                continue
            tied = {id(dep.target.module) for dep, _ in full if dg.is_out_channel_pruning_fn(dep.handler)}
            members = [t]
            for j in range(i + 1, len(pending)):
                if j not in done and id(pending[j].layer) in tied:
                    members.append(pending[j])
                    done.add(j)
            wanda = energy if t.criterion == "wanda" else None  # coupled targets rank by the first one's
            reason, stale = self._prune_group(model, dg, ends, full, members, x, ref, report, notes, wanda)
            if reason is not None:
                skipped += [Skipped(m.name, self.name, reason) for m in members]
            if stale:
                dg = None  # a rolled-back prune: trace again before the next group
        return skipped

    def _prune_group(
        self,
        model: nn.Module,
        dg: tp.DependencyGraph,
        ends: set[int],
        full: Any,
        members: list[_Target],
        x: Tensor,
        ref: list,
        report: dict[str, tuple[int, int]],
        notes: list[str],
        energy: dict[int, Tensor] | None = None,
    ) -> tuple[str | None, bool]:
        """Prune one coupled group; return (reason it was not pruned or None, graph is stale)."""
        root = members[0]
        names = {id(m): n for n, m in model.named_modules()}
        if any(id(dep.target) in ends and dg.is_out_channel_pruning_fn(dep.handler) for dep, _ in full):
            others = sorted(
                {
                    names[id(dep.target.module)]
                    for dep, _ in full
                    if dg.is_out_channel_pruning_fn(dep.handler)
                    and id(dep.target.module) in names
                    and dep.target.module is not root.layer
                    and isinstance(dep.target.module, _SUPPORTED)
                }
            )
            via = f" (coupled through {', '.join(others)})" if others else ""
            return f"its output channels are the model's outputs{via}; removing them would change the output", False
        blocker = _blocker(full, names)
        if blocker is not None:
            return blocker, False
        n = min(max(m.n for m in members), root.channels - 1)
        try:
            imp, fallback = channel_importance(full, root.channels, energy)
            if fallback is not None:
                notes.append(f"{root.name}: {fallback}")
            if imp is None:
                return "its coupled group has no weights to rank the channels by", False
            order = torch.argsort(imp.detach().float().cpu(), stable=True)
            group = dg.get_pruning_group(root.layer, full[0].dep.handler, sorted(order[:n].tolist()))
            fits = dg.check_pruning_group(group)
        except Exception as exc:  # nothing changed yet; reported as Skipped by the caller
            return f"torch-pruning could not form the pruning group ({_error(exc)})", False
        if not fits:
            return f"removing {n} channels would leave a coupled layer with no channels", False
        before = {m.name: _out_channels(m.layer) for m in members}
        snap = _Snapshot(model, group)
        try:
            group.prune()
            snap.keep_grad_flags()
            sig = _signature(_run(model, x))
            if sig != ref:
                raise RuntimeError(f"output shapes changed from {ref} to {sig}")
        except Exception as exc:  # rolled back and reported as Skipped by the caller
            snap.restore()
            return (
                f"removing {n} of {root.channels} channels broke the model ({_error(exc)}); the layers were restored",
                True,
            )
        for m in members:
            report[m.name] = (before[m.name], _out_channels(m.layer))
        if len(members) > 1:
            notes.append(
                f"{', '.join(m.name for m in members)}: output channels coupled; "
                f"pruned together by {n} channels (the largest request)"
            )
        return None, False


def structured_blockers(model: nn.Module, names: list[str], example_input: Tensor | None) -> dict[str, str]:
    """Layers among `names` that structured pruning cannot touch, with the reason (e.g. the
    classifier, whose output channels are the model's outputs). Probed once on a copy: every
    layer pruned by one channel-fraction step, and whatever the technique skips is reported."""
    if not names:
        return {}
    if example_input is None:
        return {n: NO_INPUT for n in names}
    probe = copy.deepcopy(model)
    targets = {n: LayerPolicy(sparsity=0.25, structured=True) for n in names}
    skipped = StructuredPrune().apply(probe, targets, {"example_input": example_input})
    return {s.layer: s.reason for s in skipped}
