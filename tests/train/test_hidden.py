"""Hidden-state distillation: the term's exact value, its masking, and the fine-tune that uses it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import autoshrink as ash
from autoshrink.errors import ConfigError, TrainingError
from autoshrink.train.hidden import block_outputs, hidden_term

transformers = pytest.importorskip("transformers")
BLOCKS = ["bert.encoder.layer.0", "bert.encoder.layer.1"]


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=2,
        vocab_size=100,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config).eval()


def task() -> ash.Task:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (32, 12), generator=g)
    mask = torch.ones(32, 12, dtype=torch.long)
    mask[::2, 8:] = 0
    x = {"input_ids": ids * mask, "attention_mask": mask}
    y = (ids[:, 0] % 2).long()
    return ash.Task(train_data=(x, y), eval_data=(x, y), example_input={k: v[:1] for k, v in x.items()},
                    batch_size=8, device="cpu")  # fmt: skip


def test_the_term_is_the_relative_squared_error_over_real_tokens() -> None:
    teacher = {"b": torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])}  # 1 example, 2 tokens, width 2
    student = {"b": torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])}
    # squared errors per token 1 and 4; teacher norms^2 2 and 4
    assert hidden_term(student, teacher, torch.zeros(1)).item() == pytest.approx(5 / 6)
    masked = {"attention_mask": torch.tensor([[1, 0]])}
    assert hidden_term(student, teacher, masked).item() == pytest.approx(1 / 2)
    assert hidden_term(teacher, teacher, masked).item() == 0.0
    two = {"b": teacher["b"], "c": teacher["b"] * 2}
    assert hidden_term({"b": student["b"], "c": teacher["b"] * 2}, two, masked).item() == pytest.approx(1 / 4)


def test_block_outputs_capture_each_block_and_unhook() -> None:
    model, t = tiny(), task()
    with block_outputs(model, BLOCKS) as seen, torch.no_grad():
        out = model(**t.example_input, output_hidden_states=True)
    assert sorted(seen) == BLOCKS
    for i, name in enumerate(BLOCKS):  # hidden_states[0] is the embeddings' output
        assert torch.equal(seen[name], out.hidden_states[i + 1])
    assert not [h for m in model.modules() for h in m._forward_hooks.values() if h.__name__ == "grab"]


def test_a_student_equal_to_its_teacher_learns_nothing() -> None:
    """Distillation only, logits and hidden states: an exact copy gets (float-noise) zero gradients."""
    model, t = tiny(), task()
    student = copy.deepcopy(model)
    ash.finetune(student, t, steps=3, teacher=model, alpha=1.0, hidden=1.0, lr=1e-2, optimizer="sgd")
    for a, b in zip(student.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0)


def test_the_term_pulls_a_pruned_student_towards_its_teacher() -> None:
    model, t = tiny(), task()
    policy = ash.Policy(blocks={n: ash.BlockPolicy(heads=0.5, neurons=0.5) for n in BLOCKS})

    def error(student: nn.Module) -> float:
        with block_outputs(student, BLOCKS) as s, block_outputs(model, BLOCKS) as h, torch.no_grad():
            student(**t.eval_data.inputs)
            model(**t.eval_data.inputs)
            return hidden_term(s, h, t.eval_data.inputs).item()

    start = ash.apply_policy(model, policy)
    before = error(start)
    settings = dict(steps=40, teacher=model, alpha=1.0, lr=1e-3, seed=0)
    logits_only = ash.finetune(copy.deepcopy(start), t, **settings)
    with_hidden = ash.finetune(copy.deepcopy(start), t, hidden=100.0, **settings)
    assert error(with_hidden) < before  # logits only drifts away: > 400x `before` here
    assert error(with_hidden) < 0.01 * error(logits_only)


def test_settings_and_refusals() -> None:
    assert "hidden" not in ash.FinetuneConfig().to_dict()
    assert ash.FinetuneConfig(hidden=2).to_dict()["hidden"] == 2.0
    with pytest.raises(ConfigError, match="finetune.hidden: got -1; it must be a finite number >= 0"):
        ash.FinetuneConfig(hidden=-1)
    mlp = nn.Sequential(nn.Linear(4, 2))
    x = torch.randn(8, 4)
    t = ash.Task(train_data=(x, torch.zeros(8, dtype=torch.long)), eval_data=(x, torch.zeros(8, dtype=torch.long)),
                 example_input=x[:1], device="cpu")  # fmt: skip
    with pytest.raises(TrainingError, match="has none autoshrink recognizes. Fix: set hidden to 0"):
        ash.finetune(copy.deepcopy(mlp), t, steps=1, teacher=mlp, hidden=1.0)
