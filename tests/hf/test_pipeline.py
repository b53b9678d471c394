"""Hugging Face models end to end: a BertForSequenceClassification (returns a ModelOutput), a wrapper returning
a tuple and one returning a tensor, each through measure, finetune, apply_policy and a search on the built-in
"transformer" space; then a recipe of the search replayed on the same model and on a from_pretrained copy."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.inputs import forward
from autoshrink.policy import BlockPolicy
from autoshrink.recipe import measure_recipe
from autoshrink.recipe.fingerprint import NamedInputSpec
from autoshrink.techniques.apply import apply_policy_with_report
from autoshrink.techniques.block_importance import head_importance, lowest, neuron_importance
from autoshrink.techniques.transformer_blocks import find_blocks
from autoshrink.weights import quantize_value, weight_bits

from .conftest import FAST, HEAD_SIZE, HEADS, INTER, MODELS, SEQ, argmax_accuracy, bert_task, tiny_bert, transformers

ROOT = Path(__file__).resolve().parents[2]

BLOCKS = ("bert.encoder.layer.0", "bert.encoder.layer.1")


def head_of(model: nn.Module) -> str:
    return "classifier" if isinstance(model, transformers.BertForSequenceClassification) else "head"


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- measure / finetune / apply_policy, for each kind of output ----------------------------------------------


def test_measure_reads_the_logits_of_every_output_kind(any_bert, task) -> None:
    m = ash.measure(any_bert, task, latency=FAST)
    expected = argmax_accuracy(any_bert, task)
    assert m.accuracy == expected
    assert 0 < expected < 1  # the untrained model does not predict one class for every example
    assert m.examples == 24 and m.runtime == "float" and m.batch_size == 1
    assert m.params == params(any_bert)


def test_finetune_changes_the_weights_with_a_finite_loss_and_replays(any_bert, task) -> None:
    x, y = task.eval_data.inputs, task.eval_data.labels
    a, b = copy.deepcopy(any_bert), copy.deepcopy(any_bert)
    ash.finetune(a, task, steps=3, seed=0)
    ash.finetune(b, task, steps=3, seed=0)
    assert not a.training  # finetune hands the model back in eval mode
    changed = [n for n, p in a.named_parameters() if not torch.equal(p, any_bert.get_parameter(n))]
    assert "bert.encoder.layer.0.attention.self.query.weight" in changed
    assert f"{head_of(a)}.weight" in changed
    with torch.no_grad():
        loss = nn.functional.cross_entropy(forward(a, x), y)
    assert math.isfinite(loss.item())
    assert state_equal(a, b)  # the same seed: bitwise the same weights


def test_apply_policy_removes_heads_and_neurons_and_quantizes_the_head(any_bert) -> None:
    model = any_bert
    head = head_of(model)
    blocks = {b.name: b for b in find_blocks(model)}
    assert list(blocks) == list(BLOCKS)
    policy = ash.Policy(
        layers={head: ash.LayerPolicy(bits=8)},
        blocks={name: BlockPolicy(heads=0.5, neurons=0.5) for name in BLOCKS},
    )
    small, report = apply_policy_with_report(model, policy)
    assert report.blocks == {name: {"heads": (4, 2), "neurons": (64, 32)} for name in BLOCKS}
    for name in BLOCKS:
        layer = small.get_submodule(name)
        attn = layer.attention.self
        assert (attn.query.weight.shape, attn.key.weight.shape, attn.value.weight.shape) == ((16, 32),) * 3
        assert attn.query.bias.shape == (16,)
        assert layer.attention.output.dense.weight.shape == (32, 16)
        assert layer.intermediate.dense.weight.shape == (32, 32)
        assert layer.output.dense.weight.shape == (32, 32)
        assert attn.num_attention_heads == 2 and attn.all_head_size == 16
        # the kept heads and neurons are those of highest magnitude importance, their weights untouched
        drop_h = lowest(head_importance(model, blocks[name]), 0.5)
        keep_rows = [h * HEAD_SIZE + i for h in range(HEADS) if h not in drop_h for i in range(HEAD_SIZE)]
        orig = model.get_submodule(name)
        assert torch.equal(attn.query.weight, orig.attention.self.query.weight[keep_rows])
        assert torch.equal(layer.attention.output.dense.weight, orig.attention.output.dense.weight[:, keep_rows])
        drop_n = lowest(neuron_importance(model, blocks[name]), 0.5)
        keep_n = [j for j in range(INTER) if j not in drop_n]
        assert torch.equal(layer.output.dense.weight, orig.output.dense.weight[:, keep_n])
    per_block = 3 * 16 * 33 + 16 * 32 + 32 * 33 + 32 * 32  # q/k/v rows (+bias), out columns, up rows (+bias), down
    assert params(small) == params(model) - 2 * per_block
    assert weight_bits(small.get_submodule(head)) == 8
    assert torch.equal(small.get_submodule(head).weight, quantize_value(model.get_submodule(head).weight, 8))
    assert model.bert.encoder.layer[0].attention.self.query.weight.shape == (32, 32)  # the original is untouched
    x = bert_task().eval_data.inputs
    with torch.no_grad():
        assert forward(small, x).shape == (24, 2)


def test_activation_ranked_blocks_need_the_task(any_bert, task) -> None:
    policy = ash.Policy(blocks={"bert.encoder.layer.1": BlockPolicy(heads=0.25, neurons=0.25, criterion="activation")})
    small = ash.apply_policy(any_bert, policy, task=task)
    attn = small.bert.encoder.layer[1].attention.self
    assert attn.query.weight.shape == (24, 32) and attn.num_attention_heads == 3
    assert small.bert.encoder.layer[1].intermediate.dense.weight.shape == (48, 32)
    assert small.bert.encoder.layer[0].intermediate.dense.weight.shape == (64, 32)
    with pytest.raises(ash.PolicyError) as info:
        ash.apply_policy(any_bert, policy)
    assert str(info.value) == (
        "blocks.bert.encoder.layer.1: criterion 'activation' ranks heads and neurons on calibration batches, and "
        "no data was given. Fix: pass task=<your Task>, or use criterion 'magnitude' without refit."
    )


def transformer_space(tmp) -> ash.SearchSpace:
    """The built-in "transformer" space with every block's removals fixed (heads 50 %, neurons 25 %), so
    that each of a few trials removes some: the sampler's luck decides nothing here."""
    text = (ROOT / "autoshrink" / "spaces" / "transformer.yaml").read_text()
    for old, new in (
        ("heads: [0.0, 0.25, 0.5]", "heads: [0.5]"),
        ("neurons: [0.0, 0.25, 0.5, 0.75]", "neurons: [0.25]"),
    ):
        assert old in text
        text = text.replace(old, new)
    (tmp / "space.yaml").write_text(text)
    return ash.load_space(tmp / "space.yaml")


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    """kind -> one search of a fresh model of that kind on the "transformer" space with fixed block
    removals (run on first use)."""
    done: dict[str, SimpleNamespace] = {}

    def get(kind: str) -> SimpleNamespace:
        if kind not in done:
            tmp = tmp_path_factory.mktemp(f"search_{kind}")
            model, task = MODELS[kind](), bert_task()
            result = ash.search(
                model,
                task,
                transformer_space(tmp),
                n_trials=4,
                storage=f"sqlite:///{tmp}/s.db",
                study_name="s",
                seed=0,
                latency=FAST,
                progress=False,
            )
            if kind == "model_output":  # a copy: save_pretrained writes into the model's config
                copy.deepcopy(model).save_pretrained(tmp / "pretrained")
            done[kind] = SimpleNamespace(model=model, task=task, result=result, dir=tmp)
        return done[kind]

    return get


