"""Training figures: the denoising trajectory and the loss curve, as matplotlib Figures.

Every function returns a `matplotlib.figure.Figure` built without pyplot (so no global backend is
touched and nothing stays open), which a notebook draws inline; `path=` also writes it to a file."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure


def save_figure(fig: Figure, path: Optional[str | Path], dpi: int = 100) -> Figure:
    """Write fig to path (folders made) when a path is given; return fig either way."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


def show_image(ax, img: torch.Tensor, title: str = "") -> None:
    """Draw one (C, H, W) image in [0, 1] on ax, without ticks (gray for one channel, the first three otherwise)."""
    img = img.detach().float().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img[:3].permute(1, 2, 0).numpy())
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def plot_trajectory(states: Sequence[tuple[int, torch.Tensor]], path: Optional[str | Path] = None,
                    title: str = "") -> Figure:
    """Rows: samples; columns: x_t at the recorded timesteps t (in [0, 1]), from noise to data."""
    n_cols, n_rows = len(states), states[0][1].shape[0]
    fig = Figure(figsize=(1.3 * n_cols, 1.3 * n_rows + 0.4))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for j, (t, x) in enumerate(states):
        for i in range(n_rows):
            show_image(axes[i, j], x[i], f"t={t}" if i == 0 else "")
    fig.suptitle(title or "denoising trajectory: x_t from t = T (noise) to t = 0 (sample)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def read_metric(csv_path: str | Path, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric from a Lightning CSVLogger metrics.csv."""
    steps, values = [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                steps.append(int(row["step"]))
                values.append(float(row[key]))
    return steps, values


def plot_quality(csv_path: str | Path, path: Optional[str | Path] = None) -> Figure:
    """FID (left axis, log scale) and KID (right axis) against the step, as `eval.every_n_steps` logged them."""
    steps, fid = read_metric(csv_path, "eval/fid")
    if not steps:
        raise ValueError(f"no 'eval/fid' values in {csv_path}")
    kid_steps, kid = read_metric(csv_path, "eval/kid")
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(steps, fid, "o-", color="C0", label="FID")
    ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_ylabel("FID", color="C0"), ax.grid(alpha=0.3)
    if kid_steps:
        ax2 = ax.twinx()
        ax2.plot(kid_steps, kid, "s--", color="C1", label="KID")
        ax2.set_ylabel("KID", color="C1")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_loss(csv_path: str | Path, path: Optional[str | Path] = None, key: str = "train/loss") -> Figure:
    """The training loss against the step, raw and smoothed, on a log scale."""
    steps, values = read_metric(csv_path, key)
    if not steps:
        raise ValueError(f"no {key!r} values in {csv_path}")
    v = np.asarray(values)
    k = max(1, len(v) // 20)
    smooth = np.convolve(v, np.ones(k) / k, mode="valid")
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(steps, v, alpha=0.3, label=key)
    ax.plot(steps[k - 1:], smooth, label=f"moving average ({k} logs)")
    ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
