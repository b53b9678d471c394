"""The least-squares refit of the out / down projections after heads or FFN neurons go (block_refit.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import autoshrink as ash
from autoshrink.policy import BlockPolicy
from autoshrink.techniques import block_refit
from autoshrink.techniques.apply import apply_policy_with_report, structure_key, task_calibration
from autoshrink.techniques.block_importance import block_importance, lowest
from autoshrink.techniques.block_refit import head_columns, refit_stats, refit_weights
from autoshrink.techniques.calibration import LayerInputs, StatsCache
from autoshrink.techniques.transformer_blocks import find_blocks

from .conftest import HEAD_SIZE, bert_task, tiny_bert

L1 = "bert.encoder.layer.1"


def gram_of(x: np.ndarray) -> LayerInputs:
    rows = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    return LayerInputs(torch.from_numpy(rows.T @ rows), x.shape[0])


def test_refit_weights_is_the_least_squares_fit_of_the_kept_columns(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) + rng.normal(size=6)
    w, b = rng.normal(size=(3, 6)), rng.normal(size=3)
    keep = [0, 2, 3, 5]
    monkeypatch.setattr(block_refit, "REFIT_DAMP", 0.0)
    new_w, new_b = refit_weights(torch.from_numpy(w), torch.from_numpy(b), gram_of(x), keep)
    design = np.concatenate([x[:, keep], np.ones((200, 1))], axis=1)
    solved, *_ = np.linalg.lstsq(design, x @ w.T + b, rcond=None)  # (|K| + 1, out)
    np.testing.assert_allclose(new_w.numpy(), solved[:-1].T, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(new_b.numpy(), solved[-1], rtol=1e-9, atol=1e-9)
    same_w, same_b = refit_weights(torch.from_numpy(w), torch.from_numpy(b), gram_of(x), range(6))
    np.testing.assert_allclose(same_w.numpy(), w, atol=1e-9)  # keeping every column changes nothing
    np.testing.assert_allclose(same_b.numpy(), b, atol=1e-9)


def test_refit_weights_damps_by_one_hundredth_of_the_mean_diagonal_and_adds_a_missing_bias() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    w = rng.normal(size=(2, 4)).astype(np.float32)
    keep = [1, 3]
    new_w, new_b = refit_weights(torch.from_numpy(w), None, gram_of(x), keep)
    g = gram_of(x).gram.numpy()
    k = [1, 3, 4]
    g_kk = g[np.ix_(k, k)] + 0.01 * np.mean(np.diag(g[np.ix_(k, k)])) * np.eye(3)
    expected = np.concatenate([w, np.zeros((2, 1))], axis=1) @ g[:, k] @ np.linalg.inv(g_kk)
    assert new_w.dtype == torch.float32 and new_b.shape == (2,)
    np.testing.assert_allclose(new_w.numpy(), expected[:, :2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_b.numpy(), expected[:, 2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="statistics of 4 input columns for a layer with 3"):
        refit_weights(torch.zeros(2, 3), None, gram_of(x), [0])


def outputs_of(model: nn.Module, layer: str, batches) -> Tensor:
    """The named layer's outputs over the calibration batches, one row per real (unpadded) token."""
    rows: list[Tensor] = []
    mask: list[Tensor] = []

    def hook(module: nn.Module, args, out: Tensor) -> None:
        rows.append(out[mask[-1].bool()])

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x in batches():
                mask.append(x["attention_mask"])
                model(**x)
    finally:
        handle.remove()
    return torch.cat(rows)


def test_a_refit_block_gives_the_fit_on_the_untouched_models_statistics_and_a_smaller_error() -> None:
    model, task = tiny_bert(), bert_task()
    calibration = task_calibration(task)
    block = next(b for b in find_blocks(model) if b.name == L1)
    heads_scores, neuron_scores = block_importance(model, [block], calibration())[L1]
    heads, neurons = lowest(heads_scores, 0.5), lowest(neuron_scores, 0.5)
    stats = refit_stats(model, [block.out, block.down], calibration)
    out, down = model.get_submodule(block.out), model.get_submodule(block.down)
    want_out = refit_weights(out.weight, out.bias, stats[block.out], head_columns(block, heads))
    want_down = refit_weights(down.weight, down.bias, stats[block.down], [j for j in range(64) if j not in neurons])

    plain = ash.apply_policy(model, ash.Policy(blocks={L1: BlockPolicy(0.5, 0.5, "activation")}), task=task)
    refit = ash.apply_policy(model, ash.Policy(blocks={L1: BlockPolicy(0.5, 0.5, "activation", True)}), task=task)
    assert torch.equal(refit.get_submodule(block.out).weight, want_out[0])
    assert torch.equal(refit.get_submodule(block.out).bias, want_out[1])
    assert torch.equal(refit.get_submodule(block.down).weight, want_down[0])
    assert torch.equal(refit.get_submodule(block.down).bias, want_down[1])
    for name in (block.query, block.key, block.value, block.up):  # only the two projections are refitted
        assert torch.equal(refit.get_submodule(name).weight, plain.get_submodule(name).weight)
    assert refit.get_submodule(block.out).weight.shape == (32, 2 * HEAD_SIZE)
    # the out projection sees the untouched model's inputs in block 1 (block 0 unchanged): the fit's error is smaller
    target = outputs_of(model, block.out, calibration)
    for layer in (block.out,):
        err_plain = (outputs_of(plain, layer, calibration) - target).pow(2).sum()
        err_refit = (outputs_of(refit, layer, calibration) - target).pow(2).sum()
        assert err_refit < 0.5 * err_plain


def test_refit_statistics_are_kept_across_candidates_and_shared_by_every_block() -> None:
    model, task = tiny_bert(), bert_task()
    cache = StatsCache()
    policy = ash.Policy(blocks={L1: BlockPolicy(heads=0.25, refit=True)})
    first = apply_policy_with_report(model, policy, calibration=task_calibration(task), calibration_cache=cache)[0]
    assert len(cache) == 4  # out and down of both blocks, from one pass
    again = apply_policy_with_report(model, policy, calibration=task_calibration(task), calibration_cache=cache)[0]
    assert cache.hits >= 2 and len(cache) == 4
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    fresh = ash.apply_policy(model, policy, task=task)  # without a cache: the same weights
    for a, b in zip(first.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_refit_is_written_only_when_on_and_changes_the_structure_key() -> None:
    on, off = BlockPolicy(heads=0.5, refit=True), BlockPolicy(heads=0.5)
    assert on.to_dict() == {"heads": 0.5, "neurons": 0.0, "criterion": "magnitude", "refit": True}
    assert off.to_dict() == {"heads": 0.5, "neurons": 0.0, "criterion": "magnitude"}
    assert BlockPolicy.from_dict(on.to_dict()) == on and on != off
    assert on.calibrated and not off.calibrated and not BlockPolicy(refit=True).calibrated
    assert structure_key(ash.Policy(blocks={L1: on})) != structure_key(ash.Policy(blocks={L1: off}))
    with pytest.raises(ash.PolicyError) as info:
        BlockPolicy(heads=0.5, refit="yes", where="blocks.b")
    assert str(info.value) == "blocks.b.refit: got 'yes'; use true or false."
    with pytest.raises(ash.PolicyError) as info:
        ash.apply_policy(tiny_bert(), ash.Policy(blocks={L1: on}))
    assert str(info.value) == (
        f"blocks.{L1}: refit fits the out and down projections on calibration batches, and no data was given. "
        "Fix: pass task=<your Task>, or use criterion 'magnitude' without refit."
    )