@pytest.mark.parametrize("kind", list(MODELS))
def test_search_on_the_transformer_space_finishes_with_a_front(searches, kind) -> None:
    s = searches(kind)
    result = s.result
    trials = result.trials
    assert trials.state.tolist() == ["COMPLETE"] * 4
    assert trials.failure.isna().all()
    assert len(result.pareto) >= 1
    assert result.baseline.accuracy == argmax_accuracy(s.model, s.task)
    assert result.baseline.params == params(s.model)
    searched = {name for p in trials.policy for name in (p.get("blocks") or {})}
    assert searched == set(BLOCKS)  # every block loses heads and neurons in the trials that compress
    layers = {name for p in trials.policy for name in p["layers"]}
    assert head_of(s.model) in layers


# -- a recipe of the search, replayed ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(searches) -> SimpleNamespace:
    return searches("model_output")


def with_blocks(result: ash.SearchResult) -> ash.Recipe:
    """The recipe of a front trial that removes heads or neurons (else of any completed one that does)."""
    front = [int(t) for t, p in zip(result.pareto.trial, result.pareto.policy) if p.get("blocks")]
    trials = result.trials
    done = [int(t) for t, p, s in zip(trials.trial, trials.policy, trials.state) if s == "COMPLETE" and p.get("blocks")]
    picked = front or done
    assert picked, "no trial of the search removed heads or neurons"
    return result.recipe(picked[0])


def recipe_of(searched: SimpleNamespace, which: str) -> ash.Recipe:
    """The recipe saved and loaded again."""
    result = searched.result
    recipe = result.best(max_accuracy_drop=1.0, minimize="size") if which == "best" else with_blocks(result)
    path = searched.dir / f"{which}.yaml"
    recipe.save(path)
    loaded = ash.Recipe.load(path)
    assert loaded == recipe and loaded.path == str(path)
    return loaded


