"""Recipes: export the chosen policy with its fine-tune settings and model fingerprint, validate it,
and replay it on a model of the same architecture."""

from __future__ import annotations

from .apply import RecipeReport, apply_recipe, apply_recipe_with_report, measure_recipe
from .fingerprint import Fingerprint, InputSpec, LayerSignature, Mismatch, compare, fingerprint
from .recipe import FORMAT, Origin, Recipe, recipe_from_search, versions

__all__ = [
    "FORMAT",
    "Fingerprint",
    "InputSpec",
    "LayerSignature",
    "Mismatch",
    "Origin",
    "Recipe",
    "RecipeReport",
    "apply_recipe",
    "apply_recipe_with_report",
    "compare",
    "fingerprint",
    "measure_recipe",
    "recipe_from_search",
    "versions",
]
