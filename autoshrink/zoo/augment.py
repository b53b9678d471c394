"""Small training-batch augmentations for `Task(train_transform=...)`: picklable, named, seeded by torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class RandomShift:
    """Shift every image of a batch by its own random (dy, dx) in [-pixels, pixels] (uniform integers).

    Inputs are (N, C, H, W); the uncovered border repeats the edge pixels (for digits and clothes on
    a plain background that is the background). Randomness comes from torch's global generator on
    the inputs' device, which the fine-tune seeds, so a recipe replays the same shifts. Targets pass
    through unchanged.
    """

    def __init__(self, pixels: int = 2) -> None:
        if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
            raise ValueError(f"random_shift: pixels={pixels!r}; use an integer >= 0, e.g. 2.")
        self.pixels = pixels

    @property
    def name(self) -> str:
        return f"random_shift(pixels={self.pixels})"

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RandomShift) and other.pixels == self.pixels

    def __hash__(self) -> int:
        return hash(("random_shift", self.pixels))

    def __call__(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if inputs.dim() != 4:
            raise ValueError(f"random_shift expects (N, C, H, W) images, got shape {tuple(inputs.shape)}.")
        p = self.pixels
        if p == 0 or inputs.shape[0] == 0:
            return inputs, targets
        n, _, h, w = inputs.shape
        padded = F.pad(inputs, (p, p, p, p), mode="replicate")
        offsets = torch.randint(0, 2 * p + 1, (n, 2), device=inputs.device)
        out = torch.empty_like(inputs)
        for dy in range(2 * p + 1):
            for dx in range(2 * p + 1):
                rows = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero(as_tuple=True)[0]
                if len(rows):
                    out[rows] = padded[rows, :, dy : dy + h, dx : dx + w]
        return out, targets


def random_shift(pixels: int = 2) -> RandomShift:
    """An augmentation shifting each training image by up to `pixels` in both directions (see RandomShift)."""
    return RandomShift(pixels)
