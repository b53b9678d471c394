"""The built-in digits task: scikit-learn's 1,797 8x8 digits (ships with scikit-learn, offline)."""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from ..task import Task
from ..train import finetune
from .models import DigitsCNN, DigitsMLP, DigitsResNet

MODELS = {"mlp": DigitsMLP, "cnn": DigitsCNN, "resnet": DigitsResNet}


@functools.lru_cache(maxsize=4)
def _digits_tensors(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8 in [0, 1]
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(list(range(len(y))), test_size=0.2, random_state=seed, stratify=data.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def digits_task(*, batch_size: int = 64, deploy_batch: int = 1, seed: int = 0, device: str = "auto") -> Task:
    """Digits task: 1,437 training / 360 test images (stratified split with `seed`).

    example_input is a batch of `deploy_batch` test images (latency is timed at that batch size).
    """
    x_tr, y_tr, x_te, y_te = _digits_tensors(seed)
    return Task(
        train_data=(x_tr, y_tr),
        eval_data=(x_te, y_te),
        example_input=x_te[:deploy_batch].clone(),
        metric="accuracy",
        loss="cross_entropy",
        batch_size=batch_size,
        device=device,
    )


@functools.lru_cache(maxsize=4)
def _trained(kind: str, seed: int, steps: int) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[kind]()
    finetune(model, digits_task(seed=0, device="cpu"), steps=steps, lr=3e-3, seed=seed)
    return model.eval()


def digits_model(kind: str = "cnn", *, seed: int = 0, steps: int = 1500) -> nn.Module:
    """A digits model ("mlp", "cnn" or "resnet") trained from scratch on CPU (deterministic, a few seconds).

    Trained models are cached in process; each call returns a fresh copy.
    """
    if kind not in MODELS:
        raise ValueError(f"digits_model: kind={kind!r}; use one of {', '.join(MODELS)}.")
    return copy.deepcopy(_trained(kind, seed, steps))
