"""Paired image metrics (torchmetrics): PSNR and SSIM of translations against their targets.

PSNR is computed per image and averaged (not the PSNR of the batch's mean squared error), on
[0, 1] images (data_range 1). SSIM uses the standard 11x11 Gaussian window, sigma 1.5
(Wang et al. 2004). For super-resolution, `consistency_psnr` compares the output downscaled by
the factor with the low-resolution input: a faithful super-resolution reproduces its input.
"""
from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..data.tasks import downsample, sr_factor


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of per-image PSNR in dB; x, y (B, C, H, W) in [0, 1]."""
    return peak_signal_noise_ratio(x.float(), y.float(), data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over the batch; x, y (B, C, H, W) in [0, 1]. Images under 11 pixels use a smaller window."""
    k = min(11, x.shape[-1] - (1 - x.shape[-1] % 2), x.shape[-2] - (1 - x.shape[-2] % 2))
    return structural_similarity_index_measure(x.float(), y.float(), data_range=1.0, kernel_size=k)


def translation_scores(out: torch.Tensor, target: torch.Tensor, cond: torch.Tensor, *,
                       condition: str, per_band: bool = False) -> dict[str, torch.Tensor]:
    """psnr and ssim of the outputs against the targets; for sr2/sr4 also the bicubic baseline
    (the condition itself) and the consistency of the downscaled outputs with the input. per_band: also
    psnr_band_k and ssim_band_k for each band k = 1..C (array data: values in [0, 1] by the data's range, so the
    peak signal is hi - lo of each band)."""
    out, target = out.to(target.device), target
    scores = {"psnr": psnr(out, target), "ssim": ssim(out, target)}
    if per_band:
        for b in range(out.shape[1]):
            scores[f"psnr_band_{b + 1}"] = psnr(out[:, b:b + 1], target[:, b:b + 1])
            scores[f"ssim_band_{b + 1}"] = ssim(out[:, b:b + 1], target[:, b:b + 1])
    if condition in ("sr2", "sr4"):
        f = sr_factor(condition)
        scores["psnr_bicubic"] = psnr(cond, target)
        scores["ssim_bicubic"] = ssim(cond, target)
        scores["consistency_psnr"] = psnr(downsample(out, f), downsample(target, f))
    return scores
