"""Paired data for image-to-image translation: batches {"cond": condition, "image": target}.

Layouts of a folder `root`:
    side_by_side   each file holds A and B side by side (the pix2pix archives: maps, facades, ...);
                   the width must be even; A is the left half
    folders        root/A/ and root/B/ hold files with matching stems (extensions may differ)
                   (image files: PairFolder; array files, each side in its own units: ArrayPairs)
and, for a folder of single images, `TaskDataset` computes the condition from the target crop
(super-resolution, colorization, inpainting; see tasks.py).

direction "AtoB" conditions on A and generates B; "BtoA" the reverse. The same random crop,
resize and flips are applied to both images of a pair. Images of a pair that differ in size
(folders layout, e.g. low-resolution inputs beside high-resolution targets) have the condition
resized to the target's size with bicubic interpolation, with a warning that counts them.
"""
from __future__ import annotations

import random
import warnings
from functools import partial
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .folder import (IMAGE_EXTENSIONS, MODES, Crop, check_images, convert_image, find_images, inspect_image,
                     to_tensor, transform_same)
from .arrays import ArrayFolder, DataRange, inspect_bands, transform_tensor
from .stream import Key, draw_seed, item_rng
from .tasks import TASKS, make_condition

Layout = Literal["side_by_side", "folders"]
Direction = Literal["AtoB", "BtoA"]


