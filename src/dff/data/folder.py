"""A folder of images as a data set: found recursively, checked once, cropped and flipped on the fly.

Every image is decoded once when the data set is built, so a corrupt or truncated file stops the
run before training starts, with the file named, instead of crashing it hours later or being
skipped silently (skipping would change the data distribution without telling anyone).
"""
from __future__ import annotations

import os
import random
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .stream import item_rng

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MODES: dict[int, str] = {1: "L", 3: "RGB", 4: "RGBA"}
Crop = Literal["random", "center", "resize"]


READ_TRIES, READ_WAIT_S = 3, 0.5  # a file that fails mid-run: tries, and the wait before the second (then twice it)


class UnreadableFile(OSError):
    """A data file that could not be read during training, after its retries (data.on_bad_file: stop)."""


def walk_files(root: Path) -> list[Path]:
    """Every file below root, following symlinked folders (each real folder once, so a link loop ends), under the
    names the user sees (the link's path, not its target's)."""
    out, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # reached again through a link: a loop, or two links to one folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        out += [Path(folder) / n for n in names if os.path.isfile(os.path.join(folder, n))]
    return out


def find_images(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """All files below `root` ending in one of `extensions`, sorted; clear errors for a missing or empty folder."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"data folder {str(root)!r} is a file, expected a folder of images")
    every = walk_files(root)
    files = sorted(p for p in every if p.suffix.lower() in extensions)
    if not files:
        n_other = len(every)
        what = "is empty" if n_other == 0 else f"holds {n_other} files but no supported images"
        raise ValueError(f"data folder {str(root)!r} {what}: expected files ending in {', '.join(extensions)}")
    return files


# grayscale modes of more than 8 bits (16-bit PNG/TIFF, 32-bit integer, float TIFF) and the value of white
HIGH_DEPTH: dict[str, float] = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0,
                                "I": 65535.0, "F": 1.0}


BACKGROUND = (255, 255, 255)  # what transparent pixels become when an image with alpha is read as L or RGB


def convert_image(im: Image.Image, channels: int) -> Image.Image:
    """An image as L (1 channel), RGB (3) or RGBA (4). An image with transparency read as L or RGB is composited
    onto white (BACKGROUND), not stripped of its alpha, which would show the colour hidden under transparent
    pixels. Grayscale images of more than 8 bits are not clipped at 255 (as PIL's convert would do) but scaled
    to [0, 1] by their range: 16-bit (and 32-bit integer, as PIL reads 16-bit files) by 65535, float (TIFF) as
    they are, both clipped to [0, 1]; with channels=1 they stay at full precision (a float image, mode F), with
    3 or 4 channels they are rounded to 8 bits."""
    if channels not in MODES:
        raise ValueError(f"channels must be one of {sorted(MODES)} for image files, got {channels}")
    if channels != 4 and (im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba)
    if im.mode not in HIGH_DEPTH:
        return im.convert(MODES[channels])
    a = np.clip(np.asarray(im, dtype=np.float32) / HIGH_DEPTH[im.mode], 0.0, 1.0)  # (H, W) in [0, 1]
    if channels == 1:
        return Image.fromarray(a, "F")
    return Image.fromarray((a * 255).round().astype(np.uint8), "L").convert(MODES[channels])


def opened(path):
    """What a decoder reads: a file's path, or the bytes of a packed item (data/shards.py's Entry: a str naming
    its source file, with an open() that gives its bytes as a file object)."""
    return path.open() if isinstance(path, str) and hasattr(path, "open") else path


def load_image(path: Path, channels: int, exif: bool = True) -> Image.Image:
    """Decode an image fully, turn it upright by its EXIF orientation (as a photo viewer shows it; exif=False:
    as stored) and convert it to `channels` (see convert_image)."""
    if channels not in MODES:
        raise ValueError(f"channels must be one of {sorted(MODES)} for image files, got {channels}")
    with Image.open(opened(path)) as im:
        im.load()
        return convert_image(ImageOps.exif_transpose(im) if exif else im, channels)


def is_16_bit_colour_png(path: Path) -> bool:
    """Whether a PNG's header (IHDR: bit depth at byte 24, colour type at 25) says 16-bit RGB or RGBA, which PIL
    decodes to 8 bits without a word (16-bit grayscale it keeps)."""
    if path.suffix.lower() != ".png":
        return False
    with open(path, "rb") as f:
        head = f.read(26)
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def inspect_image(path: Path) -> dict:
    """Decode a file fully once: {"error": None or why it cannot be read, "mode", "size": (w, h),
    "orientation": its EXIF orientation (1: as stored), "bomb": larger than PIL's decompression-bomb
    warning limit}. A zero-byte file, a truncated or corrupt one, and one over PIL's hard limit
    (DecompressionBombError) give an error."""
    if path.stat().st_size == 0:
        return {"error": "zero-byte file"}
    if is_16_bit_colour_png(path):
        return {"error": "16-bit colour PNG, which PIL would round to 8 bits: convert it to a 16-bit TIFF (read at "
                         "full precision, as an array) or to 8 bits yourself"}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                info = {"error": None, "mode": im.mode, "size": im.size, "orientation": im.getexif().get(0x0112, 1)}
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return {"error": tiff_hint(path) or f"{type(e).__name__}: {e}"}
    info["bomb"] = any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
    return info


def tiff_hint(path: Path) -> Optional[str]:
    """For a TIFF that PIL cannot decode but tifffile can (float RGB, many bands, ...): what it is and how to read
    it, instead of calling a valid file corrupt."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            s = tif.series[0]
            shape, dtype = s.shape, s.dtype
    except Exception:
        return None
    return (f"a valid TIFF ({'x'.join(map(str, shape))}, {dtype}) that the image reader (PIL) cannot decode: read "
            "the folder as arrays (data.reader: array, at full precision)")


def inspect_all(files: Sequence[Path], inspect: Callable[[Path], dict], workers: int = 1) -> list[dict]:
    """inspect(file) for every file, in `workers` processes when there are enough files to pay for them."""
    if workers <= 1 or len(files) < 256:
        return [inspect(p) for p in files]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(inspect, files, chunksize=64))


