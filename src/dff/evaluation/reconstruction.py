"""How well an autoencoder reconstructs new data: "always test your autoencoder on new data"
(the original project's latent-diffusion notebook). A latent model cannot generate detail its
autoencoder loses, so this PSNR/SSIM bounds what the latent model can reach."""
from __future__ import annotations

from typing import Optional

import torch

from ..models.autoencoders import to_image_space, to_model_space
from .psnr_ssim import psnr, ssim


def reconstruction_images(data: str, channels: int, size: int) -> torch.Tensor:
    """Images (N, C, size, size) in [0, 1]: the held-out patches of a built-in source ('textures',
    'photos') or the images of a folder (shorter side resized to size, centre crop)."""
    from ..data.builtin import PhotoPatches
    from .fid import load_image_folder

    if data in ("textures", "photos"):
        ds = PhotoPatches("val", size, channels, source=data)
        return torch.stack([ds[i]["image"] for i in range(len(ds))])
    return load_image_folder(data, channels, size)


@torch.no_grad()
def evaluate_autoencoder(ae, images: torch.Tensor, batch_size: int = 16, device: Optional[str] = None) -> dict:
    """Mean PSNR (dB) and SSIM of D(E(x)) against x over `images` (N, C, H, W) in [0, 1]."""
    ae.check_input(images, "evaluation images")
    device = device or next(ae.parameters()).device
    totals = {"psnr": 0.0, "ssim": 0.0}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        x_hat = to_image_space(ae.decode(ae.encode(to_model_space(x))))
        totals["psnr"] += float(psnr(x_hat, x)) * len(x)  # psnr/ssim are batch means
        totals["ssim"] += float(ssim(x_hat, x)) * len(x)
    return {k: v / len(images) for k, v in totals.items()} | {"n": len(images)}
