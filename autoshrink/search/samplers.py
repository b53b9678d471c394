"""Sampler names -> Optuna samplers."""
from __future__ import annotations

from typing import Any

import optuna

from ..errors import ConfigError

SAMPLERS = ("nsga2", "tpe", "gp", "random", "grid")


def make_sampler(spec: Any, *, seed: int, n_trials: int | None, search_space: dict[str, list[Any]]) -> optuna.samplers.BaseSampler:
    """Build the sampler. NSGA-II's population adapts to the budget (n_trials // 4, 8..50) so a
    small search still runs several generations instead of one random one."""
    if isinstance(spec, optuna.samplers.BaseSampler):
        return spec
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