@pytest.mark.parametrize("which", ["best", "with_blocks"])
def test_a_recipe_replays_exactly_on_the_same_model(searched, which) -> None:
    recipe = recipe_of(searched, which)
    if which == "with_blocks":
        assert recipe.policy.active_blocks()
    assert recipe.policy.blocks == recipe.policy.active_blocks()  # only changed blocks are written
    assert recipe.example_input.to_dict() == {
        "inputs": {
            "input_ids": {"shape": [1, SEQ], "dtype": "int64"},
            "attention_mask": {"shape": [1, SEQ], "dtype": "int64"},
        }
    }
    small = ash.apply_recipe(searched.model, recipe, task=searched.task)
    m = ash.measure(small, searched.task, latency=FAST)
    assert m.accuracy == recipe.metrics.accuracy
    assert m.size_bytes == recipe.metrics.size_bytes
    assert m.runtime == recipe.metrics.runtime
    for name, bp in recipe.policy.blocks.items():
        kept = HEADS - round(bp.heads * HEADS)
        attn = small.get_submodule(name).attention.self
        assert attn.num_attention_heads == kept and attn.query.weight.shape == (kept * HEAD_SIZE, 32)
        assert small.get_submodule(name).intermediate.dense.out_features == INTER - round(bp.neurons * INTER)


@pytest.mark.parametrize("which", ["best", "with_blocks"])
def test_a_recipe_replays_on_a_from_pretrained_copy_bitwise_as_on_the_model(searched, which) -> None:
    recipe = recipe_of(searched, which)
    fresh_model = transformers.BertForSequenceClassification.from_pretrained(searched.dir / "pretrained")
    same = ash.apply_recipe(searched.model, recipe, task=searched.task)
    fresh = ash.apply_recipe(fresh_model, recipe, task=searched.task)
    x = searched.task.example_input
    with torch.no_grad():
        assert torch.equal(same(**x).logits, fresh(**x).logits)
    assert state_equal(same, fresh)
    assert ash.measure(fresh, searched.task, latency=FAST).accuracy == recipe.metrics.accuracy


def test_a_recipe_replayed_on_a_from_pretrained_copy_measures_the_recorded_size(searched) -> None:
    recipe = recipe_of(searched, "best")
    fresh_model = transformers.BertForSequenceClassification.from_pretrained(searched.dir / "pretrained")
    fresh = ash.apply_recipe(fresh_model, recipe, task=searched.task)
    assert ash.measure(fresh, searched.task, latency=FAST).size_bytes == recipe.metrics.size_bytes


def test_a_calibrated_recipe_without_a_task_is_refused(searched) -> None:
    recipe = searched.result.best(max_accuracy_drop=1.0, minimize="size")
    calibrated = [n for n, lp in recipe.policy.layers.items() if lp.calibrated]
    assert calibrated  # the transformer space rounds with GPTQ
    with pytest.raises(ash.PolicyError, match=r"and no data was given\. Fix: pass task=<your Task>"):
        ash.apply_recipe(searched.model, recipe)


def test_a_recipe_without_a_task_traces_zeros_of_the_named_inputs(searched) -> None:
    recipe = searched.result.best(max_accuracy_drop=1.0, minimize="size")
    assert isinstance(recipe.example_input, NamedInputSpec)
    zeros = recipe.example_input.zeros()
    assert list(zeros) == ["input_ids", "attention_mask"]
    assert torch.equal(zeros["input_ids"], torch.zeros(1, SEQ, dtype=torch.long))
    assert torch.equal(zeros["attention_mask"], torch.ones(1, SEQ, dtype=torch.long))  # every token attended
    policy = ash.Policy(
        layers={
            "classifier": ash.LayerPolicy(bits=8),
            "bert.encoder.layer.1.output.dense": ash.LayerPolicy(sparsity=0.5),
        },
        blocks={"bert.encoder.layer.0": BlockPolicy(heads=0.5, neurons=0.25)},
    )
    plain = dataclasses.replace(recipe, policy=policy)
    small = ash.apply_recipe(searched.model, plain)
    assert state_equal(small, ash.apply_policy(searched.model, policy))
    assert small.bert.encoder.layer[0].intermediate.dense.weight.shape == (48, 32)
    assert small.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    no_task = measure_recipe(small, plain, latency=FAST)
    assert math.isnan(no_task.accuracy)
    assert no_task.size_bytes == ash.measure(small, searched.task, latency=FAST).size_bytes


def test_the_transformer_space_starts_from_a_uniform_structural_baseline() -> None:
    from autoshrink.search.setup import _baselines
    from autoshrink.space import bind

    model = tiny_bert()
    bound = bind(ash.load_space("transformer"), model)
    baselines = [bound.policy_from_params(p) for p in _baselines(bound)]
    assert len(baselines) == 3  # untouched, every layer 8-bit, and 8-bit with half the heads and neurons
    assert baselines[0] == ash.Policy()
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    eight = {n: ash.LayerPolicy(bits=8, rounding="gptq") for n in linear}
    half = ash.BlockPolicy(heads=0.5, neurons=0.5, criterion="activation", refit=True)
    assert baselines[1].layers == baselines[2].layers
    assert {n: lp for n, lp in baselines[1].layers.items() if n in linear} == eight
    assert dict(baselines[2].blocks) == dict.fromkeys(BLOCKS, half) and not baselines[1].blocks
