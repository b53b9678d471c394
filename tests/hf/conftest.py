"""Tiny Hugging Face models and tokenized data for the tests of dict inputs and ModelOutputs (CPU, fast)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import autoshrink as ash

transformers = pytest.importorskip("transformers")

HIDDEN, HEADS, HEAD_SIZE, INTER, LAYERS, VOCAB, SEQ = 32, 4, 8, 64, 2, 100, 16
FAST = ash.LatencyConfig(warmup=1, min_repeats=3, min_seconds=0.0)


def bert_config() -> transformers.BertConfig:
    return transformers.BertConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )


def tiny_bert(seed: int = 0) -> nn.Module:
    """A freshly initialized BertForSequenceClassification (2 labels), in eval mode."""
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(bert_config()).eval()


def tokens(n: int, seed: int, seq: int = SEQ) -> dict[str, Tensor]:
    """n padded "tokenized" examples: ids in 1..VOCAB-1 up to a random length (>= 4), 0 (pad) after it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, seq), generator=g)
    lengths = torch.randint(4, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def labels_of(x: dict[str, Tensor]) -> Tensor:
    """A learnable label: whether the first token id is even."""
    return (x["input_ids"][:, 0] % 2 == 0).long()


def bert_task(n_train: int = 48, n_eval: int = 24, **kw) -> ash.Task:
    xtr, xev = tokens(n_train, 1), tokens(n_eval, 2)
    return ash.Task(
        train_data=(xtr, labels_of(xtr)),
        eval_data=(xev, labels_of(xev)),
        example_input=tokens(1, 3),
        batch_size=16,
        device="cpu",
        **kw,
    )


def argmax_accuracy(model: nn.Module, task: ash.Task) -> float:
    """The accuracy of `model` on the task's eval_data, by hand: one forward, argmax, compare."""
    x, y = task.eval_data.inputs, task.eval_data.labels
    with torch.no_grad():
        out = model(**x)
    out = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out
    return (out.argmax(1) == y).sum().item() / len(y)


class TupleBert(nn.Module):
    """A user's wrapper that returns a tuple (logits, pooled hidden state)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.bert = transformers.BertModel(bert_config(), add_pooling_layer=False)
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return self.head(hidden), hidden


class TensorBert(TupleBert):
    """A user's wrapper that returns the logits tensor only."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(input_ids, attention_mask)[0]


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """These models are tiny: one thread runs them fastest, and two threads on a busy 2-core machine spin
    against each other (a search took 7 s instead of 1.5 s). Restored after the tests of this folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MODELS = {"model_output": tiny_bert, "tuple": lambda: TupleBert().eval(), "tensor": lambda: TensorBert().eval()}


@pytest.fixture(params=list(MODELS))
def any_bert(request) -> nn.Module:
    return MODELS[request.param]()


@pytest.fixture
def task() -> ash.Task:
    return bert_task()