def check_images(files: list[Path], image_size: int, crop: Crop, skip: bool = False,
                 inspect: Callable[[Path], dict] = inspect_image,
                 unreadable: str = "could not be decoded (corrupt or truncated)",
                 workers: int = 1) -> list[tuple[Path, str]]:
    """Decode every file once (`inspect`: {"error", "size"}; in `workers` processes for large folders); raise naming
    every unreadable file and every image too small to crop, or, with skip=True, return them as (file, why) for the
    caller to leave out (an error if none is left)."""
    bad, small, upscaled, skipped = [], [], 0, []
    for p, info in zip(files, inspect_all(files, inspect, workers)):
        if info["error"]:
            bad.append(f"  {p}: {info['error']}")
            skipped.append((p, info["error"]))
            continue
        w, h = info["size"]
        if min(w, h) < image_size and crop == "resize":
            upscaled += 1
        elif min(w, h) < image_size:
            small.append(f"  {p}: {w}x{h}")
            skipped.append((p, f"{w}x{h}, smaller than the training size {image_size} (crop={crop!r})"))
    if skip and len(skipped) < len(files):
        if upscaled:
            warnings.warn(f"{upscaled} image(s) are smaller than {image_size}x{image_size} and will be upscaled")
        return skipped
    if skip:
        raise ValueError(f"all {len(files)} image file(s) are unreadable or too small: nothing to train on, e.g.\n"
                         + "\n".join((bad + small)[:20]))
    if bad:
        raise ValueError(
            f"{len(bad)} image file(s) {unreadable}; fix or remove them, "
            "training stops rather than skip them silently:\n" + "\n".join(bad[:20])
        )
    if small:
        raise ValueError(
            f"{len(small)} image(s) are smaller than the training size {image_size}x{image_size}, "
            f"which crop={crop!r} cannot cut from them (use crop='resize' to upscale them):\n" + "\n".join(small[:20])
        )
    if upscaled:
        warnings.warn(f"{upscaled} image(s) are smaller than {image_size}x{image_size} and will be upscaled")
    return []


