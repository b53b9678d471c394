"""Hostile values through the transformer surfaces -- mapping inputs, Hugging Face data, block policies,
text tasks, hidden-state distillation, spaces with `blocks`: one AutoshrinkError each, naming the value
and the fix, nothing printed or written."""

from __future__ import annotations

import math

import pytest
import torch

import autoshrink as ash
from autoshrink.errors import ConfigError, PolicyError, TaskError

from . import factories
from .harness import refused_by_api

transformers = pytest.importorskip("transformers")
IDS = torch.ones(4, 6, dtype=torch.long)


def _bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=1, vocab_size=50
    )
    return transformers.BertForSequenceClassification(config).eval()


BERT = _bert()  # built once, outside the watched calls (transformers' first model sets up caches in TMPDIR)


def _task(**changes):
    x = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
    settings = dict(train_data=(x, torch.zeros(4, dtype=torch.long)), eval_data=(x, torch.zeros(4, dtype=torch.long)))
    settings["example_input"] = {k: v[:1] for k, v in x.items()}
    return ash.Task(**(settings | changes))


def _tokenizer():
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])})


def _space(tmp_path, text):
    path = tmp_path.parent / f"{tmp_path.name}-space.yaml"  # outside the watched folder
    path.write_text(text)
    return ash.load_space(path)


CASES = [  # id, call, error type, message
    (
        "block-heads-one",
        lambda: ash.BlockPolicy(heads=1.0),
        PolicyError,
        "heads: got 1.0; it must be a fraction in [0, 1)",
    ),
    ("block-neurons-nan", lambda: ash.BlockPolicy(neurons=math.nan), PolicyError, "neurons: got nan"),
    ("block-criterion", lambda: ash.BlockPolicy(criterion="wanda"), PolicyError, "criterion: got 'wanda'; use one of"),
    ("policy-blocks-list", lambda: ash.Policy(blocks=["a"]), PolicyError, "Policy.blocks: got"),
    (
        "policy-blocks-dict-key",
        lambda: ash.Policy.from_dict({"layers": {}, "distill": False, "blocks": {"x": {"heads": 0.5, "rows": 1}}}),
        PolicyError,
        "blocks.x: unknown key(s) 'rows'",
    ),
    (
        "blocks-of-an-mlp",
        lambda: ash.apply_policy(factories.tiny(), ash.Policy(blocks={"0": ash.BlockPolicy(heads=0.5)})),
        PolicyError,
        "blocks.0: not a transformer block of",
    ),
    (
        "blocks-misspelt",
        lambda: ash.apply_policy(BERT, ash.Policy(blocks={"bert.encoder.layer.9": ash.BlockPolicy(heads=0.5)})),
        PolicyError,
        "recognized: bert.encoder.layer.0",
    ),
    (
        "blocks-activation-without-data",
        lambda: ash.apply_policy(
            BERT, ash.Policy(blocks={"bert.encoder.layer.0": ash.BlockPolicy(heads=0.5, criterion="activation")})
        ),
        PolicyError,
        "criterion 'activation' ranks heads and neurons on calibration batches, and no data was given",
    ),
    ("example-empty-mapping", lambda: _task(example_input={}), TaskError, "Task.example_input: got {}"),
    (
        "example-batches-differ",
        lambda: _task(example_input={"input_ids": IDS[:1], "attention_mask": IDS[:2]}),
        TaskError,
        "the tensors' first dimensions differ",
    ),
    (
        "example-not-tensor",
        lambda: _task(example_input={"input_ids": [[1, 2]]}),
        TaskError,
        "Task.example_input['input_ids']: got",
    ),
    ("rows-no-label", lambda: _task(train_data=[{"input_ids": [1, 2]}]), TaskError, "no 'label' (or 'labels') entry"),
    (
        "rows-ragged",
        lambda: _task(train_data=[{"input_ids": [1, 2], "label": 0}, {"input_ids": [1], "label": 1}]),
        TaskError,
        "pad them to one length",
    ),
    (
        "rows-text-only",
        lambda: _task(train_data=[{"text": "a film", "label": 0}]),
        TaskError,
        "no column holds model inputs",
    ),
    (
        "mapping-rows-vs-labels",
        lambda: _task(train_data=({"input_ids": IDS}, torch.zeros(3, dtype=torch.long))),
        TaskError,
        "X has 4 rows but y has 3",
    ),
    (
        "text-task-labels",
        lambda: ash.hf.text_task(_tokenizer(), train=(["a"], ["x"]), eval=(["a"], [0])),
        TaskError,
        "integer class ids",
    ),
    (
        "text-task-length",
        lambda: ash.hf.text_task(_tokenizer(), train=(["a"], [0]), eval=(["a"], [0]), max_length=-1),
        TaskError,
        "max_length=-1",
    ),
    ("hidden-negative", lambda: ash.FinetuneConfig(hidden=-0.5), ConfigError, "finetune.hidden: got -0.5"),
    (
        "hidden-without-blocks",
        lambda: ash.finetune(factories.tiny(), factories.task(), steps=1, teacher=factories.tiny(), hidden=1.0),
        ash.TrainingError,
        "Fix: set hidden to 0",
    ),
]


@pytest.mark.parametrize("call, kind, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_transformer_values_are_one_error(tmp_path, call, kind, message) -> None:
    refused_by_api(call, tmp_path, kind, message)


SPACES = [  # id, YAML, message
    ("blocks-on-an-mlp", "blocks: {heads: [0.0, 0.5]}\n", "has no transformer block autoshrink recognizes"),
    (
        "blocks-heads-one",
        "blocks: {heads: [0.0, 1.0]}\n",
        "blocks.heads[1]: got 1.0; heads must be a fraction in [0, 1)",
    ),
    ("blocks-unknown-key", "blocks: {heds: [0.5]}\n", "unknown key 'heds'"),
    ("blocks-criterion", "blocks: {criterion: [wanda]}\n", "criterion must be one of magnitude, activation"),
    ("blocks-rule-no-match", "blocks: {rules: [{heads: [0.5]}]}\n", "a block rule needs `match`"),
    ("blocks-not-mapping", "blocks: [0.5]\n", "blocks: got [0.5]; expected a mapping"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in SPACES], ids=[c[0] for c in SPACES])
def test_spaces_with_bad_blocks_are_one_error(tmp_path, text, message) -> None:
    def call():
        space = _space(tmp_path, text)
        return ash.search(factories.tiny(), factories.task(), space, n_trials=1, finetune_steps=1)

    refused_by_api(call, tmp_path, ConfigError, message)
