"""Small built-in tasks and models for the demo, tests and benchmarks."""
from __future__ import annotations

from .digits import digits_model, digits_task
from .models import DigitsCNN, DigitsMLP, DigitsResNet, LeNet5, LeNet300

__all__ = ["DigitsCNN", "DigitsMLP", "DigitsResNet", "LeNet300", "LeNet5", "digits_model", "digits_task"]
