"""Sparsity "2:4" as a search choice: through the pre-pass, narrowing, warm start, sampling, a gradual
fine-tune, the report, and recipes that record it and replay bitwise."""

from __future__ import annotations

import pytest
import torch

import autoshrink as ash
from autoshrink.errors import ConfigError
from autoshrink.recipe import measure_recipe
from autoshrink.report import write_report
from autoshrink.space import bind
from autoshrink.zoo import digits_task

from .conftest import FAST

SPACE = """
defaults:
  sparsity: [0.0, 0.5, "2:4"]
  structured: [false, true]
  criterion: [magnitude, wanda]
  bits: [32, 8]
finetune: {steps: 4}
"""


@pytest.fixture(scope="module")
def searched(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("semi")
    (tmp / "space.yaml").write_text(SPACE)
    result = ash.search(
        tiny_model,
        digits_task(device="cpu"),
        ash.load_space(tmp / "space.yaml"),
        n_trials=12,
        refine_top=0,
        storage=f"sqlite:///{tmp}/s.db",
        study_name="s",
        latency=FAST,
        objectives=("accuracy", "size"),
        runtime="float",
        seed=0,
        sensitivity="full",
        progress=False,
    )
    return result, tmp


def test_the_space_offers_2_4_and_never_structured(tiny_model, tmp_path) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)
    bound = bind(ash.load_space(tmp_path / "space.yaml"), tiny_model)
    assert bound.layers["fc1"]["sparsity"].values == (0.0, 0.5, "2:4")
    params = {"fc1.sparsity": "2:4", "fc1.structured": True, "fc1.criterion": "wanda", "fc1.bits": 8}
    lp = bound.policy_from_params(params).layers["fc1"]
    assert (lp.pattern, lp.structured, lp.criterion, lp.bits) == ("2:4", False, "wanda", 8)


def test_bad_pattern_in_yaml_names_the_place(tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text('defaults:\n  sparsity: [0.0, "1:4"]\n')
    with pytest.raises(ConfigError, match=r"defaults\.sparsity\[1\].*got '1:4'.*or '2:4'"):
        ash.load_space(tmp_path / "bad.yaml")
    (tmp_path / "unquoted.yaml").write_text("defaults:\n  sparsity: [0.0, 2:4]\n")
    with pytest.raises(ConfigError) as err:
        ash.load_space(tmp_path / "unquoted.yaml")
    assert str(err.value).endswith(
        "defaults.sparsity[1]: got 124; sparsity must be in [0, 1) or '2:4' (YAML reads an unquoted 2:4 as the "
        "number 124: write it in quotes)."
    )


def test_prepass_measures_2_4_and_trials_use_it(searched) -> None:
    result, _ = searched
    rows = result.study.user_attrs["sensitivity"]["rows"]
    assert sorted((r["layer"], r["field"]) for r in rows if r["value"] == "2:4") == [
        ("fc1", "sparsity"),
        ("fc2", "sparsity"),
    ]
    states = [t.state.name for t in result.study.trials]
    assert states.count("FAIL") == 0
    semi = [t for t in result.study.trials if "2:4" in t.params.values()]
    assert semi, "no trial sampled 2:4"
    for t in semi:
        layers = t.user_attrs["policy"]["layers"]
        assert any(lp["sparsity"] == "2:4" and lp["structured"] is False for lp in layers.values())


def test_2_4_trials_replay_bitwise_from_their_recipe(searched, tiny_model) -> None:
    result, tmp = searched
    task = digits_task(device="cpu")
    semi = [t for t in result.study.trials if t.state.name == "COMPLETE" and "2:4" in t.params.values()]
    for t in semi[:2]:
        recipe = result.recipe(t.number)
        recipe.save(tmp / f"r{t.number}.yaml")
        assert "sparsity: '2:4'" in (tmp / f"r{t.number}.yaml").read_text()
        loaded = ash.Recipe.load(tmp / f"r{t.number}.yaml")
        small = ash.apply_recipe(tiny_model, loaded, task=task)
        again = ash.apply_recipe(tiny_model, loaded, task=task)
        assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), again.state_dict().values()))
        for name, lp in loaded.policy.layers.items():
            if lp.semi_structured:
                w = small.get_submodule(name).weight.detach()
                assert torch.equal(
                    (w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2,
                    torch.ones(w.shape[0], w.shape[1] // 4, dtype=torch.bool),
                )
        m = measure_recipe(small, loaded, task, latency=FAST)
        recorded = t.user_attrs["measurement"]
        assert (m.accuracy, m.size_bytes) == (recorded["accuracy"], recorded["size_bytes"]), t.number


def test_the_report_shows_2_4(searched) -> None:
    result, tmp = searched
    html = write_report(result, tmp / "report.html").read_text()
    assert "sparsity 2:4" in html  # the sensitivity heatmap's column
