"""The "front" sampler: every new candidate is bred from the current front, one step away from it.

Unlike NSGA-II it needs no generations of COMPLETE trials (with screening most candidates end PRUNED).
Per trial: parents are COMPLETE trials ranked by constrained domination (feasible by non-dominated rank,
infeasible by total violation, on `values_of`; ties by log-scale crowding distance, `crowding`), drawn
by binary tournaments; with probability CROSSOVER each layer's choices come whole from either parent;
each parameter mutates with probability 1 / n (at least one) to a neighbouring ordered value; a duplicate
is redrawn (RETRIES); with probability EXPLORE, or before any trial completes, a uniform draw instead.
Parents: system attribute "front:parents". Reproducible for a seed with one worker only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ...policy import SEMI_STRUCTURED, sparsity_fraction
from ..pareto import non_dominated

EXPLORE = 0.1
CROSSOVER = 0.5
RETRIES = 32
PARENTS_ATTR = "front:parents"


def _group(name: str) -> str:
    """The layer a parameter belongs to ("features.0.bits" -> "features.0"); "distill" is its own."""
    return name.rsplit(".", 1)[0] if "." in name else name


def _ordered(values: Sequence[Any]) -> list[Any]:
    """Choices in their natural order (numbers ascending, False before True, sparsity "2:4" just past
    0.5), for neighbour steps."""
    if SEMI_STRUCTURED in values:
        return sorted(values, key=lambda v: (sparsity_fraction(v), isinstance(v, str)))
    try:
        return sorted(values)
    except TypeError:
        return list(values)


def ranks(values: np.ndarray, violation: np.ndarray) -> np.ndarray:
    """Constrained-domination rank of each row of `values` (minimization): feasible rows (violation 0)
    by successive non-dominated fronts 0, 1, ...; infeasible rows after them, by increasing violation."""
    n = len(values)
    rank = np.full(n, -1, dtype=int)
    feasible = np.flatnonzero(violation <= 0)
    r = 0
    left = feasible
    while len(left):
        front = left[non_dominated(values[left])]
        rank[front] = r
        left = np.setdiff1d(left, front)
        r += 1
    infeasible = np.flatnonzero(violation > 0)
    for k, i in enumerate(infeasible[np.argsort(violation[infeasible], kind="stable")]):
        rank[i] = r + k
    return rank


def crowding(values: np.ndarray, open_low: Sequence[bool] | None = None) -> np.ndarray:
    """Crowding distance of each row within its set (minimization): per objective, the gap between a
    row's two neighbours over the set's span, summed. The low (best) end of an objective with
    `open_low` is infinite, as in NSGA-II; every other end counts its one-sided gap twice. With all
    ends open this is NSGA-II's distance; the search opens only the cheap ends of sizes, latencies and
    MACs, so the most compressed point is always kept pushing, and the uncompressed end -- the
    untouched model, whose neighbourhood is known -- is not."""
    n, m = values.shape
    open_low = [True] * m if open_low is None else list(open_low)
    dist = np.zeros(n)
    if n == 1:
        return np.full(n, math.inf)
    for j in range(m):
        order = np.argsort(values[:, j], kind="stable")
        span = values[order[-1], j] - values[order[0], j]
        if span <= 0:
            continue
        gaps = np.diff(values[order, j]) / span
        dist[order[1:-1]] += gaps[:-1] + gaps[1:]
        dist[order[0]] += math.inf if open_low[j] else 2 * gaps[0]
        dist[order[-1]] += 2 * gaps[-1]
    return dist


class FrontSampler(optuna.samplers.BaseSampler):
    """Steady-state evolutionary sampler over a categorical space (see the module docstring)."""

    def __init__(
        self,
        space: Mapping[str, Sequence[Any]],
        *,
        seed: int | None = None,
        explore: float = EXPLORE,
        crossover: float = CROSSOVER,
        values_of: Callable[[FrozenTrial], Sequence[float] | None] | None = None,
    ) -> None:
        self._values_of = values_of or (lambda t: t.values)
        self._space = {name: list(values) for name, values in space.items()}
        self._order = {name: _ordered(values) for name, values in self._space.items()}
        self._seed = seed
        self._rng = np.random.RandomState(seed)
        self._explore = explore
        self._crossover = crossover

    def reseed_rng(self) -> None:
        self._rng = np.random.RandomState()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {name: CategoricalDistribution(values) for name, values in self._space.items()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        done, values = [], []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            v = self._values_of(t) if all(n in t.params for n in self._space) else None
            if v is not None:
                done.append(t)
                values.append(list(v))
        seen = {self._key(t.params) for t in study.get_trials(deepcopy=False) if t.params}
        if done and self._rng.rand() >= self._explore:
            scores = self._scores(done, values, study.directions)
            for _ in range(RETRIES):
                a, b = self._tournament(scores), self._tournament(scores)
                child = self._mutate(self._cross(done[a].params, done[b].params))
                if self._key(child) not in seen:
                    study._storage.set_trial_system_attr(
                        trial._trial_id, PARENTS_ATTR, sorted({done[a].number, done[b].number})
                    )
                    return child
        for _ in range(RETRIES):
            child = {n: vs[self._rng.randint(len(vs))] for n, vs in self._space.items()}
            if self._key(child) not in seen:
                break
        return child

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """A parameter outside the declared space: uniformly at random among its choices."""
        choices = getattr(param_distribution, "choices", None)
        if choices is None:
            raise ValueError(
                f"the front sampler handles categorical parameters only; {param_name!r} is "
                f"{type(param_distribution).__name__}."
            )
        return choices[self._rng.randint(len(choices))]

    def _key(self, params: Mapping[str, Any]) -> tuple:
        return tuple((n, params.get(n)) for n in self._space)

    def _scores(
        self, trials: Sequence[FrozenTrial], values: Sequence[Sequence[float]], directions: Sequence[StudyDirection]
    ) -> list[tuple[int, float]]:
        """(rank, -crowding) per trial: lower is better."""
        vals = np.array(
            [[v if d == StudyDirection.MINIMIZE else -v for v, d in zip(row, directions)] for row in values],
            dtype=float,
        )
        logged = vals.copy()
        for j, d in enumerate(directions):  # sizes, latencies, MACs: ratios matter, not differences
            if d == StudyDirection.MINIMIZE and np.all(vals[:, j] > 0):
                logged[:, j] = np.log(vals[:, j])
        violation = np.array([sum(max(0.0, c) for c in t.constraints.values()) for t in trials])
        rank = ranks(vals, violation)
        crowd = np.zeros(len(trials))
        cheap_end = [d == StudyDirection.MINIMIZE for d in directions]  # sizes, latencies, MACs; not accuracy
        for r in np.unique(rank):
            members = np.flatnonzero(rank == r)
            crowd[members] = crowding(logged[members], cheap_end)
        return [(int(r), -float(c)) for r, c in zip(rank, crowd)]

    def _tournament(self, scores: Sequence[tuple[int, float]]) -> int:
        i, j = self._rng.randint(len(scores)), self._rng.randint(len(scores))
        return i if scores[i] <= scores[j] else j

    def _cross(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        child = {n: a[n] for n in self._space}
        if self._rng.rand() < self._crossover:
            groups = sorted({_group(n) for n in self._space})
            take_b = {g for g in groups if self._rng.rand() < 0.5}
            child = {n: (b[n] if _group(n) in take_b else a[n]) for n in self._space}
        return child

    def _mutate(self, params: dict[str, Any]) -> dict[str, Any]:
        names = [n for n in self._space if len(self._space[n]) > 1]
        if not names:
            return params
        hit = [n for n in names if self._rng.rand() < 1.0 / len(names)] or [names[self._rng.randint(len(names))]]
        out = dict(params)
        for n in hit:
            order = self._order[n]
            i = order.index(out[n]) if out[n] in order else self._rng.randint(len(order))
            steps = [k for k in (i - 1, i + 1) if 0 <= k < len(order)]
            out[n] = order[steps[self._rng.randint(len(steps))]]
        return out
