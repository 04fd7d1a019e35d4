"""The embedded data sets, shipped inside scikit-learn: handwritten digits and two photos.

1,797 grayscale digits of 8x8 pixels with 17 grey levels (0..16), from the UCI "Optical
Recognition of Handwritten Digits" set. They are upsampled (bilinear) to the training size:
16x16 by default, which keeps every pixel of information at a quarter of the cost of 32x32,
so the CPU demo trains four times more steps in the same minutes.

The two sample photos (a temple in China, a flower) give patches for the image-to-image demo
(x4 super-resolution of 32x32 patches); their bottom quarter is held out for validation.

scikit-image's three grayscale textures (brick, grass, gravel; 512x512) give patches for the
latent demo, split the same way (`source="textures"`).
"""
from __future__ import annotations

import random
from typing import Optional

import torch
import torch.nn.functional as F
from PIL import Image

from .folder import MODES, to_tensor, transform_same
from .stream import item_rng


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
        i = int(i)  # a Key from the training Stream: nothing random here
        return {"image": self.images[i], "label": self.labels[i]}


# ---------------------------------------------------------------------- photos
PHOTO_VAL_FRACTION = 0.25  # the bottom quarter of each photo is held out for validation


TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")


def source_arrays(source: str) -> list:
    """The uint8 arrays of a built-in image source: "photos" (scikit-learn) or "textures" (scikit-image)."""
    if source == "photos":
        from sklearn.datasets import load_sample_images

        return list(load_sample_images().images)  # 2 x (427, 640, 3)
    if source == "textures":
        import skimage.data

        return [getattr(skimage.data, name)() for name in TEXTURES]  # 3 x (512, 512)
    raise ValueError(f"unknown built-in image source {source!r}: expected 'photos' or 'textures'")


def load_photos(split: str = "train", channels: int = 3, source: str = "photos") -> list[Image.Image]:
    """scikit-learn's two sample photos (china.jpg, flower.jpg; 640x427 RGB), or scikit-image's
    textures, shipped inside the packages: split "train" is the top three quarters of each, "val"
    the bottom quarter."""
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'val'")
    out = []
    for a in source_arrays(source):
        cut = round(a.shape[0] * (1 - PHOTO_VAL_FRACTION))
        out.append(Image.fromarray(a[:cut] if split == "train" else a[cut:]).convert(MODES[channels]))
    return out


class PhotoPatches(torch.utils.data.Dataset):
    """Square patches of the sample photos as {"image": (C, size, size)}: random crops with flips
    for training (`repeat` crops per photo and epoch); for validation, the fixed grid of
    non-overlapping patches that tiles the held-out quarter."""

    def __init__(self, split: str = "train", image_size: int = 32, channels: int = 3, *, repeat: int = 256,
                 hflip: bool = True, vflip: bool = False, seed: Optional[int] = None, source: str = "photos"):
        if channels not in MODES:
            raise ValueError(f"channels must be one of {sorted(MODES)}, got {channels}")
        self.photos, self.split, self.image_size = load_photos(split, channels, source), split, image_size
        self.repeat, self.hflip, self.vflip = repeat, hflip, vflip
        self.rng = random.Random(seed) if seed is not None else random
        s = image_size
        self.grid = [(k, left, top) for k, im in enumerate(self.photos)
                     for top in range(0, im.size[1] - s + 1, s) for left in range(0, im.size[0] - s + 1, s)]
        if not self.grid:
            raise ValueError(f"image_size {s} is larger than the {split} part of the photos ({self.photos[0].size})")

    def __len__(self) -> int:
        return len(self.photos) * self.repeat if self.split == "train" else len(self.grid)

    def __getitem__(self, i: int) -> dict:
        s = self.image_size
        i, rng = item_rng(i, self.rng)  # a Key from the training Stream brings its own draws
        if self.split == "train":
            im = transform_same([self.photos[i % len(self.photos)]], s, "random", hflip=self.hflip, vflip=self.vflip,
                                rng=rng)[0]
        else:
            k, left, top = self.grid[i]
            im = self.photos[k].crop((left, top, left + s, top + s))
        return {"image": to_tensor(im)}