def crop_box(w: int, h: int, size: int, crop: Crop, rng: random.Random) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a size x size window: random or centred."""
    if crop == "random":
        left, top = rng.randint(0, w - size), rng.randint(0, h - size)
    else:
        left, top = (w - size) // 2, (h - size) // 2
    return left, top, left + size, top + size


def transform_same(images: list[Image.Image], size: int, crop: Crop, *, hflip: bool, vflip: bool,
                   rng: random.Random, crop_scale: float = 1.0) -> list[Image.Image]:
    """Crop (or resize) to size x size, then flip: one random draw applied to every image of the
    list, so that the two images of a pair stay aligned. The images must share one size.
    crop_scale > 1 cuts a window crop_scale times larger and resizes it down to size (antialiased)."""
    if len({im.size for im in images}) != 1:
        raise ValueError(f"images of one pair must share a size, got {[im.size for im in images]}")
    if crop == "resize":
        w, h = images[0].size
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        images = [im.resize(new, Image.Resampling.BICUBIC) for im in images]
    window = min(round(size * crop_scale), *images[0].size) if crop != "resize" else size
    box = crop_box(*images[0].size, window, "center" if crop == "resize" else crop, rng)
    images = [im.crop(box) for im in images]
    if window != size:
        images = [im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None) for im in images]
    if hflip and rng.random() < 0.5:
        images = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]
    if vflip and rng.random() < 0.5:
        images = [im.transpose(Image.Transpose.FLIP_TOP_BOTTOM) for im in images]
    return images


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor (C, H, W) in [0, 1] (8-bit images / 255; float images, mode F, as they are)."""
    a = np.asarray(im, dtype=np.float32) / (1.0 if im.mode == "F" else 255.0)
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


