from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import autoshrink as ash
from autoshrink.recipe import measure_recipe
from autoshrink.zoo import digits_task

from ..search.conftest import FAST
from .conftest import ROOT, state_digest, trained_tiny

FRESH = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    import autoshrink as ash
    from autoshrink.recipe import measure_recipe
    from autoshrink.zoo import digits_task
    from tests.recipe.conftest import state_digest
    from tests.recipe.models import tiny
    from tests.search.conftest import FAST

    task = digits_task(device="cpu")
    out = {{}}
    for path in {paths!r}:
        recipe = ash.Recipe.load(path)
        small = ash.apply_recipe(tiny({weights!r}), recipe, task=task)
        m = measure_recipe(small, recipe, task, latency=FAST)
        out[path] = {{"accuracy": m.accuracy, "size_bytes": m.size_bytes, "runtime": m.runtime,
                     "digest": state_digest(small)}}
    print(json.dumps(out))
""")


@pytest.mark.filterwarnings("ignore::autoshrink.CompressionWarning")  # structured fc2 (the output layer) is skipped
def test_every_trial_replays_exactly_in_a_fresh_process(searched, tmp_path) -> None:
    result = searched.result
    done = [t.number for t in result.study.trials if t.state.name == "COMPLETE"]
    recipes = {str(tmp_path / f"t{n}.yaml"): result.recipe(n) for n in done}
    best = result.best(max_accuracy_drop=0.05, minimize="size")
    recipes[str(tmp_path / "best.yaml")] = best
    for path, r in recipes.items():
        r.save(path)
    kinds = [r.policy for r in recipes.values()]
    assert any(p.distill and p.active() for p in kinds), "the search should include a distilled trial"
    assert any(lp.structured and lp.sparsity for p in kinds for lp in p.layers.values()), "and a structured one"

    script = FRESH.format(root=str(ROOT), paths=list(recipes), weights=searched.weights)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])

    task = digits_task(device="cpu")
    for path, r in recipes.items():
        record = result.study.trials[r.trial].user_attrs["measurement"]
        got = fresh[path]
        print(
            f"trial {r.trial}: recorded accuracy {record['accuracy']:.4f} size {record['size_bytes']} "
            f"({record['runtime']}); fresh process {got['accuracy']:.4f} size {got['size_bytes']} ({got['runtime']})"
        )
        assert got["size_bytes"] == record["size_bytes"] == r.metrics.size_bytes
        assert abs(got["accuracy"] - record["accuracy"]) <= 0.001
        assert got["runtime"] == record["runtime"]
        # the same recipe + model + task on CPU: bitwise the same weights, here and there
        assert state_digest(ash.apply_recipe(searched.model, r, task=task)) == got["digest"]


def test_best_is_a_recipe_of_the_selected_trial(searched) -> None:
    r = searched.result.best(max_accuracy_drop=0.05, minimize="size")
    t = searched.result.study.trials[r.trial]
    assert isinstance(r, ash.Recipe)
    assert r.policy == ash.Policy.from_dict(t.user_attrs["policy"])
    assert r.metrics.size_bytes == t.user_attrs["measurement"]["size_bytes"] == r.measurement.size_bytes
    assert r.baseline.size_bytes == searched.result.baseline.size_bytes
    assert (r.source.study, r.source.storage) == ("tiny", searched.storage)
    assert r.finetune == ash.FinetuneConfig(steps=10, seed=0) and r.seed == 0
    assert r.example_input.shape == (1, 1, 8, 8) and r.example_input.dtype == "float32"
    assert list(r.model.layers) == ["fc1", "fc2"] and r.model.model_class == "Tiny"
    assert r.model.layers["fc1"].params == {"weight": (32, 64), "bias": (32,)}


def test_save_load_round_trip_is_equal_and_stable(recipe, tmp_path) -> None:
    recipe.save(tmp_path / "a.yaml")
    loaded = ash.Recipe.load(tmp_path / "a.yaml")
    assert loaded == recipe and loaded.path == str(tmp_path / "a.yaml")
    loaded.save(tmp_path / "b.yaml")
    assert (tmp_path / "a.yaml").read_text() == (tmp_path / "b.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml"]  # no temporary file left behind


def test_retrained_copy_gets_the_policy_structure(searched, recipe) -> None:
    retrained = trained_tiny(1)
    assert not torch.equal(retrained.fc1.weight.cpu(), searched.model.fc1.weight.cpu())
    task = digits_task(device="cpu")
    for small in (ash.apply_recipe(retrained, recipe), ash.apply_recipe(retrained, recipe, task=task)):
        w1, w2 = small.fc1.weight.detach(), small.fc2.weight.detach()
        assert int((w1 == 0).sum()) == 1024  # round(0.5 * 32 * 64)
        assert max(len(row.unique()) for row in w1) <= 15  # 4-bit codes: at most 2^4 - 1 values a channel
        assert max(len(row.unique()) for row in w2) <= 255 and int((w2 == 0).sum()) < 32
    m = measure_recipe(small, recipe, task, latency=FAST)
    assert m.accuracy > 0.8 and [layer.bits for layer in m.layers] == [4, 8]
    again = ash.apply_recipe(retrained, recipe, task=task)
    assert state_digest(again) == state_digest(small)  # deterministic on CPU
    assert state_digest(small) != state_digest(ash.apply_recipe(searched.model, recipe, task=task))


def test_structured_recipe_applies_without_a_task_using_the_recorded_input_shape(searched, recipe) -> None:
    structured = dataclasses.replace(
        recipe, policy=ash.Policy(layers={"fc1": ash.LayerPolicy(sparsity=0.5, structured=True)})
    )
    small = ash.apply_recipe(trained_tiny(1), structured)
    assert (small.fc1.out_features, small.fc2.in_features) == (16, 16)
    m = measure_recipe(small, structured, latency=FAST)
    assert m.accuracy != m.accuracy and m.macs == 64 * 16 + 16 * 10  # accuracy NaN: not measured without a task


def test_a_codebook_recipe_saves_loads_and_replays_bitwise(searched, recipe, tmp_path) -> None:
    L = ash.LayerPolicy
    book = dataclasses.replace(
        recipe,
        policy=ash.Policy(
            layers={"fc1": L(sparsity=0.5, bits=4, codebook="kmeans"), "fc2": L(bits=3, codebook="kmeans")},
            distill=True,
        ),
    )
    book.save(tmp_path / "book.yaml")
    assert "codebook: kmeans" in (tmp_path / "book.yaml").read_text()
    loaded = ash.Recipe.load(tmp_path / "book.yaml")
    assert loaded.policy == book.policy
    task = digits_task(device="cpu")
    a = ash.apply_recipe(trained_tiny(0), loaded, task=task)
    b = ash.apply_recipe(trained_tiny(0), loaded, task=task)
    assert state_digest(a) == state_digest(b)
    assert torch.unique(a.fc2.weight).numel() <= 8
