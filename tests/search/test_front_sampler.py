"""The front sampler: ranks, crowding, neighbour mutation, layer-wise crossover, no repeats."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from autoshrink.search.sampling.front import PARENTS_ATTR, FrontSampler, crowding, ranks
from autoshrink.search.sampling.samplers import make_sampler

SPACE = {
    "fc1.sparsity": [0.0, 0.5, 0.7, 0.9],
    "fc1.bits": [32, 8, 4, 2],
    "fc2.bits": [32, 8, 4],
    "distill": [True, False],
}
ORDER = {
    "fc1.sparsity": [0.0, 0.5, 0.7, 0.9],
    "fc1.bits": [2, 4, 8, 32],
    "fc2.bits": [4, 8, 32],
    "distill": [False, True],
}


def _study(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)


def _add(study: optuna.Study, params: dict, values: list[float], violation: float | None = None) -> int:
    dists = {n: optuna.distributions.CategoricalDistribution(SPACE[n]) for n in SPACE}
    trial = optuna.trial.create_trial(
        params=params,
        distributions=dists,
        values=values,
        system_attrs={} if violation is None else {"constraints:accuracy_drop": violation},
    )
    study.add_trial(trial)
    return study.trials[-1].number


def _ask(study: optuna.Study) -> tuple[dict, list[int] | None]:
    trial = study.ask()
    params = {n: trial.suggest_categorical(n, SPACE[n]) for n in SPACE}
    parents = study._storage.get_trial_system_attrs(trial._trial_id).get(PARENTS_ATTR)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return params, parents


def _steps(a: dict, b: dict) -> dict[str, int]:
    """Per differing parameter, how many places apart its two values are in the ordered choices."""
    return {n: abs(ORDER[n].index(a[n]) - ORDER[n].index(b[n])) for n in SPACE if a[n] != b[n]}


def test_ranks_put_feasible_fronts_first_then_infeasible_by_violation():
    values = np.array([[0.0, 3.0], [1.0, 1.0], [2.0, 2.0], [3.0, 0.0], [0.0, 0.0], [0.5, 0.5]])
    violation = np.array([0.0, 0.0, 0.0, 0.0, 0.3, 0.1])
    assert ranks(values, violation).tolist() == [0, 0, 1, 0, 3, 2]


def test_crowding_distance_exact():
    values = np.array([[0.0, 4.0], [1.0, 2.0], [3.0, 1.0], [4.0, 0.0]])
    d = crowding(values)
    assert math.isinf(d[0]) and math.isinf(d[3])
    assert d[1] == pytest.approx(3 / 4 + 3 / 4)
    assert d[2] == pytest.approx(3 / 4 + 2 / 4)
    # only the low end of objective 1 open (a size): the other ends count their one-sided gap twice
    d = crowding(values, [False, True])
    assert d[0] == pytest.approx(2 * 1 / 4 + 2 * 2 / 4) and math.isinf(d[3])
    assert d[1] == pytest.approx(3 / 4 + 3 / 4) and d[2] == pytest.approx(3 / 4 + 2 / 4)


def test_children_of_a_single_parent_are_one_neighbour_step_per_changed_parameter():
    study = _study(FrontSampler(SPACE, seed=0, explore=0.0, crossover=0.0))
    parent = {"fc1.sparsity": 0.5, "fc1.bits": 8, "fc2.bits": 32, "distill": True}
    number = _add(study, parent, [0.9, 100.0], violation=0.0)
    for _ in range(20):
        child, parents = _ask(study)
        steps = _steps(parent, child)
        assert steps and set(steps.values()) == {1}, (child, steps)
        assert parents == [number]


def test_no_child_repeats_a_trial_in_the_study():
    study = _study(FrontSampler(SPACE, seed=1, explore=0.0, crossover=0.0))
    _add(study, {"fc1.sparsity": 0.0, "fc1.bits": 32, "fc2.bits": 32, "distill": False}, [0.9, 100.0], violation=0.0)
    # the corner has exactly 3 neighbours one step away in one parameter; 2-parameter steps exist too
    asked = [tuple(sorted(_ask(study)[0].items())) for _ in range(12)]
    assert len(set(asked)) == 12


def test_crossover_takes_whole_layers_from_either_parent():
    a = {"fc1.sparsity": 0.9, "fc1.bits": 2, "fc2.bits": 4, "distill": True}
    b = {"fc1.sparsity": 0.0, "fc1.bits": 32, "fc2.bits": 32, "distill": False}
    sampler = FrontSampler(SPACE, seed=3, explore=0.0, crossover=1.0)
    for _ in range(50):
        child = sampler._cross(a, b)
        assert (child["fc1.sparsity"], child["fc1.bits"]) in {(0.9, 2), (0.0, 32)}


def test_feasible_front_wins_the_tournament_over_infeasible_trials():
    study = _study(FrontSampler(SPACE, seed=0))
    good = _add(study, {"fc1.sparsity": 0.5, "fc1.bits": 8, "fc2.bits": 8, "distill": True}, [0.9, 50.0], violation=0.0)
    _add(study, {"fc1.sparsity": 0.9, "fc1.bits": 2, "fc2.bits": 4, "distill": True}, [0.5, 10.0], violation=0.3)
    sampler = study.sampler
    scores = sampler._scores(study.trials, [t.values for t in study.trials], study.directions)
    assert scores[good][0] == 0 and scores[1][0] == 1
    wins = [sampler._tournament(scores) for _ in range(200)]
    # a tournament picks the infeasible trial only when both draws are it: about a quarter
    assert 0.15 < wins.count(1) / 200 < 0.35


def test_without_completed_trials_it_samples_at_random_over_the_space():
    study = _study(FrontSampler(SPACE, seed=0))
    seen = {n: set() for n in SPACE}
    for _ in range(60):
        params, parents = _ask(study)
        assert parents is None
        for n, v in params.items():
            seen[n].add(v)
    assert seen == {n: set(v) for n, v in SPACE.items()}


def test_make_sampler_knows_front():
    assert isinstance(make_sampler("front", seed=0, n_trials=None, search_space=SPACE), FrontSampler)
