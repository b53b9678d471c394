"""Sampler names -> Optuna samplers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna

from ...errors import ConfigError
from .front import FrontSampler

SAMPLERS = ("front", "nsga2", "tpe", "gp", "random", "grid")


def make_sampler(
    spec: Any,
    *,
    seed: int,
    n_trials: int | None,
    search_space: dict[str, list[Any]],
    values_of: Callable[[Any], Sequence[float] | None] | None = None,
) -> optuna.samplers.BaseSampler:
    """Build the sampler. "front" (front_sampler.py) breeds each candidate from the study's current
    front, ranked by `values_of` (a finished trial's objective values; default its Optuna values);
    NSGA-II's population adapts to the budget (n_trials // 4, 8..50) so a small search still runs
    several generations instead of one random one (with n_trials only)."""
    if isinstance(spec, optuna.samplers.BaseSampler):
        return spec
    if spec == "front":
        return FrontSampler(search_space, seed=seed, values_of=values_of)
    if spec == "nsga2":
        pop = 50 if n_trials is None else max(8, min(50, n_trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    if spec == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if spec == "gp":
        try:
            import scipy  # noqa: F401  (GPSampler fails at trial 10 without it)
        except ImportError:
            raise ConfigError("sampler='gp' needs scipy; pip install scipy, or use 'nsga2'.") from None
        return optuna.samplers.GPSampler(seed=seed)
    if spec == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec == "grid":
        size = 1
        for values in search_space.values():
            size *= len(values)
        if size > 100_000:
            raise ConfigError(f"sampler='grid': the space has {size} points; use 'nsga2' or a smaller space.")
        return optuna.samplers.GridSampler(search_space or {"distill": [False]}, seed=seed)
    raise ConfigError(f"sampler: got {spec!r}; use one of {', '.join(SAMPLERS)} or an optuna sampler object.")
