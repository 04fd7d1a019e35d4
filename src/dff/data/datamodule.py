"""The LightningDataModule: unconditional images or (condition, image) pairs, from a folder or a
built-in set.

    pairs = none           {"image"}: a folder of images, the digits, or patches of the photos/textures
    latent_cache = FILE    {"latent"[, "cond_code"]}: latent models train from latents encoded once
    pairs = side_by_side   {"cond", "image"}: pix2pix files A|B below `root`
    pairs = folders        {"cond", "image"}: root/A and root/B with matching names (images, or arrays: each
                           side in [0, 1] by its own range, data_range and cond_data_range)
    pairs = sr2 | sr4 | colorize | inpaint
                           {"cond", "image"}: the condition computed from each image (tasks.py)

Validation data (paired only: it measures translations) comes from `val_root` in the same layout,
or, for the built-in photos, their held-out bottom quarter.
"""
from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path
from typing import Literal, Optional

import lightning as L
import torch

from .builtin import DigitsDataset, PhotoPatches
from .arrays import ArrayFolder, DataRange, holds_arrays, measure_range
from .folder import MODES, Crop, ImageFolder, find_images
from .shards import Packed, PackedImages, folder_class, is_packed, packed_meta
from .paired import ArrayPairs, PairFolder, TaskDataset, array_pair_sides
from .stream import Stream, StreamLoader
from .condition import GIVEN_LAYOUTS, Condition
from .tasks import TASKS

PAIRS: tuple[str, ...] = ("none", *GIVEN_LAYOUTS, *TASKS)
DATASETS: tuple[str, ...] = ("folder", "digits", "photos", "textures")


EPOCH_STEPS = 500  # the shortest epoch of data kept on the device


