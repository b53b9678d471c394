"""What a search's settings resolve to for one model and space (the Plan): the bound space, fine-tune,
refine, screening, warm-start and sampler settings -- no side effects, nothing created."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from ..measure import LatencyConfig
from ..measure.gpu_runtime import GPU_RUNTIMES, require_gpu
from ..measure.runtime import require_int8_full
from ..space import BoundSpace, SearchSpace, bind
from ..task import Task
from ..techniques.structured import structured_blockers
from ..train import FinetuneConfig
from .config import SearchConfig
from .objectives import Objective, replayable_values, resolve
from .sampling.samplers import make_sampler
from .stages.fidelity import Screening
from .stages.narrow import narrow_cutoff as cutoff_for
from .stages.refine import refine_config, refine_steps
from .study.storage import default_storage


@dataclass(frozen=True)
class Plan:
    """What a SearchConfig resolves to for one model and space, before anything is created."""

    objectives: tuple[Objective, ...]
    bound: BoundSpace
    blocked: list[str]  # layers structured pruning cannot touch
    finetune: FinetuneConfig
    refine: FinetuneConfig | None
    latency: LatencyConfig | None
    screening: Screening | None
    n_warm: int
    cutoff: float | None
    first_sampler: Any
    study_name: str
    storage: str


def plan(model: nn.Module, task: Task, space: SearchSpace, cfg: SearchConfig) -> Plan:
    """Bind the space, derive the fine-tune, refine, screening, warm-start and sampler settings."""
    if cfg.runtime in GPU_RUNTIMES and cfg.executor == "local":  # Ray actors may have the GPU the driver lacks
        require_gpu(cfg.runtime, task.torch_device, "search")
    if cfg.runtime == "int8-full" and cfg.executor == "local":  # Ray actors may run elsewhere: they check
        require_int8_full(task.torch_device, "search")
    objs = resolve(cfg.objectives)
    bound = bind(space, model)
    # layers structured pruning cannot touch (e.g. the classifier) would only waste trials on no-ops
    blocked = structured_blockers(model, bound.structured_candidates(), task.example_input)
    bound = bound.without_structured(blocked)
    latency = cfg.latency
    if any(o.name == "latency" for o in objs):  # time each searched layer too: the latency lookup table
        latency = replace(latency or LatencyConfig(), layers=tuple(bound.layers))
    ft = space.finetune.to_dict()
    if cfg.finetune_steps is not None:
        ft["steps"] = cfg.finetune_steps
    ft = FinetuneConfig.from_dict({**ft, "seed": cfg.seed})
    refine = None
    if cfg.refine_top:
        steps = cfg.refine_steps if cfg.refine_steps is not None else refine_steps(ft.steps)
        refine = refine_config(ft, steps, cfg.refine_finetune)
    grid = {name: list(choice.values) for name, choice in bound.params()}
    study_name = cfg.study_name or f"autoshrink-{type(model).__name__.lower()}"
    return Plan(
        objectives=objs,
        bound=bound,
        blocked=blocked,
        finetune=ft,
        refine=refine,
        latency=latency,
        screening=_screening(cfg.screen) if ft.steps > 0 else None,  # a post-training candidate is screened by itself
        n_warm=_warm_count(cfg.warm_start, cfg.n_trials),
        cutoff=cutoff_for(cfg.max_accuracy_drop, cfg.narrow_cutoff) if cfg.sensitivity else None,
        first_sampler=make_sampler(
            cfg.sampler, seed=cfg.seed, n_trials=cfg.n_trials, search_space=grid, values_of=replayable_values(objs)
        ),
        study_name=study_name,
        storage=cfg.storage or default_storage(study_name),
    )


def _screening(screen: bool | float | Screening) -> Screening | None:
    if screen is False:
        return None
    if screen is True:
        return Screening()
    return screen if isinstance(screen, Screening) else Screening(share=float(screen))


def _warm_count(warm_start: bool | int, n_trials: int | None) -> int:
    """How many warm-start policies: True -> min(8, max(2, n_trials // 5)); an int as given; False -> 0."""
    if warm_start is True:
        return 8 if n_trials is None else min(8, max(2, n_trials // 5))
    return int(warm_start)
