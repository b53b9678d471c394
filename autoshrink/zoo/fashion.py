"""Full Fashion-MNIST (60k / 10k) and a LeNet-300-100 and a wide LeNet-5 trained on it (benchmark tasks).

Data: Debian's `dataset-fashion-mnist` (idx files under /usr/share/datasets/fashion-mnist/,
`apt-get install dataset-fashion-mnist`; `FASHION_MNIST_DIR` points elsewhere), pixels / 255
normalised with the training set's mean 0.2860 and std 0.3530. The model is trained here once
(Adam 1e-3, batch 128, cosine, `epochs` epochs, deterministic on CPU for a given thread count) and
cached as a plain state_dict under $AUTOSHRINK_CACHE (default ~/.cache/autoshrink).
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import TaskError
from ..task import Task
from .models import FashionResNet, LeNet5, LeNet300

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530


def data_dir() -> Path:
    return Path(os.environ.get("FASHION_MNIST_DIR", DEFAULT_DIR))


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOSHRINK_CACHE", Path.home() / ".cache" / "autoshrink"))


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise TaskError(f"{path}: not an idx file of unsigned bytes; check FASHION_MNIST_DIR.")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        p = data_dir() / name
        if p.exists():
            return p
    raise TaskError(
        f"Fashion-MNIST: {data_dir() / stem}(.gz) not found. Fix: apt-get install "
        "dataset-fashion-mnist (or set FASHION_MNIST_DIR to a folder with the idx files)."
    )


@functools.lru_cache(maxsize=1)
def _fashion_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    def images(stem: str) -> torch.Tensor:
        x = torch.from_numpy(_read_idx(_find(stem)).copy()).float().unsqueeze(1) / 255.0
        return (x - MEAN) / STD

    def labels(stem: str) -> torch.Tensor:
        return torch.from_numpy(_read_idx(_find(stem)).copy()).long()

    return (
        images("train-images-idx3-ubyte"),
        labels("train-labels-idx1-ubyte"),
        images("t10k-images-idx3-ubyte"),
        labels("t10k-labels-idx1-ubyte"),
    )


def fashion_task(
    *,
    batch_size: int = 128,
    deploy_batch: int = 1,
    device: str = "auto",
    train_transform: object = None,
    selection: int | None = None,
) -> Task:
    """Fashion-MNIST: 60,000 training / 10,000 test images; example_input = `deploy_batch` test images.

    `selection`: the first that many test images are the selection split (eval_data) and the rest the
    held-out test_data (5000: select on test[:5000], judge on test[5000:]); None: all 10,000 are
    eval_data and there is no held-out split (figures are then chosen and reported on one split).
    """
    x_tr, y_tr, x_te, y_te = _fashion_tensors()
    held_out = None
    if selection is not None:
        if isinstance(selection, bool) or not isinstance(selection, int) or not 0 < selection < len(y_te):
            raise TaskError(f"fashion_task: selection={selection!r}; use a count in 1..{len(y_te) - 1}, or None.")
        held_out = (x_te[selection:], y_te[selection:])
        x_te, y_te = x_te[:selection], y_te[:selection]
    return Task(
        train_data=(x_tr, y_tr),
        eval_data=(x_te, y_te),
        test_data=held_out,
        example_input=x_te[:deploy_batch].clone(),
        batch_size=batch_size,
        device=device,
        train_transform=train_transform,
    )


def lenet300_fashion(*, seed: int = 0, epochs: int = 10) -> nn.Module:
    """LeNet-300-100 trained on Fashion-MNIST (cached after the first call; a fresh copy each call)."""
    return _trained(LeNet300, "lenet300", seed, epochs)


def resnet_fashion(*, seed: int = 0, epochs: int = 3) -> nn.Module:
    """FashionResNet (residual blocks with BatchNorm) trained on Fashion-MNIST (cached after the first
    call; a fresh copy each call)."""
    return _trained(FashionResNet, "resnet", seed, epochs)


def lenet5_fashion(*, width: int = 4, seed: int = 0, epochs: int = 5) -> nn.Module:
    """LeNet-5 with channel widths times `width` (4: ANCHORS.md's wide LeNet-5, 24/64/480/336), trained
    on Fashion-MNIST (cached after the first call; a fresh copy each call)."""
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 16:
        raise TaskError(f"lenet5_fashion: width={width!r}; use a whole number from 1 to 16.")
    return _trained(lambda: LeNet5(width=width), f"lenet5w{width}", seed, epochs)


def _trained(make: Callable[[], nn.Module], name: str, seed: int, epochs: int) -> nn.Module:
    """`make()` trained on Fashion-MNIST (Adam 1e-3, batch 128, cosine, `epochs` epochs, CPU), cached as
    a plain state_dict named after `name`, `seed` and `epochs`."""
    from ..train import finetune

    cache = cache_dir() / f"{name}-fashion-seed{seed}-e{epochs}.pt"
    model = make()
    if cache.exists():
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))  # plain tensors only
        return model.eval()
    torch.manual_seed(seed)
    model = make()
    task = fashion_task(device="cpu")
    steps = epochs * -(-len(task.train_data) // task.batch_size)
    finetune(model, task, steps=steps, lr=1e-3, seed=seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.partial")
    torch.save(model.state_dict(), tmp)
    tmp.replace(cache)
    return model.eval()
