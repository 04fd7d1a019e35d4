"""Figures: image grids, PNG files, the denoising trajectory, the loss curve, schedules."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .data.tasks import grayscale


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
    else:  # other channel counts: show the first three
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


def translation_grid(cond: torch.Tensor, outputs: torch.Tensor, target: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
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


def plot_trajectory(states: Sequence[tuple[int, torch.Tensor]], path: str | Path, title: str = "") -> Path:
    """Rows: samples; columns: x_t at the recorded timesteps t (in [0, 1]), from noise to data."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols, n_rows = len(states), states[0][1].shape[0]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols, 1.3 * n_rows + 0.4), squeeze=False)
    for j, (t, x) in enumerate(states):
        for i in range(n_rows):
            img = x[i].detach().float().cpu().clamp(0, 1)
            ax = axes[i, j]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img[:3].permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t={t}", fontsize=8)
    fig.suptitle(title or "denoising trajectory: x_t from t = T (noise) to t = 0 (sample)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def read_metric(csv_path: str | Path, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric from a Lightning CSVLogger metrics.csv."""
    steps, values = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                steps.append(int(row["step"]))
                values.append(float(row[key]))
    return steps, values


def plot_loss(csv_path: str | Path, path: str | Path, key: str = "train/loss") -> Path:
    """The training loss against the step, raw and smoothed, on a log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = read_metric(csv_path, key)
    if not steps:
        raise ValueError(f"no {key!r} values in {csv_path}")
    v = np.asarray(values)
    k = max(1, len(v) // 20)
    smooth = np.convolve(v, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, v, alpha=0.3, label=key)
    ax.plot(steps[k - 1:], smooth, label=f"moving average ({k} logs)")
    ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