class ImageDataModule(L.LightningDataModule):
    """Batches {"image": (B, C, H, W)} (and {"cond": (B, C_cond, H, W)} for pairs) in [0, 1]."""

    def __init__(
        self,
        dataset: Literal["folder", "digits", "photos", "textures"] = "folder",  # folder: files below `root`; the others
                                                                                # are built in
        root: Optional[str] = None,  # the image folder (dataset="folder")
        *,
        image_size: int = 64,  # side of the square training images
        channels: int = 3,  # channels of the generated images: images are converted (1: L, 3: RGB, 4: RGBA); arrays
                            # (any other count, .npy/.npz, TIFF of more than 8 bits) keep their bands: 1 to 64
        pairs: str = "none",  # none | side_by_side | folders | sr2 | sr4 | colorize | inpaint
        direction: Literal["AtoB", "BtoA"] = "AtoB",  # side_by_side / folders: AtoB conditions on A
        cond_image_channels: Optional[int] = None,  # side_by_side / folders: channels of the condition images
                                                    # (default: channels)
        val_root: Optional[str] = None,  # validation folder (paired data), same layout as root
        crop: Crop = "random",  # random | center | resize (see ImageFolder)
        crop_scale: float = 1.0,  # pairs: cut crop_scale x image_size windows, resize them to image_size
        hflip: bool = True,  # random horizontal flips
        vflip: bool = False,  # random vertical flips
        repeat: int = 1,  # visits of each file per epoch (photos: random crops per photo and epoch)
        labels: bool = False,  # folder: class labels from top-level sub-folder names (the digits always have labels)
        batch_size: int = 16,
        val_batch_size: int = 32,
        num_workers: Optional[int] = None,  # DataLoader workers for folders (None: min(4, CPU cores); built-in sets
                                            # live in memory)
        latent_cache: Optional[str] = None,  # latent models: encode the training set once (flips included) to this file
        half: Optional[Literal["A", "B"]] = None,  # unpaired data from pix2pix files: their left (A) or right (B) half
        on_device: Optional[bool] = None,  # folders: decode once into a uint8 tensor on the training device, crop and
                                           # flip there (None: on a GPU when it fits in device_max_gb)
        device_max_gb: float = 4.0,  # the largest decoded folder on_device=None moves to the GPU
        on_bad_file: Literal["stop", "skip"] = "stop",  # unreadable or too small files (pairs: either file, or an odd
                                                        # side-by-side width): stop, naming them, or skip them, listed
                                                        # in <run>/skipped_files.txt
        # ---- arrays and multiband files (data/arrays.py): scientific data in its own units
        reader: Literal["auto", "image", "array"] = "auto",  # auto: arrays when the folder holds .npy/.npz files or
                                                             # TIFFs of more than 8 bits, or an option below asks
        bands: Optional[list[int]] = None,  # arrays: the bands to train on, numbered from 1 (e.g. [4, 3, 2])
        normalize: Literal["dtype", "percentile"] = "dtype",  # arrays: [0, 1] by the dtype's range, or per channel
                                                              # by the data's percentiles (measured once)
        percentiles: tuple[float, float] = (0.1, 99.9),  # normalize=percentile: the values that map to 0 and 1
        value_range: Optional[list] = None,  # arrays: [low, high] (numbers, or a list per channel) that map to 0 and 1,
                                             # e.g. [0, 4095] for 12-bit data in 16-bit files; overrides normalize
                                             # (pairs: for the generated side; the condition follows normalize)
        cond_bands: Optional[list[int]] = None,  # pairs of arrays (pairs=folders): the condition's bands, from 1
        exif_orientation: bool = True,  # image files: turned upright by their EXIF orientation (False: as stored)
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown data.dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
        if dataset == "folder" and not root:
            raise ValueError("data.root is required with data.dataset='folder': give the folder of training images")
        if pairs not in PAIRS:
            raise ValueError(f"unknown data.pairs {pairs!r}: expected one of {', '.join(PAIRS)}")
        if half is not None and pairs != "none":
            raise ValueError(f"data.half={half!r} takes one half of side-by-side files for unpaired data; "
                             f"with data.pairs={pairs!r} leave it unset")
        if pairs in GIVEN_LAYOUTS and dataset != "folder":
            raise ValueError(f"data.pairs={pairs!r} reads pairs from files: it needs data.dataset='folder' "
                             "and data.root")
        if dataset == "digits" and pairs != "none":
            raise ValueError("the digits are for unconditional generation: use data.dataset='photos' or a folder "
                             "for pairs")
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size), ("repeat", repeat)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name}={value!r}: expected a whole number of at least 1")
        if reader not in ("auto", "image", "array"):
            raise ValueError(f"unknown data.reader {reader!r}: expected 'auto', 'image' or 'array'")
        if dataset != "folder" and (reader == "array" or bands or value_range or normalize != "dtype"):
            raise ValueError(f"data.reader/bands/normalize/value_range are for folders of array files; the built-in "
                             f"{dataset!r} are images")
        if bands is not None and (not bands or any(not isinstance(b, int) or b < 1 for b in bands)):
            raise ValueError(f"data.bands {bands!r}: expected band numbers from 1, e.g. [4, 3, 2]")
        if not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise ValueError(f"data.percentiles {list(percentiles)}: expected [low, high] with 0 <= low < high <= 100")
        if value_range is not None:
            try:
                flat = [float(v) for pair in value_range for v in (pair if isinstance(pair, (list, tuple)) else [pair])]
            except (TypeError, ValueError):
                flat = []
            if len(value_range) != 2 or not flat:
                raise ValueError(f"data.value_range {value_range!r}: expected [low, high], numbers or one list of "
                                 "numbers per channel each, e.g. [0, 4095]")
        if cond_bands is not None:
            if pairs not in GIVEN_LAYOUTS or not cond_bands or any(not isinstance(b, int) or b < 1 for b in cond_bands):
                raise ValueError(f"data.cond_bands {cond_bands!r}: expected band numbers from 1 for the condition "
                                 "files of pairs (data.pairs: folders)")
            if len(cond_bands) != (cond_image_channels or channels):
                raise ValueError(f"data.cond_bands {list(cond_bands)} picks {len(cond_bands)} band(s), but the "
                                 f"condition has {cond_image_channels or channels}: set data.cond_image_channels")
        if bands is not None and len(bands) != channels:
            raise ValueError(f"data.bands {list(bands)} picks {len(bands)} band(s), but data.channels={channels}: "
                             "set data.channels to the number of bands")
        self.save_hyperparameters()
        self._data_range = self._cond_range = None  # measured once, on first use (DataRange)
        self.train_set: Optional[torch.utils.data.Dataset] = None
        self.val_set: Optional[torch.utils.data.Dataset] = None
        self.skipped: list[tuple[Path, str]] = []  # files left out by on_bad_file="skip": (file, why)

    @property
    def condition(self) -> Condition:
        """What a model trained on these data is conditioned on (`dff fit` links it into the model)."""
        h = self.hparams
        return Condition.of_data(h.pairs, h.channels, h.cond_image_channels)

    @cached_property
    def reads_arrays(self) -> bool:
        """Whether the folder is read as arrays (data/arrays.py) rather than as images through PIL."""
        h = self.hparams
        if h.dataset != "folder" or h.reader == "image":
            return False
        if (h.reader == "array" or h.bands or h.cond_bands or h.value_range or h.normalize != "dtype"
                or h.channels not in MODES or self.condition.channels not in (0, *MODES)):
            return True
        meta = packed_meta(h.root)
        return meta["arrays"] if meta is not None else holds_arrays(h.root)

    @property
    def data_range(self) -> Optional[dict]:
        """The per-channel values that map to [0, 1] (DataRange as a dict), for array data; None for images. `dff
        fit` hands it to the model, which keeps it in its checkpoints and exports to write samples in these units."""
        r = self.measured_range()
        return None if r is None else r.as_dict()

    @property
    def cond_data_range(self) -> Optional[dict]:
        """Pairs of array files: the condition's DataRange as a dict (measured from its own files with
        data.normalize, its bands data.cond_bands); None otherwise. `dff fit` hands it to the model, which reads
        the files given to `dff translate` with it."""
        r = self.measured_range(cond=True)
        return None if r is None else r.as_dict()

    def measured_range(self, cond: bool = False) -> Optional[DataRange]:
        """The DataRange of the generated images (cond=True: of the pairs' condition files), for array data."""
        h = self.hparams
        if not self.reads_arrays or (cond and h.pairs not in GIVEN_LAYOUTS):
            return None
        if h.pairs in GIVEN_LAYOUTS:  # pairs: each side from its own files
            if self._data_range is None:
                conds, targets = self.pair_sides(h.root)
                self._cond_range = measure_range(conds, self.condition.channels, bands=h.cond_bands,
                                                 normalize=h.normalize, percentiles=h.percentiles)
                self._data_range = measure_range(targets, h.channels, bands=h.bands, normalize=h.normalize,
                                                 percentiles=h.percentiles, value_range=h.value_range)
            return self._cond_range if cond else self._data_range
        if self._data_range is None:
            files = Packed(h.root) if is_packed(h.root) else find_images(h.root, ArrayFolder.extensions)
            self._data_range = measure_range(files, h.channels, bands=h.bands, normalize=h.normalize,
                                             percentiles=h.percentiles, value_range=h.value_range)
        return self._data_range

    def pair_sides(self, root) -> tuple[list[Path], list[Path]]:
        """(condition files, target files) of a folder of array pairs; a clear error for other layouts."""
        h = self.hparams
        if h.pairs != "folders" or is_packed(root):
            raise ValueError(f"data.pairs={h.pairs!r}{' on a packed folder' if is_packed(root) else ''}: pairs of "
                             "array files are read from data.pairs: folders (root/A and root/B, matching names), "
                             "unpacked")
        return array_pair_sides(root, h.direction)

    @property
    def workers(self) -> int:
        """DataLoader workers for image folders: data.num_workers, else min(4, the CPU cores this process may use)."""
        if self.hparams.num_workers is not None:
            return self.hparams.num_workers
        return min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    def use_latent_cache(self, latent) -> None:
        """Train from cached latents, made by the model's latent space `latent` (models/latent_space.py:
        `encode_unscaled`, images in [0, 1] -> unscaled latents; `condition_code`; `cache_meta()`, what the
        latents depend on): each training item is encoded once per flip variant, rank 0 writing data.latent_cache,
        the other ranks reading it; a cache is reused only when it was made for the same autoencoder and data
        settings. The training set then serves {"latent"[, "cond_code"][, "label"]}, which DiffusionModel.loss
        takes as it takes images. Called by the training shell at the start of fit."""
        from .latent_cache import LatentDataset, load_or_make_cache

        h = self.hparams
        plain = self.make("train", flips=False)
        strategy = self.trainer.strategy if self.trainer is not None else None
        is_writer = strategy is None or strategy.is_global_zero
        meta = {**latent.cache_meta(), "image_size": int(h.image_size), "channels": int(h.channels),
                "condition": self.condition.kind}
        if self.data_range is not None:  # array data: latents of other ranges are other latents
            meta["data_range"] = self.data_range
        kw = dict(encode=latent.encode_unscaled, condition_code=latent.condition_code, meta=meta, hflip=h.hflip,
                  vflip=h.vflip)
        if is_writer:
            data = load_or_make_cache(h.latent_cache, plain, batch_size=h.val_batch_size, **kw)
        if strategy is not None:
            strategy.barrier("latent_cache")
        if not is_writer:
            data = load_or_make_cache(h.latent_cache, plain, is_writer=False, **kw)
        self.train_set = LatentDataset(data)

    def make(self, split: str, flips: bool = True,
             checked: Optional[list] = None) -> Optional[torch.utils.data.Dataset]:
        """The training (split="train") or validation data set; None when there is no validation data.
        flips=False: the training set without random flips (for the latent cache, which encodes them).
        checked: the folder check's verdict made by another process ([(file, why)] left out), taken as it is."""
        h, train = self.hparams, split == "train"
        hflip_on, vflip_on = h.hflip and flips, h.vflip and flips
        if h.dataset == "digits":
            return DigitsDataset(h.image_size, h.channels) if train else None
        if h.dataset in ("photos", "textures"):
            base = PhotoPatches(split, h.image_size, h.channels, repeat=h.repeat, hflip=hflip_on and train,
                                vflip=vflip_on and train, source=h.dataset)
        else:
            root = h.root if train else h.val_root
            if root is None:
                return None
            crop, hflip, vflip, repeat = (h.crop, hflip_on, vflip_on, h.repeat) if train else (
                "resize" if h.crop == "resize" else "center", False, False, 1)
            if h.pairs in GIVEN_LAYOUTS and self.reads_arrays:
                self.pair_sides(root)  # the layout's error, if any
                if h.crop_scale != 1.0:
                    raise ValueError(f"data.crop_scale={h.crop_scale} is for pairs of image files; pairs of arrays are "
                                     "cropped at image_size (or resized whole: data.crop resize)")
                pairs = ArrayPairs(root, image_size=h.image_size, channels=h.channels,
                                   cond_channels=self.condition.channels, data_range=self.measured_range(),
                                   cond_range=self.measured_range(cond=True), direction=h.direction, crop=crop,
                                   hflip=hflip, vflip=vflip, repeat=repeat, on_bad_file=h.on_bad_file,
                                   check_workers=self.workers, checked=checked)
                self.skipped += pairs.skipped
                return pairs
            if h.pairs in GIVEN_LAYOUTS:
                if is_packed(root):
                    raise ValueError(f"data.pairs={h.pairs!r} reads pairs of image files from a folder; packed pairs "
                                     "are not supported (tasks made from one image work: sr2, sr4, colorize, "
                                     "inpaint)")
                pairs = PairFolder(root, h.pairs, image_size=h.image_size, channels=h.channels,
                                   cond_channels=self.condition.channels, direction=h.direction, crop=crop, hflip=hflip,
                                   vflip=vflip, repeat=repeat, crop_scale=h.crop_scale, on_bad_file=h.on_bad_file,
                                   checked=checked, exif_orientation=h.exif_orientation)
                self.skipped += pairs.skipped
                return pairs
            kw = dict(crop=crop, hflip=hflip, vflip=vflip, repeat=repeat, labels=h.labels and h.pairs == "none",
                      half=h.half, on_bad_file=h.on_bad_file, check_workers=self.workers, checked=checked,
                      exif_orientation=h.exif_orientation)
            # a folder packed by `dff data pack` (its items checked then, read from its shards) or a plain one
            folder = folder_class(root, self.reads_arrays)
            if self.reads_arrays:  # the training files' range, for validation files too
                kw.update(bands=h.bands, data_range=self.measured_range())
            base = folder(root, h.image_size, h.channels, **kw)
            self.skipped += base.skipped
        if h.pairs == "none":
            return base  # validation images of unpaired data: autoencoders score reconstructions on them
        # validation conditions are drawn once from a fixed seed, so every validation sees the same masks
        return TaskDataset(base, h.pairs, seed=None if train else 0)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.make_checked_once()
            self.train_set = self.maybe_on_device(self.train_set)
            if self.trainer is not None and hasattr(self.train_set, "skip_log"):  # files lost mid-run are listed
                self.train_set.skip_log = Path(self.trainer.log_dir or self.trainer.default_root_dir) / \
                    "skipped_files.txt"
            if self.skipped and self.trainer is not None:
                self.write_skipped(Path(self.trainer.log_dir or self.trainer.default_root_dir))  # log_dir: every rank

    def make_checked_once(self) -> tuple:
        """(training set, validation set). Under DDP the folders' files are checked once per run: rank 0 decodes
        them (in data.num_workers processes) and hands its verdict, the files to leave out or the error that stops
        the run, to the other ranks, which build their data sets from it without decoding anything."""
        strategy = self.trainer.strategy if self.trainer is not None else None
        if strategy is None or getattr(strategy, "world_size", 1) == 1 or self.hparams.dataset != "folder":
            return self.make("train"), self.make("val")
        verdict, sets = {}, (None, None)
        if strategy.is_global_zero:
            try:
                before = len(self.skipped)
                train = self.make("train")
                between = len(self.skipped)
                sets = train, self.make("val")
                verdict = {"train": self.skipped[before:between], "val": self.skipped[between:]}
            except Exception as e:
                verdict = {"error": str(e) or type(e).__name__}
                strategy.broadcast(verdict, src=0)  # the other ranks stop with it instead of waiting
                raise
        verdict = strategy.broadcast(verdict, src=0)
        if "error" in verdict:
            first = verdict["error"].splitlines()[0]  # rank 0 prints the whole message
            raise ValueError(f"rank {strategy.global_rank} stops with rank 0, whose data check failed: {first}")
        if strategy.is_global_zero:
            print(f"data: the files were checked once, on rank 0, for all {strategy.world_size} processes")
            return sets
        return self.make("train", checked=verdict["train"]), self.make("val", checked=verdict["val"])

    def maybe_on_device(self, data):
        """data.on_device: an unpaired 8-bit folder of one image size becomes DeviceImages (crops and flips on the
        training device); anything else keeps the PIL path, with one line when on_device was asked for."""
        h = self.hparams
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        images = isinstance(data, ImageFolder) and not isinstance(data, (ArrayFolder, PackedImages))
        if h.on_device is False or (h.on_device is None and not on_gpu) or h.latent_cache or not images:
            if h.on_device and not images:
                print(f"data.on_device: {type(data).__name__} data keep their own path "
                      "(on_device is for unpaired folders)")
            return data
        from PIL import Image

        from .device import DeviceImages, Unsuitable

        if h.on_device is None and data.files:  # the size from the first file's header, before decoding them all
            with Image.open(data.files[0]) as im:
                w, hgt = im.size
            gb = len(data.files) * data.channels * w * hgt / 2**30 / (2 if data.half else 1)
            if gb > h.device_max_gb:
                print(f"data.on_device: the folder would decode to about {gb:.1f} GB > data.device_max_gb="
                      f"{h.device_max_gb}; decoding per item on the host instead")
                return data
        try:
            images = DeviceImages(data, workers=self.workers or None)
        except Unsuitable as e:
            print(f"data.on_device: {e}; decoding per item on the host instead")
            return data
        gb = images.nbytes / 2**30
        if h.on_device is None and gb > h.device_max_gb:
            print(f"data.on_device: the folder decodes to {gb:.1f} GB > data.device_max_gb={h.device_max_gb}; "
                  "decoding per item on the host instead")
            return data
        print(f"data.on_device: {len(images.files)} images decoded once ({gb:.2f} GB uint8); "
              "crops and flips on the device")
        return images

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Index batches carry their items' seeds: the first one, read here on the host, seeds the batch's draws."""
        if isinstance(batch, dict) and "seed" in batch and "index" in batch:
            batch = dict(batch)
            batch["draw"] = int(batch.pop("seed")[0])  # a host tensor: no wait for the device
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """DeviceImages and cached-latent batches arrive as indices, already on the device: gather them there
        (crops, flips and flip variants drawn from the batch's seed)."""
        if isinstance(batch, dict) and "index" in batch and hasattr(self.train_set, "batch"):
            index = batch["index"]
            generator = None
            if "draw" in batch:
                generator = torch.Generator(index.device).manual_seed(batch["draw"])
            return self.train_set.batch(index, generator=generator)
        return batch

    def state_dict(self) -> dict:
        """Where the training stream stands (saved in checkpoints): the epoch and the batches of it already
        trained on, so that a resumed run takes the rest of that epoch in the same order."""
        fit_loop = getattr(self.trainer, "fit_loop", None) if self.trainer is not None else None
        if fit_loop is None:
            return {}
        return {"epoch": fit_loop.epoch_progress.current.processed,
                "batches": fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" in state:
            self.resume_at = (int(state["epoch"]), int(state["batches"]))

    def write_skipped(self, run: Path) -> Path:
        """List the files data.on_bad_file="skip" left out in <run>/skipped_files.txt, and say how many."""
        path = run / "skipped_files.txt"
        if self.trainer is None or self.trainer.is_global_zero:
            run.mkdir(parents=True, exist_ok=True)
            # file names as the file system has them, also when they are not valid UTF-8
            path.write_text("".join(f"{p}\t{why}\n" for p, why in self.skipped), errors="surrogateescape")
            print(f"data.on_bad_file=skip: left out {len(self.skipped)} unreadable or too small file(s), "
                  f"listed in {path}")
        return path

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """Batches in the order of a `Stream`: each epoch a function of (seed, epoch), each item's crop and flips
        of its own seed, whatever the number of workers, and resumable mid-epoch."""
        h = self.hparams
        # DeviceImages, cached latents: load indices, gather on the device
        on_device = hasattr(self.train_set, "indices")
        # data on the device: epochs of at least EPOCH_STEPS steps (fresh permutations back to back), so that a
        # small set makes no 4-step epochs, each with its loader restart and epoch-end hooks
        data = self.train_set.indices() if on_device else self.train_set
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # Lightning's seed_everything; the same on every rank
        stream = Stream(data, seed=seed, min_items=EPOCH_STEPS * h.batch_size if on_device else 0)
        drop_last = len(stream) >= h.batch_size
        epoch, batches = getattr(self, "resume_at", (0, 0))  # from a checkpoint (load_state_dict)
        if batches >= (len(stream) // h.batch_size if drop_last else math.ceil(len(stream) / h.batch_size)):
            epoch, batches = epoch + 1, 0  # the checkpoint closed its epoch
        stream.set_epoch(epoch)  # now: workers start drawing indices before Lightning's set_epoch
        stream.start = (epoch, batches * h.batch_size)
        workers = 0 if on_device or h.dataset != "folder" or h.latent_cache else self.workers
        return StreamLoader(
            data, batch_size=h.batch_size, sampler=stream, drop_last=drop_last,
            num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
        )

    def val_dataloader(self):
        if self.val_set is None:
            return []
        h = self.hparams
        workers = 0 if h.dataset != "folder" else self.workers
        return torch.utils.data.DataLoader(self.val_set, batch_size=h.val_batch_size, shuffle=False,
                                           num_workers=workers)
