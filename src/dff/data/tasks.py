"""Image-to-image tasks made from single images: the condition is computed from the target crop.

    sr2, sr4    super-resolution x2 / x4: the condition is the image downscaled by the factor
                (bicubic, antialiased) and upscaled back to the training size (bicubic), so that
                condition and output share one grid and can be concatenated along channels;
    colorize    grayscale (ITU-R BT.601 luma) -> colour;
    inpaint     the image with a random rectangle blanked out, plus the mask as an extra channel
                (1 = missing) -> the full image.

All functions take and return float tensors in [0, 1]: (C, H, W) or (B, C, H, W).
"""
from __future__ import annotations

import random
from typing import Optional

import torch
import torch.nn.functional as F

TASKS: tuple[str, ...] = ("sr2", "sr4", "colorize", "inpaint")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def _batched(fn):
    """Let a (B, C, H, W) function also take (C, H, W)."""
    def wrapper(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return fn(x[None], *args, **kwargs)[0] if x.dim() == 3 else fn(x, *args, **kwargs)
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def sr_factor(task: str) -> int:
    """2 for sr2, 4 for sr4."""
    return int(task[2:])


@_batched
def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic antialiased downscaling by an integer factor: (B, C, H, W) -> (B, C, H/f, W/f)."""
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the downscaling factor {factor}")
    return F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


@_batched
def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Plain bicubic upscaling by an integer factor (the baseline every SR model must beat)."""
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 1)


@_batched
def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma; a 1-channel input is returned unchanged."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x[:, :3] * w).sum(1, keepdim=True)


def random_box_mask(size: int, rng: random.Random, min_frac: float = 0.25, max_frac: float = 0.5) -> torch.Tensor:
    """(1, size, size) mask, 1 inside a random rectangle whose sides are min_frac..max_frac of size."""
    h, w = (max(1, round(size * rng.uniform(min_frac, max_frac))) for _ in range(2))
    top, left = rng.randint(0, size - h), rng.randint(0, size - w)
    m = torch.zeros(1, size, size)
    m[:, top:top + h, left:left + w] = 1
    return m


def inpaint_condition(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[x * (1 - mask), mask] along channels: (C, H, W), (1, H, W) -> (C + 1, H, W); for a batch
    (B, C, H, W) the mask is (B, 1, H, W) or one (1, H, W) mask shared by the batch."""
    if x.dim() == 4 and mask.dim() == 3:
        mask = mask.unsqueeze(0).expand(x.shape[0], -1, -1, -1)  # (B, 1, H, W)
    return torch.cat([x * (1 - mask), mask], dim=-3)


def cond_channels(task: str, channels: int) -> int:
    """Channels of the condition a task makes from a `channels`-channel image."""
    if task in ("sr2", "sr4"):
        return channels
    if task == "colorize":
        return 1
    if task == "inpaint":
        return channels + 1
    raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")


def make_condition(task: str, x: torch.Tensor, rng: Optional[random.Random] = None,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The condition of `task` for target image(s) x in [0, 1]."""
    if task in ("sr2", "sr4"):
        f = sr_factor(task)
        return upsample(downsample(x, f), f)
    if task == "colorize":
        return grayscale(x)
    if task == "inpaint":
        if mask is None:
            mask = random_box_mask(x.shape[-1], rng or random.Random())
        return inpaint_condition(x, mask)
    raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")


def condition_from_input(task: str, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The condition for a user's input at translation time (no ground truth): sr upsamples the
    low-resolution input by the factor, colorize takes its luma, inpaint needs the mask."""
    if task in ("sr2", "sr4"):
        return upsample(x, sr_factor(task))
    if task == "colorize":
        return grayscale(x)
    if task == "inpaint":
        if mask is None:
            raise ValueError("an inpainting model needs a mask (white = region to fill): pass --mask FILE")
        return inpaint_condition(x, mask)
    raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
