"""Recipes and studies record how many unlabeled inputs a distilling fine-tune read (Task.unlabeled_data)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

import autoshrink as ash
from autoshrink.errors import RecipeError
from autoshrink.zoo import digits_task

from ..search.conftest import FAST, Tiny


def test_a_recipe_writes_unlabeled_only_where_used_and_reads_it_back(recipe, tmp_path) -> None:
    assert recipe.unlabeled is None and "unlabeled" not in recipe.to_yaml()
    with_extra = dataclasses.replace(recipe, unlabeled=50)
    with_extra.save(tmp_path / "r.yaml")
    assert "\nunlabeled: 50\n" in (tmp_path / "r.yaml").read_text()
    assert ash.Recipe.load(tmp_path / "r.yaml") == with_extra
    text = with_extra.to_yaml().replace("\nunlabeled: 50\n", "\nunlabeled: 0\n")
    (tmp_path / "bad.yaml").write_text("\n".join(line for line in text.splitlines() if not line.startswith("checksum")))
    with pytest.raises(RecipeError) as info:
        ash.Recipe.load(tmp_path / "bad.yaml")
    assert "unlabeled: got 0" in str(info.value) and "expected an integer >= 1" in str(info.value)


def test_replaying_a_distilled_recipe_without_its_unlabeled_data_warns(searched, recipe) -> None:
    task = digits_task(device="cpu")
    with pytest.warns(ash.CompressionWarning, match="distilling on 50 unlabeled inputs but the task has 0"):
        ash.apply_recipe(searched.model, dataclasses.replace(recipe, unlabeled=50), task=task)
    same = dataclasses.replace(task, unlabeled_data=task.eval_data.tensors[0][:50])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ash.CompressionWarning)
        ash.apply_recipe(searched.model, dataclasses.replace(recipe, unlabeled=50), task=same)


def test_a_search_records_the_unlabeled_count_in_its_study_and_recipes(tmp_path) -> None:
    base = digits_task(device="cpu")
    task = dataclasses.replace(base, unlabeled_data=base.eval_data.tensors[0][:40])
    (tmp_path / "space.yaml").write_text("defaults:\n  bits: [8, 4]\ndistill: [true]\nfinetune: {steps: 2}\n")
    result = ash.search(
        Tiny(),
        task,
        ash.load_space(tmp_path / "space.yaml"),
        n_trials=2,
        latency=FAST,
        seed=0,
        sensitivity=False,
        screen=False,
        storage=f"sqlite:///{tmp_path}/s.db",
        study_name="s",
    )
    assert result.study.user_attrs["unlabeled"] == 40
    done = [t.number for t in result.study.trials if t.state.name == "COMPLETE" and "policy" in t.user_attrs]
    assert result.recipe(done[0]).unlabeled == 40
