from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import autoshrink as ash
from autoshrink.zoo import digits_task

from ..search.conftest import FAST, Tiny

ROOT = Path(__file__).resolve().parents[2]
SPACE = (
    "defaults:\n  sparsity: [0.0, 0.5, 0.8]\n  structured: [false, true]\n  bits: [32, 8, 4]\n"
    "distill: [false, true]\nfinetune: {steps: 10}\n"
)


def trained_tiny(seed: int) -> Tiny:
    torch.manual_seed(seed)
    model = Tiny()
    ash.finetune(model, digits_task(device="cpu"), steps=300, lr=3e-3, seed=seed)
    return model.eval()


@pytest.fixture(scope="session")
def searched(tmp_path_factory) -> SimpleNamespace:
    """One small search on Tiny (10 trials, 10 fine-tune steps), its storage and the model's weights."""
    tmp = tmp_path_factory.mktemp("recipe_search")
    model = trained_tiny(0)
    weights = tmp / "tiny.pt"
    torch.save(model.state_dict(), weights)
    (tmp / "space.yaml").write_text(SPACE)
    storage = f"sqlite:///{tmp}/tiny.db"
    # no pre-pass / screening: every kind of trial (structured ones included) stays in, each fine-tuned in full
    # NSGA-II's random first generation gives every kind of trial here (structured ones included)
    result = ash.search(
        model,
        digits_task(device="cpu"),
        ash.load_space(tmp / "space.yaml"),
        n_trials=10,
        storage=storage,
        study_name="tiny",
        latency=FAST,
        seed=0,
        sensitivity=False,
        screen=False,
        sampler="nsga2",
    )
    return SimpleNamespace(model=model, weights=str(weights), result=result, storage=storage, dir=tmp)


@pytest.fixture
def recipe(searched) -> ash.Recipe:
    """A recipe with a known policy: fc1 50 % sparse at 4 bits, fc2 8 bits, distilled."""
    r = searched.result.best(max_accuracy_drop=0.05)
    L = ash.LayerPolicy
    return dataclasses.replace(
        r, policy=ash.Policy(layers={"fc1": L(sparsity=0.5, bits=4), "fc2": L(bits=8)}, distill=True)
    )


def state_digest(model: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()
