"""An image folder decoded once into one uint8 tensor that lives on the training device (data.on_device): each
batch is a set of indices, and its crops, flips and scaling to [0, 1] happen on the device, so no image is
decoded, cropped or copied on the host during training.

Same images as the PIL path (folder.py): the deterministic part of its transform (the side-by-side half, the
channel conversion, crop="resize"'s resize and centre crop) is done once with PIL at decode time; the random part
(a crop window at native resolution, the flips) is `crop_flip`, which gives for the same window and flips the
same float tensor as PIL's crop, transpose and to_tensor (tests/test_data.py compares them).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch

from .folder import ImageFolder, load_image, transform_same
from .stream import Key


class Unsuitable(ValueError):
    """The folder cannot live on the device as one tensor (the reason is the message)."""


def decode(folder: ImageFolder, workers: Optional[int] = None) -> torch.Tensor:
    """Every file of `folder` once, in parallel threads (PIL decodes without the GIL): (N, C, H, W) uint8."""

    def one(path) -> np.ndarray:
        im = load_image(path, folder.channels, getattr(folder, "exif", True))
        if im.mode not in ("L", "RGB", "RGBA"):
            raise Unsuitable(f"{path} is {im.mode}, not 8-bit: 16-bit and float images keep the PIL path")
        if folder.half is not None:
            w, h = im.size
            im = im.crop((0, 0, w // 2, h) if folder.half == "A" else (w // 2, 0, 2 * (w // 2), h))
        if folder.crop == "resize":  # deterministic: resize the shorter side, centre crop (no flips here)
            im = transform_same([im], folder.image_size, "resize", hflip=False, vflip=False, rng=None)[0]
        a = np.asarray(im, dtype=np.uint8)
        return a[:, :, None] if a.ndim == 2 else a

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(one, folder.files))
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise Unsuitable(f"the images have {len(sizes)} different sizes (e.g. {sorted(sizes)[:2]}): "
                         "one tensor needs one size; data.crop=resize makes them equal")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def crop_flip(images: torch.Tensor, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
              hflip: torch.Tensor, vflip: torch.Tensor, size: int) -> torch.Tensor:
    """Windows images[index[b], :, top[b]:top[b]+size, left[b]:left[b]+size], flipped left-right where hflip[b]
    and top-bottom where vflip[b], as floats in [0, 1]: (B, C, size, size). Only the windows are gathered."""
    C = images.shape[1]
    ar = torch.arange(size, device=images.device)
    rows = top[:, None] + torch.where(vflip[:, None], ar.flip(0), ar)  # (B, size)
    cols = left[:, None] + torch.where(hflip[:, None], ar.flip(0), ar)  # (B, size)
    c = torch.arange(C, device=images.device)
    x = images[index[:, None, None, None], c[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    return x.float() / 255.0  # as to_tensor: uint8 / 255 in float32


class Indices(torch.utils.data.Dataset):
    """What the DataLoader of DeviceImages loads: {"index": i} (and the seed of a Stream's Key), a few bytes
    per item."""

    def __init__(self, n: int, repeat: int):
        self.n, self.repeat = n, repeat

    def __len__(self) -> int:
        return self.n * self.repeat

    def __getitem__(self, i: int) -> dict:
        return {"index": i % self.n, "seed": i.seed} if isinstance(i, Key) else {"index": i % self.n}


class DeviceImages(torch.utils.data.Dataset):
    """The folder as one uint8 tensor. Training loads `indices()` and turns each batch of them into images on the
    device with `batch` (the tensor moves there with the first batch); indexing gives single items like the PIL
    path's ({"image": (C, size, size)}, "label"), for the latent scale estimate and the like."""

    def __init__(self, folder: ImageFolder, workers: Optional[int] = None):
        self.images = decode(folder, workers)  # (N, C, H, W) uint8
        self.size, self.crop, self.hflip, self.vflip = folder.image_size, folder.crop, folder.hflip, folder.vflip
        self.repeat, self.labels, self.files = folder.repeat, folder.labels, folder.files
        self.label_tensor = torch.tensor(self.labels) if self.labels is not None else None

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def __len__(self) -> int:
        return self.images.shape[0] * self.repeat

    def __getitem__(self, i: int) -> dict:
        item = self.batch(torch.tensor([i % self.images.shape[0]], device=self.images.device))
        return {k: v[0] if k == "image" else int(v[0]) for k, v in item.items()}

    def indices(self) -> Indices:
        return Indices(self.images.shape[0], self.repeat)

    def batch(self, index: torch.Tensor, generator: Optional[torch.Generator] = None) -> dict:
        """{"image": (B, C, size, size) in [0, 1]} (and "label") on index's device: random or centred windows and
        random flips drawn there."""
        dev = index.device
        if self.images.device != dev:
            self.images = self.images.to(dev)
            self.label_tensor = None if self.label_tensor is None else self.label_tensor.to(dev)
        B, (H, W) = index.shape[0], self.images.shape[-2:]
        s = self.size
        if self.crop == "random":
            top = torch.randint(0, H - s + 1, (B,), device=dev, generator=generator)
            left = torch.randint(0, W - s + 1, (B,), device=dev, generator=generator)
        else:  # centre (crop="resize" stored its centred window already)
            top = torch.full((B,), (H - s) // 2, device=dev)
            left = torch.full((B,), (W - s) // 2, device=dev)
        coin = lambda on: (torch.rand(B, device=dev, generator=generator) < 0.5) & on  # noqa: E731
        out = {"image": crop_flip(self.images, index, top, left, coin(self.hflip), coin(self.vflip), s)}
        if self.label_tensor is not None:
            out["label"] = self.label_tensor[index]
        return out
