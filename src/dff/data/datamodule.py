"""The LightningDataModule for unconditional image data: a folder of images or a built-in set."""
from __future__ import annotations

from typing import Literal, Optional

import lightning as L
import torch

from .builtin import DigitsDataset
from .folder import Crop, ImageFolder


class ImageDataModule(L.LightningDataModule):
    """Batches {"image": (B, C, H, W) in [0, 1]} from a folder of images or the built-in digits."""

    def __init__(
        self,
        dataset: Literal["folder", "digits"] = "folder",  # folder: images below `root`; digits: built in
        root: Optional[str] = None,  # the image folder (dataset="folder")
        image_size: int = 64,  # side of the square training images
        channels: int = 3,  # image channels; folder images are converted (1: L, 3: RGB, 4: RGBA)
        crop: Crop = "random",  # random | center | resize (see ImageFolder)
        hflip: bool = True,  # random horizontal flips (folder only)
        vflip: bool = False,  # random vertical flips (folder only)
        batch_size: int = 16,
        num_workers: int = 2,  # DataLoader workers for folders (the digits live in memory)
    ):
        super().__init__()
        if dataset == "folder" and not root:
            raise ValueError("data.root is required with data.dataset='folder': give the folder of training images")
        if dataset not in ("folder", "digits"):
            raise ValueError(f"unknown data.dataset {dataset!r}: expected 'folder' or 'digits'")
        self.save_hyperparameters()
        self.train_set: Optional[torch.utils.data.Dataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        if h.dataset == "digits":
            self.train_set = DigitsDataset(h.image_size, h.channels)
        else:
            self.train_set = ImageFolder(h.root, h.image_size, h.channels, h.crop, h.hflip, h.vflip)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        h = self.hparams
        workers = 0 if h.dataset == "digits" else h.num_workers
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=h.batch_size, shuffle=True, drop_last=len(self.train_set) >= h.batch_size,
            num_workers=workers, persistent_workers=workers > 0,
        )