class ImageFolder(torch.utils.data.Dataset):
    """Images below `root` as (C, size, size) tensors in [0, 1] with random crop/resize and flips."""

    def __init__(
        self,
        root: str | Path,
        image_size: int,  # side of the square training images
        channels: int = 3,  # 1 (grayscale), 3 (RGB) or 4 (RGBA); files are converted
        *,
        crop: Crop = "random",  # random | center: a window at native resolution; resize: shorter side to size,
                                # centre crop
        hflip: bool = True,  # random horizontal flips
        vflip: bool = False,  # random vertical flips (aerial, microscopy data)
        seed: Optional[int] = None,  # fixed crops/flips (tests); None: per-worker streams
        repeat: int = 1,  # visits of each file per epoch (small folders: fewer, longer epochs)
        labels: bool = False,  # also return "label": the index of the file's top-level sub-folder (sorted names)
        half: Optional[str] = None,  # "A" or "B": only the left or right half of pix2pix side-by-side files
        on_bad_file: Literal["stop", "skip"] = "stop",  # unreadable or too small files: stop (naming them) or leave
                                                        # them out
        check_workers: int = 1,  # processes that decode the files once to check them (large folders)
        exif_orientation: bool = True,  # turn photos upright by their EXIF orientation (False: as stored)
        checked: Optional[list] = None,  # the check's verdict from another process, [(file, why)] to leave out:
                                         # DDP ranks other than 0 take rank 0's instead of decoding every file again
    ):
        if half not in (None, "A", "B"):
            raise ValueError(f"unknown half {half!r}: expected 'A' (left), 'B' (right) or None (whole files)")
        self.half = half
        if crop not in ("random", "center", "resize"):
            raise ValueError(f"unknown crop {crop!r}: expected 'random', 'center' or 'resize'")
        self.image_size, self.channels, self.crop, self.hflip, self.vflip = image_size, channels, crop, hflip, vflip
        self.repeat, self.exif = repeat, exif_orientation
        self.check_channels(channels)
        if on_bad_file not in ("stop", "skip"):
            raise ValueError(f"unknown on_bad_file {on_bad_file!r}: expected 'stop' or 'skip'")
        self.on_bad_file = on_bad_file
        self.files = self.list_files(root)
        self.skipped = checked if checked is not None else self.check_files(
            image_size, crop, skip=on_bad_file == "skip", workers=check_workers)  # [(file, why)]
        if self.skipped:
            left_out = {p for p, _ in self.skipped}
            self.files = [p for p in self.files if p not in left_out]
        self.classes: list[str] = []
        self.labels: Optional[list[int]] = None
        if labels:
            self.classes, self.labels = self.class_labels(root)
        # the global `random` is reseeded per DataLoader worker by torch; a seed makes one stream
        self.rng = random.Random(seed) if seed is not None else random

    extensions = IMAGE_EXTENSIONS  # the files this data set reads (data/arrays.py's ArrayFolder reads more)
    unreadable = "could not be decoded (corrupt or truncated)"  # what the check says of the files inspect refuses

    def check_channels(self, channels: int) -> None:
        if channels not in MODES:
            raise ValueError(f"channels must be one of {sorted(MODES)} for image files, got {channels} (other channel "
                             "counts: multiband TIFF or .npy files, read as arrays: data.reader array)")

    def inspector(self) -> Callable[[Path], dict]:
        """What decodes one file to check it, {"error", "size", ...}: a module-level function (or a partial of one),
        so that worker processes can run it."""
        return inspect_image

    def list_files(self, root) -> Sequence:
        """The files to read: every one below root ending in one of `extensions`, sorted."""
        return find_images(root, self.extensions)

    def check_files(self, image_size: int, crop: Crop, skip: bool, workers: int = 1) -> list[tuple[Path, str]]:
        """Decode every file once (in `workers` processes): the files left out, or an error naming them."""
        return check_images(self.files, image_size, crop, skip=skip, inspect=self.inspector(),
                            unreadable=self.unreadable, workers=workers)

    def class_labels(self, root) -> tuple[list[str], list[int]]:
        """(class names, each file's class): the files' top-level sub-folders, sorted by name."""
        root = Path(root)
        rel = [p.relative_to(root) for p in self.files]
        loose = [str(root / r) for r in rel if len(r.parts) == 1]
        if loose:
            raise ValueError(f"labels from sub-folder names need every image inside a class folder of {root}, "
                             f"but {len(loose)} lie directly in it, e.g. {loose[0]}")
        classes = sorted({r.parts[0] for r in rel})
        index = {c: k for k, c in enumerate(classes)}
        return classes, [index[r.parts[0]] for r in rel]

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def transform(self, im: Image.Image, rng: Optional[random.Random] = None) -> Image.Image:
        """Crop or resize to image_size, then flip."""
        return transform_same([im], self.image_size, self.crop, hflip=self.hflip, vflip=self.vflip,
                              rng=rng or self.rng)[0]

    def __getitem__(self, i: int) -> dict:
        i, rng = item_rng(i, self.rng)  # a Key from the training Stream brings its own draws
        i = i % len(self.files)
        i, image = self.read(i, rng)
        item = {"image": image}
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item

    on_bad_file: str = "stop"
    skip_log: Optional[Path] = None  # the run's skipped_files.txt (set by the data module), for files lost mid-run

    def read(self, i: int, rng: random.Random) -> tuple[int, torch.Tensor]:
        """(index, image) of item i. A file that fails to read during training (a network-storage hiccup) is tried
        READ_TRIES times, READ_WAIT_S apart (then twice that); then, with on_bad_file "skip", it is listed in
        skip_log and the next readable file stands in (up to READ_TRIES more files); with "stop", UnreadableFile
        names it."""
        for k in range(min(len(self.files), READ_TRIES + 1)):
            j = (i + k) % len(self.files)
            try:
                return j, self.load_with_retries(self.files[j], rng)
            except Exception as e:  # OSError, PIL's and tifffile's errors, a file cut short...
                path, why = self.files[j], f"{type(e).__name__}: {e}"
            if self.on_bad_file != "skip":
                raise UnreadableFile(f"{path} could not be read during training ({READ_TRIES} tries: {why}); fix it "
                                     "and resume with --ckpt_path last, or set data.on_bad_file: skip to leave such "
                                     "files out")
            warnings.warn(f"{path} could not be read during training ({why}): left out, listed in skipped_files.txt")
            if self.skip_log is not None:
                with open(self.skip_log, "a", errors="surrogateescape") as f:
                    f.write(f"{path}\tduring training: {why}\n")
        raise UnreadableFile(f"{self.files[i]} and the files after it could not be read during training: is the "
                             "storage still there?")

    def load_with_retries(self, path: Path, rng: random.Random) -> torch.Tensor:
        state = rng.getstate()  # the same crop and flips on every try
        for attempt in range(1, READ_TRIES):
            try:
                return self.load(path, rng)
            except Exception:
                rng.setstate(state)
                time.sleep(READ_WAIT_S * attempt)
        return self.load(path, rng)  # the last try: its error is the file's

    def load(self, path: Path, rng: random.Random) -> torch.Tensor:
        """One file as a training image (C, size, size) in [0, 1]: decoded, converted, cropped and flipped."""
        im = load_image(path, self.channels, self.exif)
        if self.half is not None:  # pix2pix files: A | B side by side
            w, h = im.size
            im = im.crop((0, 0, w // 2, h) if self.half == "A" else (w // 2, 0, 2 * (w // 2), h))
        return to_tensor(self.transform(im, rng))
