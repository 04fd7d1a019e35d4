"""The embedded default data set: scikit-learn's handwritten digits, shipped inside the package.

1,797 grayscale digits of 8x8 pixels with 17 grey levels (0..16), from the UCI "Optical
Recognition of Handwritten Digits" set. They are upsampled (bilinear) to the training size:
16x16 by default, which keeps every pixel of information at a quarter of the cost of 32x32,
so the CPU demo trains four times more steps in the same minutes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def load_digits_tensor(image_size: int = 16, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, channels, size, size) in [0, 1], labels (N,)): white digits on black."""
    from sklearn.datasets import load_digits

    if image_size < 8:
        raise ValueError(f"digits are 8x8; image_size must be at least 8, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"digits are grayscale; channels must be 1 or 3 (repeated), got {channels}")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.repeat(1, channels, 1, 1), torch.tensor(d.target, dtype=torch.long)


class DigitsDataset(torch.utils.data.Dataset):
    """The digits as a data set of {"image": (C, size, size), "label": ()} items."""

    def __init__(self, image_size: int = 16, channels: int = 1):
        self.images, self.labels = load_digits_tensor(image_size, channels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}
