"""Images: grids, PNG files, conditions shown as images, animated GIFs."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.tasks import grayscale


def make_grid(images: torch.Tensor, nrow: Optional[int] = None, pad: int = 2, pad_value: float = 0.5) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> one (C, H', W') image with nrow images per row."""
    B, C, H, W = images.shape
    nrow = nrow or math.ceil(math.sqrt(B))
    ncol = math.ceil(B / nrow)
    grid = torch.full((C, ncol * (H + pad) + pad, nrow * (W + pad) + pad), pad_value, dtype=images.dtype)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = images[i]
    return grid


def to_pil(image: torch.Tensor, upscale: int = 1) -> Image.Image:
    """(C, H, W) in [0, 1] with C in {1, 3, 4} -> PIL image, optionally enlarged (nearest) for viewing."""
    a = (image.detach().float().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)  # (C, H, W)
    C = a.shape[0]
    if C == 1:
        im = Image.fromarray(a[0], "L")
    elif C in (3, 4):
        im = Image.fromarray(a.transpose(1, 2, 0), "RGB" if C == 3 else "RGBA")
    elif C == 2:  # two bands (SAR polarisations, two stains): the first, as grey
        im = Image.fromarray(a[0], "L")
    else:  # other channel counts: the first three (viz.images.preview picks and stretches bands)
        im = Image.fromarray(a[:3].transpose(1, 2, 0), "RGB")
    if upscale > 1:
        im = im.resize((im.width * upscale, im.height * upscale), Image.Resampling.NEAREST)
    return im


def viewing_scale(size: int, target: int = 64) -> int:
    """An integer zoom that shows small images (16x16 digits) at about `target` pixels."""
    return max(1, target // size)


def save_grid(images: torch.Tensor, path: str | Path, nrow: Optional[int] = None) -> Path:
    """Write a grid of (B, C, H, W) images in [0, 1] to a PNG, enlarged for small images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(make_grid(images.cpu(), nrow), viewing_scale(images.shape[-1])).save(path)
    return path


def parse_bands(text: Optional[str]) -> Optional[list[int]]:
    """'4,3,2' -> [4, 3, 2] (bands numbered from 1); None stays None."""
    if text is None:
        return None
    try:
        bands = [int(b) for b in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--preview-bands {text!r}: expected one or three band numbers such as 4,3,2") from None
    if len(bands) not in (1, 3):
        raise ValueError(f"--preview-bands {text!r}: expected one band (grey) or three (red, green, blue)")
    return bands


def preview(images: torch.Tensor, bands: Optional[Sequence[int]] = None, stretch: tuple[float, float] = (2, 98)
            ) -> torch.Tensor:
    """Images of any channel count (B, C, H, W) in [0, 1] as viewable (B, 1 or 3, H, W): `bands` (numbered from
    1; default: all of a 1-, 3- or 4-channel image, else the first three, or the first alone), each
    percentile-stretched over the batch (its 2nd to 98th percentile to [0, 1], as remote-sensing viewers show
    bands) unless the image is shown as it is (default bands of a 1-, 3- or 4-channel image)."""
    C = images.shape[1]
    if bands is None and C in (1, 3, 4):
        return images
    bands = list(bands) if bands is not None else [1, 2, 3] if C >= 3 else [1]
    bad = [b for b in bands if not 1 <= b <= C]
    if bad:
        raise ValueError(f"preview band {bad[0]}: the images have {C} band(s), numbered from 1")
    x = images[:, [b - 1 for b in bands]].float()  # (B, k, H, W)
    flat = x.transpose(0, 1).reshape(len(bands), -1)  # (k, B H W)
    lo = torch.quantile(flat, stretch[0] / 100, dim=1).view(1, -1, 1, 1)
    hi = torch.quantile(flat, stretch[1] / 100, dim=1).view(1, -1, 1, 1)
    return ((x - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)


def show_condition(cond: torch.Tensor, channels: int) -> torch.Tensor:
    """A condition (B, C_cond, H, W) as a viewable (B, channels, H, W) image: the masked image of an
    inpainting condition (mask channel dropped), grayscale repeated to colour, colour to luma."""
    if cond.shape[1] > channels:
        cond = cond[:, :channels]
    if cond.shape[1] == channels:
        return cond
    if cond.shape[1] == 1:
        return cond.repeat(1, channels, 1, 1)
    return grayscale(cond[:, :3]).repeat(1, channels, 1, 1)


def translation_grid(cond: torch.Tensor, outputs: torch.Tensor,
                     target: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
    """Rows of [condition | output_1 .. output_K | target]: (B, C_cond, H, W), (B * K, C, H, W),
    optional (B, C, H, W) -> (images, nrow) for save_grid."""
    B, C = cond.shape[0], outputs.shape[1]
    K = outputs.shape[0] // B
    rows = []
    for i in range(B):
        row = [show_condition(cond[i:i + 1].cpu(), C), outputs[i * K:(i + 1) * K].cpu()]
        if target is not None:
            row.append(target[i:i + 1].cpu())
        rows.append(torch.cat(row))
    return torch.cat(rows), 1 + K + (target is not None)


def save_images(images: torch.Tensor, out_dir: str | Path, names: Sequence[str]) -> list[Path]:
    """Write each image at its own resolution as out_dir/name.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, name in zip(images, names):
        p = out_dir / f"{name}.png"
        to_pil(img).save(p)
        paths.append(p)
    return paths


def save_gif(frames: Sequence[torch.Tensor], path: str | Path, *, nrow: Optional[int] = None,
             duration_ms: int = 80, hold_last_ms: int = 1000) -> Path:
    """An animated GIF of a sequence of (B, C, H, W) batches in [0, 1] (one grid per frame), looping,
    the last frame held a little longer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    up = viewing_scale(frames[0].shape[-1])
    images = [to_pil(make_grid(f.cpu(), nrow), up).convert("RGB") for f in frames]
    durations = [duration_ms] * (len(images) - 1) + [hold_last_ms]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path