def match_stems(root: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[tuple[Path, Path]]:
    """(A file, B file) pairs of root/A and root/B matched by file stem; errors name every orphan."""
    for side in ("A", "B"):
        if not (root / side).is_dir():
            raise FileNotFoundError(f"paired folder {str(root)!r} has no {side}/ subfolder: expected {root}/A and "
                                    f"{root}/B holding files with matching names")
    a = {p.relative_to(root / "A").with_suffix(""): p for p in find_images(root / "A", extensions)}
    b = {p.relative_to(root / "B").with_suffix(""): p for p in find_images(root / "B", extensions)}
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        lines = [f"  {a[k]} has no partner in {root / 'B'}" for k in only_a[:10]]
        lines += [f"  {b[k]} has no partner in {root / 'A'}" for k in only_b[:10]]
        raise ValueError(f"{len(only_a) + len(only_b)} file(s) in {root} have no partner with the same name:\n"
                         + "\n".join(lines))
    return [(a[k], b[k]) for k in sorted(a)]


def check_pairs(pairs: list[tuple[Path, Optional[Path]]], image_size: int, crop: Crop,
                skip: bool = False) -> tuple[int, list[tuple[Path, str]]]:
    """Decode every file once; raise naming unreadable files, odd-width side-by-side files and images too
    small to crop, or, with skip=True, return those pairs as (file, why) for the caller to leave out (an
    error if none is left). Returns (the number of pairs whose two images differ in size, the skipped)."""
    bad, odd, small, differ, skipped = [], [], [], 0, []
    for a, b in pairs:
        infos = [inspect_image(a)] if b is None else [inspect_image(a), inspect_image(b)]
        errors = [f"{p}: {i['error']}" for p, i in zip((a, b), infos) if i["error"]]
        if errors:
            bad.append("  " + "; ".join(errors))
            skipped.append((a, "; ".join(errors)))
            continue
        sizes = [i["size"] for i in infos]
        if b is None:  # side by side
            w, h = sizes[0]
            if w % 2:
                odd.append(f"  {a}: {w}x{h}")
                skipped.append((a, f"{w}x{h}, an odd width that cannot be split into two halves A|B"))
                continue
            sizes = [(w // 2, h)]
        differ += len(set(sizes)) > 1
        w, h = sizes[-1]  # the B image; the condition is resized to the target
        if min(w, h) < image_size and crop != "resize":
            small.append(f"  {a}: {w}x{h}")
            skipped.append((a, f"{w}x{h}, smaller than the training size {image_size} (crop={crop!r})"))
    if skip:
        if len(skipped) == len(pairs):
            raise ValueError(f"all {len(pairs)} pair(s) are unreadable, odd or too small: nothing to train on, e.g.\n"
                             + "\n".join((bad + odd + small)[:20]))
        return differ, skipped
    if bad:
        raise ValueError(f"{len(bad)} image file(s) could not be decoded (corrupt or truncated); fix or remove them, "
                         "training stops rather than skip them silently (or set data.on_bad_file: skip):\n"
                         + "\n".join(bad[:20]))
    if odd:
        raise ValueError(f"{len(odd)} side-by-side image(s) have an odd width, so they cannot be split into two "
                         "equal halves A|B (expected width = 2 x height for pix2pix data):\n" + "\n".join(odd[:20]))
    if small:
        raise ValueError(f"{len(small)} image(s) are smaller than the training size {image_size}x{image_size}, which "
                         f"crop={crop!r} cannot cut from them (use crop='resize'):\n" + "\n".join(small[:20]))
    return differ, skipped


class PairFolder(torch.utils.data.Dataset):
    """(condition, target) pairs from a side-by-side or A/B folder, cropped and flipped together."""

    def __init__(
        self,
        root: str | Path,
        layout: Layout = "side_by_side",
        *,
        image_size: int = 64,
        channels: int = 3,  # channels of the target (generated) image
        cond_channels: int = 3,  # channels of the condition image
        direction: Direction = "AtoB",  # AtoB: condition A, generate B
        crop: Crop = "random",
        hflip: bool = True,
        vflip: bool = False,
        repeat: int = 1,
        seed: Optional[int] = None,
        crop_scale: float = 1.0,  # cut crop_scale x image_size windows and resize them to image_size
        on_bad_file: Literal["stop", "skip"] = "stop",  # a pair with an unreadable, odd or too small file: stop or
                                                        # leave it out
        checked: Optional[list] = None,  # the check's verdict from another process (ImageFolder's `checked`)
        exif_orientation: bool = True,  # turn photos upright by their EXIF orientation (False: as stored)
    ):
        if layout not in ("side_by_side", "folders"):
            raise ValueError(f"unknown pair layout {layout!r}: expected 'side_by_side' or 'folders'")
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"unknown direction {direction!r}: expected 'AtoB' or 'BtoA'")
        for name, c in (("channels", channels), ("cond_channels", cond_channels)):
            if c not in MODES:
                raise ValueError(f"{name} must be one of {sorted(MODES)} for image files, got {c}")
        root = Path(root)
        self.pairs: list[tuple[Path, Optional[Path]]] = (
            [(p, None) for p in find_images(root)] if layout == "side_by_side" else match_stems(root))
        if on_bad_file not in ("stop", "skip"):
            raise ValueError(f"unknown on_bad_file {on_bad_file!r}: expected 'stop' or 'skip'")
        differ, self.skipped = (0, checked) if checked is not None else check_pairs(
            self.pairs, image_size, crop, skip=on_bad_file == "skip")  # [(file, why)]
        left_out = {p for p, _ in self.skipped}
        self.pairs = [(a, b) for a, b in self.pairs if a not in left_out]
        if differ:
            warnings.warn(f"{differ} pair(s) in {root} have images of different sizes: the condition is resized "
                          "to the target's size (bicubic)")
        self.image_size, self.channels, self.cond_channels = image_size, channels, cond_channels
        self.direction, self.crop, self.hflip, self.vflip, self.repeat = direction, crop, hflip, vflip, repeat
        self.rng = random.Random(seed) if seed is not None else random
        self.crop_scale, self.exif = crop_scale, exif_orientation

    def __len__(self) -> int:
        return len(self.pairs) * self.repeat

    def load_pair(self, i: int) -> tuple[Image.Image, Image.Image]:
        """(A, B) as full-resolution PIL images (A converted later, once its role is known)."""
        a, b = self.pairs[i % len(self.pairs)]
        upright = ImageOps.exif_transpose if self.exif else (lambda im: im)
        if b is None:
            with Image.open(a) as im:
                im.load()
                im = upright(im)
                w, h = im.size
                return im.crop((0, 0, w // 2, h)), im.crop((w // 2, 0, w, h))
        with Image.open(a) as im_a, Image.open(b) as im_b:
            im_a.load(), im_b.load()
            return upright(im_a).copy(), upright(im_b).copy()

    def __getitem__(self, i: int) -> dict:
        i, rng = item_rng(i, self.rng)  # a Key from the training Stream brings its own draws
        a, b = self.load_pair(i)
        cond, target = (a, b) if self.direction == "AtoB" else (b, a)
        cond, target = convert_image(cond, self.cond_channels), convert_image(target, self.channels)
        if cond.size != target.size:
            cond = cond.resize(target.size, Image.Resampling.BICUBIC)
        cond, target = transform_same([cond, target], self.image_size, self.crop, hflip=self.hflip, vflip=self.vflip,
                                      rng=rng, crop_scale=self.crop_scale)
        return {"cond": to_tensor(cond), "image": to_tensor(target)}


def array_pair_sides(root: str | Path, direction: Direction = "AtoB") -> tuple[list[Path], list[Path]]:
    """(condition files, target files) of a folders-layout pair folder of arrays, in matching order."""
    pairs = match_stems(Path(root), ArrayFolder.extensions)
    a, b = [p for p, _ in pairs], [q for _, q in pairs]
    return (a, b) if direction == "AtoB" else (b, a)


class ArrayPairs(torch.utils.data.Dataset):
    """(condition, target) pairs of array files (root/A and root/B, matched by stem), each side in [0, 1] by its
    own DataRange (`cond_range`, `data_range`) and bands: e.g. 2-band SAR -> 4-band optical, uint16 -> uint16.
    The condition is resized to the target's size (bicubic, antialiased) when they differ; the pair is then
    cropped and flipped together."""

    def __init__(self, root: str | Path, *, image_size: int, channels: int, cond_channels: int,
                 data_range: DataRange, cond_range: DataRange, direction: Direction = "AtoB", crop: Crop = "random",
                 hflip: bool = True, vflip: bool = False, repeat: int = 1, seed: Optional[int] = None,
                 on_bad_file: Literal["stop", "skip"] = "stop", check_workers: int = 1,
                 checked: Optional[list] = None):
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"unknown direction {direction!r}: expected 'AtoB' or 'BtoA'")
        if crop not in ("random", "center", "resize"):
            raise ValueError(f"unknown crop {crop!r}: expected 'random', 'center' or 'resize'")
        if on_bad_file not in ("stop", "skip"):
            raise ValueError(f"unknown on_bad_file {on_bad_file!r}: expected 'stop' or 'skip'")
        for name, r, c in (("data", data_range, channels), ("condition", cond_range, cond_channels)):
            if r.channels != c:
                raise ValueError(f"the {name} range has {r.channels} channel(s), expected {c}")
        conds, targets = array_pair_sides(root, direction)
        skip = on_bad_file == "skip"
        if checked is not None:
            self.skipped = checked
        else:  # every file decoded once: the targets must be large enough to crop, the conditions are resized to them
            self.skipped = check_images(targets, image_size, crop, skip=skip, workers=check_workers,
                                        inspect=partial(inspect_bands, channels=channels, bands=data_range.bands),
                                        unreadable=ArrayFolder.unreadable)
            self.skipped += check_images(conds, 0, "resize", skip=skip, workers=check_workers,
                                         inspect=partial(inspect_bands, channels=cond_channels,
                                                         bands=cond_range.bands),
                                         unreadable=ArrayFolder.unreadable)
        left_out = {p for p, _ in self.skipped}
        self.pairs = [(c, t) for c, t in zip(conds, targets) if c not in left_out and t not in left_out]
        if not self.pairs:
            raise ValueError(f"no pair of {root} has two readable files: nothing to train on")
        self.image_size, self.channels, self.cond_channels = image_size, channels, cond_channels
        self.data_range, self.cond_range = data_range, cond_range
        self.crop, self.hflip, self.vflip, self.repeat = crop, hflip, vflip, repeat
        self.rng = random.Random(seed) if seed is not None else random

    def __len__(self) -> int:
        return len(self.pairs) * self.repeat

    def __getitem__(self, i: int) -> dict:
        i, rng = item_rng(i, self.rng)  # a Key from the training Stream brings its own draws
        c, t = self.pairs[i % len(self.pairs)]
        cond, target = self.cond_range.read(c), self.data_range.read(t)  # (C_cond, h, w), (C, H, W) in [0, 1]
        if cond.shape[-2:] != target.shape[-2:]:
            cond = F.interpolate(cond[None], size=target.shape[-2:], mode="bicubic", antialias=True)[0].clamp(0, 1)
        both = transform_tensor(torch.cat([cond, target]), self.image_size, self.crop, hflip=self.hflip,
                                vflip=self.vflip, rng=rng)
        return {"cond": both[:self.cond_channels], "image": both[self.cond_channels:]}


class TaskDataset(torch.utils.data.Dataset):
    """Wraps a data set of {"image": ...} and adds the condition of a task computed from that crop."""

    def __init__(self, base: torch.utils.data.Dataset, task: str, seed: Optional[int] = None):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
        self.base, self.task, self.seed = base, task, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        # with a seed, item i always gets the same mask (validation); a Key brings a stream for its mask; else fresh
        if self.seed is not None:
            rng = random.Random(self.seed * 1_000_003 + i)
        else:
            rng = random.Random(draw_seed(i.seed, 1)) if isinstance(i, Key) else random
        item["cond"] = make_condition(self.task, item["image"], rng)
        return item

