"""Training your own AutoencoderKL (diffusers' architecture) on your data, with any channel count.

    dff fit --config configs/autoencoder_demo.yaml      ->  <run>/export/autoencoder (diffusers' format)

The loss of latent-diffusion's first stage (Rombach et al. 2022, appendix G; Esser et al. 2021),
without the perceptual (LPIPS) term, whose ImageNet VGG weights would need a download and are
meaningless for 1-channel or multispectral data:

    L = sum_pixels |x - x_hat| (or squared)  +  kl_weight * KL(q(z|x) || N(0, I))   [per image, batch mean]
        + lambda * disc_weight * L_G(x_hat)           after disc_start steps (optional)

with a PatchGAN discriminator D (Isola et al. 2017) trained by the hinge loss
L_D = E[relu(1 - D(x))] + E[relu(1 + D(x_hat))], L_G = -E[D(x_hat)], and the adaptive weight
lambda = |grad_last L_rec| / (|grad_last L_G| + 1e-4) at the decoder's last layer (Esser et al.
2021, eq. 7). Generator and discriminator take their step together from one optimiser: each loss
reaches only its own parameters (D is frozen in L_G; x_hat is detached in L_D).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..models.autoencoders import (EXPORT_SUBDIR, KLAutoencoder, build_autoencoder_kl, config_factor, patchify,
                           to_image_space, to_model_space, unpatchify)
from ..evaluation.psnr_ssim import psnr, ssim
from .optim import check_decay, refresh_rate, run_schedule
from ..files import atomic_folder


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per overlapping patch, (B, C, H, W) -> (B, 1, H/2^n - 2, ...)."""

    def __init__(self, channels: int = 3, dim: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, dim, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = dim
        for i in range(1, num_layers + 1):
            c_out = dim * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), nn.GroupNorm(min(32, c_out // 4), c_out),
                       nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AutoencoderModule(L.LightningModule):
    """A diffusers AutoencoderKL trained by reconstruction + KL (+ an optional PatchGAN)."""

    def __init__(
        self,
        image_size: int = 128,  # side of the training images (set from the data in `dff fit`)
        channels: int = 3,  # image channels: any number (set from the data in `dff fit`)
        latent_channels: int = 4,  # c, channels of the latent
        block_out_channels: Sequence[int] = (64, 128, 256),  # widths; down-sampling factor
                                                             # f = patch_size 2^(levels - 1)
        layers_per_block: int = 1,  # ResNet blocks per level
        norm_num_groups: int = 32,  # GroupNorm groups (must divide every width)
        mid_attention: bool = True,  # self-attention in the middle blocks (SD's VAE has it; costly on CPU)
        patch_size: int = 1,  # p: fold p x p pixels into channels first, so no layer runs at full size;
                              # f = p 2^(levels - 1)
        reconstruction: Literal["l1", "l2"] = "l1",  # pixel loss
        kl_weight: float = 1e-6,  # weight of the KL term (latent-diffusion's KL-f8: 1e-6)
        discriminator: bool = False,  # add the PatchGAN loss after disc_start steps
        disc_start: int = 5000,  # optimiser steps before the discriminator starts
        disc_weight: float = 0.5,  # weight of the adversarial term (times the adaptive lambda)
        disc_dim: int = 64,  # discriminator base width
        disc_layers: int = 3,  # discriminator depth
        lr: float = 1e-4,  # Adam learning rate (generator and discriminator)
        lr_decay: str = "none",  # none | linear | cosine: decay to 0 at trainer.max_steps (or trainer.max_time)
                                 # (dff.training.optim.lr_factor)
    ):
        super().__init__()
        check_decay(lr_decay)
        self.save_hyperparameters()
        self.vae = build_autoencoder_kl(channels=channels, latent_channels=latent_channels,
                                        block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                                        norm_num_groups=norm_num_groups, image_size=image_size,
                                        mid_attention=mid_attention, patch_size=patch_size)
        self.factor = config_factor(self.vae.config)
        if image_size % self.factor:
            raise ValueError(f"image_size {image_size} must be a multiple of the autoencoder's down-sampling factor "
                             f"{self.factor} (patch_size * 2^(len(block_out_channels) - 1))")
        self.disc = PatchDiscriminator(channels, disc_dim, disc_layers) if discriminator else None

    def posterior(self, x: torch.Tensor):
        """q(z|x) of images x (B, C, H, W) in [-1, 1] (patched first when patch_size > 1)."""
        return self.vae.encode(patchify(x, self.hparams.patch_size)).latent_dist

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, c, H/f, W/f) -> images (B, C, H, W) in model space."""
        return unpatchify(self.vae.decode(z).sample, self.hparams.patch_size)

    # ------------------------------------------------------------------ losses
    def reconstruction_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """sum over pixels of |x - x_hat| (or its square), mean over the batch."""
        d = (x - x_hat).abs() if self.hparams.reconstruction == "l1" else (x - x_hat) ** 2
        return d.flatten(1).sum(1).mean()

    def adaptive_weight(self, rec: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """lambda = |grad rec| / (|grad L_G| + 1e-4) at the decoder's last conv (Esser et al. 2021, eq. 7)."""
        last = self.vae.decoder.conv_out.weight
        g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(g, last, retain_graph=True)[0]
        return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        x = to_model_space(batch["image"])  # (B, C, H, W) in [-1, 1]
        self.check_channels(x)
        posterior = self.posterior(x)
        x_hat = self.decode(posterior.sample())  # reparameterised draw z ~ q(z|x)
        rec = self.reconstruction_loss(x, x_hat)
        kl = posterior.kl().mean()  # KL summed over latent elements, mean over the batch
        loss = rec + h.kl_weight * kl
        if self.disc is not None and self.global_step >= h.disc_start:
            self.disc.requires_grad_(False)
            g = -self.disc(x_hat).mean()
            self.disc.requires_grad_(True)
            lam = self.adaptive_weight(rec, g)
            d = F.relu(1 - self.disc(x)).mean() + F.relu(1 + self.disc(x_hat.detach())).mean()
            loss = loss + h.disc_weight * lam * g + d
            self.log_dict({"train/g_loss": g, "train/d_loss": d, "train/lambda": lam}, batch_size=x.shape[0])
        self.log_dict({"train/loss": loss, "train/rec": rec / x[0].numel(), "train/kl": kl}, prog_bar=True,
                      batch_size=x.shape[0])
        return loss

    def check_channels(self, x: torch.Tensor) -> None:
        if x.shape[1] != self.hparams.channels:
            raise ValueError(f"images with {x.shape[1]} channels, but the autoencoder was built for "
                             f"model.channels={self.hparams.channels}")

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] through the encoder's mean and the decoder, back in [0, 1]."""
        x = to_model_space(images.to(self.device))
        return to_image_space(self.decode(self.posterior(x).mean))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["image"]
        x_hat = self.reconstruct(x)
        self.log_dict({"val/psnr": psnr(x_hat, x).mean(), "val/ssim": ssim(x_hat, x).mean()},
                      batch_size=x.shape[0], sync_dist=True)

    def on_train_start(self) -> None:
        """A time budget's rate from the time spent so far (a resumed run's budget may differ from its checkpoint's)."""
        if self._trainer is not None:
            refresh_rate(self.lr_schedulers())

    def configure_optimizers(self):
        params = list(self.vae.parameters()) + (list(self.disc.parameters()) if self.disc is not None else [])
        opt = torch.optim.Adam(params, lr=self.hparams.lr, betas=(0.5, 0.9))  # latent-diffusion's betas
        decay = self.hparams.lr_decay
        return run_schedule(self.trainer if decay != "none" else None, opt, 0, decay)  # a decay needs the Trainer

    # ------------------------------------------------------------------ export
    def export(self, out_dir: Path) -> Path:
        """The autoencoder in diffusers' format at out_dir/autoencoder (loadable by
        AutoencoderKL.from_pretrained and by model.autoencoder of a latent model)."""
        folder = Path(out_dir) / EXPORT_SUBDIR
        with atomic_folder(folder) as tmp:
            KLAutoencoder(self.vae).save_pretrained(tmp)
        return folder

    def export_reconstructions(self, images: torch.Tensor, path: Path) -> Optional[Path]:
        """A grid: originals in the top rows, reconstructions below."""
        from ..viz import save_grid

        x = images[:8]
        was = self.training
        self.eval()
        x_hat = self.reconstruct(x).cpu()
        self.train(was)
        return save_grid(torch.cat([x, x_hat]), path, nrow=len(x))
