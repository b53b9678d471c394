from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import RecipeError
from autoshrink.recipe import Fingerprint, apply_recipe_with_report, fingerprint

from .conftest import state_digest
from .models import Mixed, Partial, Retyped


def test_mismatch_lists_missing_extra_and_reshaped_layers(recipe) -> None:
    with pytest.raises(RecipeError) as info:
        ash.apply_recipe(Mixed(), recipe)
    msg = str(info.value)
    assert "\n" not in msg and "the model does not match the recipe's fingerprint (Tiny)" in msg
    assert "model class: recorded Tiny, found Mixed" in msg
    assert "missing 1 layer(s): fc2 (Linear weight [10, 32] bias [10])" in msg
    assert "extra 1 layer(s): head (Linear weight [10, 16] bias [10])" in msg
    assert (
        "reshaped 1 layer(s): fc1 (expected Linear weight [32, 64] bias [32], found Linear weight [16, 64] bias [16])"
    ) in msg
    assert "strict=False" in msg


def test_a_changed_layer_type_is_a_mismatch(recipe) -> None:
    with pytest.raises(
        RecipeError,
        match=re.escape(
            "reshaped 1 layer(s): fc2 (expected Linear weight [10, 32] "
            "bias [10], found MyLinear weight [10, 32] bias [10])"
        ),
    ):
        ash.apply_recipe(Retyped(), recipe)


def test_not_strict_applies_the_matching_layers_and_reports_the_rest(recipe) -> None:
    model = Partial()
    with pytest.warns(ash.CompressionWarning, match="applied with strict=False.*not applied to 1 layer"):
        small, report = apply_recipe_with_report(model, recipe, strict=False)
    assert report.not_applied == ("fc2",)
    assert [n for n, _, _ in report.mismatch.changed] == ["fc2"] and [n for n, _ in report.mismatch.extra] == ["fc3"]
    assert report.mismatch.model_class == ("Tiny", "Partial") and not report.mismatch.missing
    assert int((small.fc1.weight == 0).sum()) == 1024 and max(len(r.unique()) for r in small.fc1.weight) <= 15
    assert torch.equal(small.fc2.weight, model.fc2.weight) and torch.equal(small.fc3.weight, model.fc3.weight)
    assert any("fc2" in line and "expected Linear weight [10, 32]" in line for line in report.lines())


@pytest.mark.parametrize("wrap", [nn.DataParallel, torch.compile], ids=["DataParallel", "torch.compile"])
def test_wrapped_models_apply_like_the_plain_model(searched, recipe, wrap) -> None:
    wrapped = wrap(searched.model)
    assert any(n.startswith(("module.", "_orig_mod.")) for n, _ in wrapped.named_modules())
    small = ash.apply_recipe(wrapped, recipe)
    assert type(small).__name__ == "Tiny"
    assert state_digest(small) == state_digest(ash.apply_recipe(searched.model, recipe))


def test_prefixed_names_in_the_recipe_are_normalized(searched, recipe) -> None:
    fp = fingerprint(searched.model)
    prefixed = dataclasses.replace(
        recipe,
        model=Fingerprint("Tiny", {f"module._orig_mod.{n}": s for n, s in fp.layers.items()}),
        policy=ash.Policy(layers={f"module.{n}": lp for n, lp in recipe.policy.layers.items()}, distill=True),
    )
    assert state_digest(ash.apply_recipe(searched.model, prefixed)) == state_digest(
        ash.apply_recipe(searched.model, recipe)
    )


def test_wrong_argument_types(searched, recipe) -> None:
    with pytest.raises(RecipeError, match="model must be a torch.nn.Module, got dict"):
        ash.apply_recipe({}, recipe)
    with pytest.raises(RecipeError, match="recipe must be an autoshrink.Recipe or a path, got Policy"):
        ash.apply_recipe(searched.model, ash.Policy())
