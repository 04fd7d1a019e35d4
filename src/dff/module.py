"""The LightningModule: the latent space, a network, the diffusion process, EMA and the optimiser, composed.

`DiffusionModule` is the one core; `PixelDiffusion`, `PixelDiffusionConditional`,
`LatentDiffusion` and `LatentDiffusionConditional` are presets of it. Images enter and leave as
(B, C, H, W) floats in [0, 1]; the network works on z_0 = s * E(2x - 1), where E is the
autoencoder (the identity in pixel space) and s the latent scale (1 in pixel space): latent.py.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import lightning as L
import torch

from .autoencoders import is_pixel_space
from .data import ImageDataModule
from .data.latents import sample_latents
from .data.stream import draw_seed
from .diffusion import GaussianDiffusion, get_sampler
from .diffusion.guidance import DEFAULT_INTERVAL, ClassifierFreeGuidance, guidance_interval as interval_table
from .diffusion.samplers import check_steps, randn
from .ema import EMA, SIGMA_REL_MAX
from .latent import LatentSpace
from .metrics import translation_scores
from .nn import BACKBONES
from .optim import batch_scaled, check_decay, decay_length, scheduled


def _rename_old_keys(state_dict, prefix, *args) -> None:
    """Load pre-hook: checkpoints of dff 0.1 kept the latent scale at `scale`; it is `latent.scale` now."""
    if prefix + "scale" in state_dict:
        state_dict[prefix + "latent.scale"] = state_dict.pop(prefix + "scale")


class DiffusionModule(L.LightningModule):
    """Diffusion model on images: training by L_simple, EMA weights, sampling with any sampler.

    Composed of: `latent` (LatentSpace: autoencoder and latent scale; the identity in pixel space),
    `net` (the U-Net), `ema` (its EMA copy) and `diffusion` (GaussianDiffusion: schedule, loss)."""

    def __init__(
        self,
        # ---- data (set from data: by `dff fit`)
        image_size: int = 64,  # side of the square images
        channels: int = 3,  # image channels
        # ---- network
        backbone: str = "adm",  # adm (residual U-Net of DDPM / ADM; measured best) | convnext (the original project's U-Net)
        dim: int = 64,  # U-Net base width
        dim_mults: Sequence[int] = (1, 2, 4, 8),  # U-Net width multipliers, one per level
        attention: bool = True,  # convnext: linear attention per level, full in the middle; adm: full at the lowest level and middle
        num_res_blocks: int = 2,  # adm: ResBlocks per level on the way down (one more on the way up); convnext: always 2
        # ---- diffusion process and loss
        timesteps: int = 1000,  # T
        schedule: str = "linear",  # beta schedule: linear | quadratic | sigmoid | cosine
        zero_terminal_snr: bool = False,  # rescale the schedule to alpha_bar_T = 0 (needs v or x0)
        prediction: str = "eps",  # network target: eps | x0 | v
        loss_weighting: str = "none",  # none (L_simple) | min_snr (min-SNR-gamma, Hang et al. 2023)
        min_snr_gamma: float = 5.0,  # gamma of min-SNR weighting
        offset_noise: float = 0.0,  # offset-noise strength (0: off)
        # ---- optimisation
        lr: float = 1e-4,  # AdamW learning rate
        weight_decay: float = 0.0,  # AdamW weight decay
        warmup_steps: int = 0,  # linear learning-rate warm-up
        lr_decay: str = "none",  # none | linear | cosine: decay to 0 at trainer.max_steps (lr_factor)
        batch_reference: Optional[int] = None,  # the batch lr, warmup_steps and ema_decay are tuned for: at another global batch they are rescaled (batch_scaled); None: used as given
        nonfinite_patience: int = 10,  # skip steps with non-finite gradients (on the device) and stop after this many in a row (0: off)
        # ---- EMA
        ema_decay: float = 0.9999,  # EMA decay (reached after the warm-up)
        ema_warmup: bool = True,  # EMA decay warm-up min(decay, (1 + n) / (10 + n))
        ema_sigma_rel: Optional[float] = None,  # instead: EDM2's power-function EMA of this length relative to the run (ema.py)
        # ---- sampling and validation
        clip_x0: bool = True,  # clip predicted x0 to [-1, 1] while sampling (pixel space)
        val_steps: int = 20,  # DDIM steps of the translations scored in validation (paired data)
        # ---- conditioning: image-to-image (set from data: by `dff fit`) and classes
        cond_channels: int = 0,  # channels of a condition image concatenated to x_t (0: unconditional)
        condition: str = "none",  # none | image (given) | sr2 | sr4 | colorize | inpaint (made from an input)
        residual: bool = False,  # diffuse the residual x0 - cond (SRDiff, Li et al. 2022); cond has the output's channels
        residual_scale: float = 1.0,  # multiply the residual by this (~ 1 / its std) so the diffused data has unit scale
        num_classes: int = 0,  # class-conditional with classifier-free guidance: labels 0..num_classes-1 (0: off)
        label_dropout: float = 0.2,  # share of training labels replaced by "no label" (Ho & Salimans 2022;
                                     # 0.2 trains the unconditional branch better than 0.1: docs/benchmarks.md)
        # ---- latent space (latent.py)
        autoencoder: Optional[str] = None,  # latent diffusion: AutoencoderKL folder, dff autoencoder run or hub id (None: pixel space)
        latent_scale: Optional[float] = None,  # s in z_0 = s * E(x); None: 1 / std of the training latents, estimated at the start of fit
        latent_condition: str = "encode",  # latent conditional models: encode (by the autoencoder) | resize (to the latent size)
        latent_scale_samples: int = 512,  # training images encoded to estimate the latent scale
    ):
        super().__init__()
        if (cond_channels > 0) != (condition != "none"):
            raise ValueError(f"cond_channels={cond_channels} and condition={condition!r} disagree: a conditional "
                             "model needs both (cond_channels > 0 and condition != 'none'), an unconditional neither")
        if residual and cond_channels != channels:
            raise ValueError(f"residual=True diffuses x0 - cond, so the condition needs the output's {channels} "
                             f"channels, got cond_channels={cond_channels}")
        check_steps(timesteps, val_steps, "model.val_steps (DDIM)")
        check_decay(lr_decay)
        self.save_hyperparameters()
        # 1. the latent space: z_0 = s * E(2x - 1) (the identity in pixel space)
        self.latent = LatentSpace(autoencoder, channels, scale=latent_scale, condition=latent_condition)
        latent = self.latent.is_latent
        if latent and residual:
            raise ValueError("residual=True is for pixel space; a latent model (model.autoencoder set) cannot use it")
        if latent and cond_channels and latent_condition == "encode" and cond_channels != channels:
            raise ValueError(f"latent_condition='encode' passes the condition through the autoencoder, which takes "
                             f"{channels}-channel images, but cond_channels={cond_channels}: use latent_condition='resize'")
        self._register_load_state_dict_pre_hook(_rename_old_keys)
        # 2. the network, on z_t (and the condition code) in the latent space
        net_cond = self.latent.channels if latent and cond_channels and latent_condition == "encode" else cond_channels
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
        if num_res_blocks < 1 or (backbone != "adm" and num_res_blocks != 2):
            raise ValueError(f"model.num_res_blocks={num_res_blocks}: expected at least 1 block per level, and 2 for "
                             f"the {backbone} backbone (its depth is fixed; num_res_blocks is for backbone: adm)")
        depth = {"num_res_blocks": num_res_blocks} if backbone == "adm" else {}
        self.net = BACKBONES[backbone](in_channels=self.latent.channels, out_channels=self.latent.channels,
                                       cond_channels=net_cond, dim=dim, dim_mults=dim_mults, attention=attention,
                                       num_classes=num_classes, **depth)
        if image_size % self.size_factor:
            raise ValueError(
                f"image_size {image_size} cannot be divided down by the U-Net: with dim_mults={tuple(dim_mults)}"
                + (f" and the autoencoder's factor {self.latent.factor}" if latent else "")
                + f" it must be a multiple of {self.size_factor}"
            )
        # 3. its EMA copy, and the diffusion process
        if ema_sigma_rel is not None and not 0.0 < ema_sigma_rel < SIGMA_REL_MAX:
            raise ValueError(f"model.ema_sigma_rel={ema_sigma_rel}: expected 0 < sigma_rel < {SIGMA_REL_MAX:.4f} "
                             "(EDM2 uses 0.05-0.15), or null for the decay with warm-up")
        self.ema = EMA(self.net, ema_decay, ema_warmup, ema_sigma_rel)
        self.diffusion = GaussianDiffusion(timesteps=timesteps, schedule=schedule, prediction=prediction,
                                           zero_terminal_snr=zero_terminal_snr, loss_weighting=loss_weighting,
                                           min_snr_gamma=min_snr_gamma, offset_noise=offset_noise)

    memory_format = torch.contiguous_format  # torch.channels_last after use_channels_last()

    @property
    def is_latent(self) -> bool:
        return self.latent.is_latent

    # ------------------------------------------------------------------ speed options (speed.py)
    def use_channels_last(self) -> None:
        """NHWC weights for the network and its EMA copy, and NHWC inputs in training and sampling."""
        self.memory_format = torch.channels_last
        self.net.to(memory_format=torch.channels_last)
        self.ema.to(memory_format=torch.channels_last)

    def compile_net(self, backend: str = "inductor", mode: Optional[str] = None) -> None:
        """torch.compile the training network in place (nn.Module.compile): its parameters and their names in
        checkpoints and exports stay those of the plain module, and the EMA copy (made at construction) and
        sampling stay uncompiled. Shapes are static: the training loader drops the short last batch."""
        self.net.compile(backend=backend, mode=mode, dynamic=False)

    def plain(self) -> None:
        """Undo use_channels_last, compile_net and activation checkpointing (Speed does, at the end of fit)."""
        self.net.checkpointing = False
        self.memory_format = torch.contiguous_format
        self.net.to(memory_format=torch.contiguous_format)
        self.ema.to(memory_format=torch.contiguous_format)
        self.net._compiled_call_impl = None  # nn.Module.compile's handle: the eager forward again

    @property
    def size_factor(self) -> int:
        """Image sides must be multiples of this: the autoencoder's factor times the U-Net's."""
        return self.latent.factor * self.net.size_factor

    def latent_cache_meta(self) -> dict:
        """What a latent cache made for this model depends on (data/latents.py checks it before reuse)."""
        h = self.hparams
        return {"autoencoder": str(h.autoencoder), "autoencoder_weights": self.latent.autoencoder.fingerprint(),
                "image_size": int(h.image_size), "channels": int(h.channels), "condition": str(h.condition),
                "latent_condition": str(h.latent_condition)}

    def on_fit_start(self) -> None:
        """Latent models: cache the training latents if the data asks for it, and estimate the
        latent scale from the training data when it is not set (rank 0's estimate is shared)."""
        self.run_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))  # seed_everything's, if given
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(dm, ImageDataModule) and dm.hparams.latent_cache:
            if not self.is_latent:
                raise ValueError("data.latent_cache is for latent models: set model.autoencoder, or remove data.latent_cache")
            dm.use_latent_cache(self.latent.encode_unscaled, self.latent.condition_code, self.latent_cache_meta())
        if self.is_latent and torch.isnan(self.latent.scale):
            z = sample_latents(self.latent.encode_unscaled, dm.train_set if dm is not None else None,
                               self.hparams.latent_scale_samples)
            s = self.trainer.strategy.broadcast(self.latent.estimate_scale(z), 0)
            self.latent.scale.fill_(s)
            print(f"latent scale s = 1 / std of {len(z)} training latents = {s:.4f}")
        self.latent.s()  # checked once here, so the training step need not read it back from the device
        labels = getattr(getattr(dm, "train_set", None), "labels", None)  # the built-in digits, folders with labels
        if self.hparams.num_classes and labels is not None and len(labels):
            top = int(max(labels))
            if top >= self.hparams.num_classes:
                raise ValueError(f"label {top} in the data, but model.num_classes={self.hparams.num_classes}: "
                                 "set model.num_classes to the number of classes")

    # ------------------------------------------------------------------ forward
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The training network's prediction for x_t at timesteps t (B,)."""
        return self.net(x_t, t, cond)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "latent" in batch:  # cached latents (data.latent_cache)
            x0 = batch["latent"] * self.latent.s(check=False)  # (B, c, h, w)
        else:
            x0 = self.latent.encode(batch["image"], check=False)  # (B, c, H/f, W/f); pixel space: (B, C, H, W) in [-1, 1]
        cond = None
        if "cond_code" in batch:
            cond = self.latent.scale_condition(batch["cond_code"], check=False)
        elif "cond" in batch:
            cond = self.latent.scale_condition(self.latent.condition_code(batch["cond"]), check=False)
        if self.hparams.residual:
            x0 = (x0 - cond) * self.hparams.residual_scale  # the diffused data is what the condition misses
        if self.memory_format is not torch.contiguous_format:  # x_t and the noise inherit NHWC from x0
            x0 = x0.contiguous(memory_format=self.memory_format)
            cond = None if cond is None else cond.contiguous(memory_format=self.memory_format)
        net = self.net
        if self.hparams.num_classes:
            y = self.training_labels(batch)
            net = lambda x_t, t, c=None: self.net(x_t, t, c, y)  # noqa: E731
        loss = self.diffusion.loss(net, x0, cond)
        self.log_loss(loss.detach(), x0.shape[0])
        return loss

    def log_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """Sum the loss on the device and log its mean every log_every_n_steps steps: reading a value back
        (as the progress bar does for every logged value) waits for the GPU, so it happens once per interval."""
        self.loss_sum = loss if getattr(self, "loss_sum", None) is None else self.loss_sum + loss
        self.loss_count = getattr(self, "loss_count", 0) + 1
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        if (self.global_step + 1) % max(every, 1) == 0:  # logged as a host tensor: the progress bar reads it for free
            self.log("train/loss", (self.loss_sum / self.loss_count).cpu(), prog_bar=True, on_step=True, on_epoch=False,
                     batch_size=batch_size)
            self.loss_sum, self.loss_count = None, 0

    def training_labels(self, batch: dict) -> torch.Tensor:
        """The batch's labels (B,), a random label_dropout share replaced by the null label."""
        h = self.hparams
        if "label" not in batch:
            raise ValueError(f"model.num_classes={h.num_classes} needs labelled data: data.labels=true for a folder "
                             "(labels from sub-folder names) or the digits")
        y = batch["label"].long()
        drop = torch.rand(y.shape, device=y.device) < h.label_dropout
        return torch.where(drop, torch.full_like(y, h.num_classes), y)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """Seed the step's random draws (t, noise, label dropout) from (run seed, epoch, batch, rank): a run
        resumed from a checkpoint draws what an uninterrupted run draws, and sample grids or validations in
        between change nothing. Data sets without a `labels` list (checked at the start of fit): the first
        batch's labels are checked here, once, not in the step (the check reads the device)."""
        torch.manual_seed(draw_seed(getattr(self, "run_seed", 0), self.current_epoch, batch_idx, self.global_rank))
        h = self.hparams
        if h.num_classes and "label" in batch and not getattr(self, "labels_checked", False):
            y = batch["label"]
            if y.min() < 0 or y.max() >= h.num_classes:
                raise ValueError(f"label {int(y.max())} in the data, but model.num_classes={h.num_classes}: "
                                 f"set model.num_classes to the number of classes")
            self.labels_checked = True

    def class_labels(self, labels, num: int) -> torch.Tensor:
        """Labels (num,) on the model's device from an int or a sequence; errors for unknown classes."""
        h = self.hparams
        if not h.num_classes:
            raise ValueError("this model was trained without class labels (num_classes=0): sample without a class")
        y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        y = y.expand(num) if y.numel() == 1 else y
        if y.numel() != num:
            raise ValueError(f"got {y.numel()} labels for {num} samples")
        bad = [int(c) for c in y.unique() if c < 0 or c >= h.num_classes]
        if bad:
            raise ValueError(f"class {bad[0]} unknown: this model was trained with classes 0..{h.num_classes - 1}")
        return y.to(self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Translate the validation conditions (EMA weights, DDIM val_steps) and score them against
        the targets: PSNR and SSIM; for super-resolution also the consistency with the input."""
        if "cond" not in batch:
            return
        out = self.sample(cond=batch["cond"], sampler="ddim", steps=self.hparams.val_steps, seed=batch_idx,
                          progress=False)
        with torch.autocast(self.device.type, enabled=False):  # scores (and the bicubic baseline) in float32
            scores = translation_scores(out.float(), batch["image"].float(), batch["cond"].float(),
                                        condition=self.hparams.condition)
        for k, v in scores.items():
            self.log(f"val/{k}", v, batch_size=out.shape[0], sync_dist=True)

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Update the EMA once per optimiser step (after the step, before the gradients are cleared)."""
        self.ema.update(self.net)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the class so that a checkpoint can be rebuilt without unpickling code, and the running sums a
        resumed run continues from (the loss of the open log interval, the non-finite step counts)."""
        checkpoint["dff_model_class"] = type(self).__name__
        checkpoint["dff_counters"] = {k: getattr(self, k) for k in self.COUNTERS if getattr(self, k, None) is not None}
        checkpoint["dff_lr_decay_total"] = self.trainer.max_steps if self.hparams.lr_decay != "none" else 0

    COUNTERS = ("loss_sum", "loss_count", "nonfinite_run", "nonfinite_total")

    resumed_decay_total: Optional[int] = None  # the step the resumed checkpoint's run decayed to 0 at (0: no decay)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for k, v in checkpoint.get("dff_counters", {}).items():
            setattr(self, k, v.to(self.device) if isinstance(v, torch.Tensor) else v)
        self.resumed_decay_total = checkpoint.get("dff_lr_decay_total")

    # ------------------------------------------------------------------ non-finite steps
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """With nonfinite_patience > 0: a step whose gradients hold inf or NaN is skipped on the device, without
        waiting for it: fused AdamW reads `found_inf` and leaves weights, moments and step count alone when it
        is 1 (the mechanism of torch's GradScaler). The counts are read every log interval (check_nonfinite)."""
        if not self.hparams.nonfinite_patience:
            return
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        found = (~torch.stack(torch._foreach_norm(grads)).isfinite().all()).float()  # () on the device: 1 = skip
        optimizer.found_inf = found
        if not hasattr(self, "nonfinite_run"):
            self.nonfinite_run, self.nonfinite_total = torch.zeros_like(found), torch.zeros_like(found)
        self.nonfinite_run = (self.nonfinite_run + found) * found  # steps in a row; 0 after a good one
        self.nonfinite_total = self.nonfinite_total + found

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.hparams.nonfinite_patience and hasattr(self, "nonfinite_run") and \
                self.global_step % self.trainer.log_every_n_steps == 0:
            self.check_nonfinite()

    def check_nonfinite(self) -> None:
        """Read the device's counts (one sync per log interval): log the skipped steps, stop after too many in a row."""
        run, total = int(self.nonfinite_run), int(self.nonfinite_total)
        if total:
            self.log("train/nonfinite_steps", float(total), on_step=True, on_epoch=False)
        if run >= self.hparams.nonfinite_patience:
            raise ValueError(
                f"{run} optimiser steps in a row had non-finite gradients (inf or NaN; skipped, {total} in all) up to "
                f"step {self.global_step}: the loss diverged. The weights and checkpoints are those of the last good "
                "step: lower model.lr or add model.warmup_steps, check the data (dff data check), then resume "
                "with --ckpt_path last")

    def global_batch(self) -> int:
        """Images per optimiser step: data.batch_size x processes x gradient accumulation."""
        t = self.trainer
        batch = getattr(getattr(t, "datamodule", None), "hparams", {}).get("batch_size")
        if batch is None:
            raise ValueError("model.batch_reference needs the batch size: train with an ImageDataModule (data: in the config)")
        return int(batch) * t.world_size * t.accumulate_grad_batches

    def configure_optimizers(self):
        h = self.hparams
        lr, warmup = h.lr, h.warmup_steps
        if h.batch_reference:
            B = self.global_batch()
            lr, warmup, self.ema.decay = batch_scaled(h.lr, h.warmup_steps, h.ema_decay, B, h.batch_reference)
            if self.trainer.is_global_zero:
                print(f"batch {B} (recipe tuned at {h.batch_reference}): lr {lr:.3g}, warm-up {warmup} steps, "
                      f"EMA decay {self.ema.decay:.6g}")
        # fused AdamW can skip a step on the device (on_before_optimizer_step); without the guard, the plain one
        opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=h.weight_decay,
                                fused=True if h.nonfinite_patience else None)
        total = decay_length(h.lr_decay, self.trainer.max_steps)
        if total:
            resumed = self.resumed_decay_total
            if resumed and resumed != total and self.trainer.is_global_zero:  # a resume with another max_steps
                print(f"dff: model.lr_decay={h.lr_decay}: the checkpoint's run decayed to 0 at step {resumed}, this one "
                      f"at trainer.max_steps={total}: the learning rate from the resumed step on follows the new length")
        return scheduled(opt, warmup, total, h.lr_decay)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        num: int = 16,  # number of images (unconditional models)
        sampler: str = "ddim",  # ddpm | ddim | dpmpp_2m | dpmpp_2m_sde | euler | heun
        *,
        steps: Optional[int] = None,  # None: the sampler's default (diffusion.default_steps); DDPM takes all T
        eta: float = 0.0,  # DDIM noise: 0 deterministic, 1 ancestral
        spacing: Optional[str] = None,  # DDIM timestep spacing: leading | trailing; None: trailing for a zero-terminal-SNR
                                        # schedule (its first step must be at t = T, Lin et al. 2024, Sec. 3.3), else leading
        seed: Optional[int] = None,  # seed of a CPU generator (ignored if generator is given)
        generator: Optional[torch.Generator] = None,
        cond: Optional[torch.Tensor] = None,  # condition images (B, C_cond, H, W) in [0, 1] (conditional models)
        num_samples: int = 1,  # outputs per condition (conditional models): (B * num_samples, C, H, W)
        labels=None,  # class-conditional models: a class index, or one per sample (None: unconditional)
        guidance: float = 1.5,  # classifier-free guidance scale s: 0 unconditional, 1 conditional, > 1 sharper
        guidance_interval: Optional[tuple[float, float]] = DEFAULT_INTERVAL,  # (lo, hi): guide only where
                                     # lo < sigma_t <= hi (Kynkaanniemi et al. 2024); None: at every step
        use_ema: bool = True,  # sample with the EMA weights
        progress: bool = True,
        callback: Optional[Callable[[dict], None]] = None,
    ) -> torch.Tensor:
        """Generate images (num, C, H, W) in [0, 1]; for a conditional model, num_samples images per
        condition, grouped by condition (rows 0..K-1 belong to cond[0]), at the condition's size."""
        h = self.hparams
        fn = get_sampler(sampler)
        opts: dict = {} if steps is None else {"steps": steps}
        if sampler == "ddim":
            if spacing is None:
                spacing = "trailing" if h.zero_terminal_snr else "leading"
            opts.update(eta=eta, spacing=spacing)  # the other samplers keep their own default spacing
        elif sampler == "ddpm" and opts.pop("steps", h.timesteps) != h.timesteps:
            raise ValueError(f"the ddpm sampler always takes all T={h.timesteps} steps, got steps={steps}; use ddim for fewer")
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(seed) if seed is not None else generator.seed()
        f = self.latent.factor
        size = (h.image_size // f, h.image_size // f)  # of z_T: the latent size (pixel space: the image size)
        if h.cond_channels and cond is None:
            raise ValueError(f"this model is conditional ({h.condition}, {h.cond_channels} channels): pass cond images")
        if cond is not None:
            self.check_condition(cond)
            cond = self.latent.scale_condition(self.latent.condition_code(cond)).repeat_interleave(num_samples, dim=0)
            num, size = cond.shape[0], tuple(cond.shape[-2:])
        net = self.ema if use_ema else self.net
        was_training = net.training
        net.eval()
        x_T = randn((num, self.latent.channels, *size), generator, self.device).contiguous(memory_format=self.memory_format)
        model = net
        if labels is not None:
            # guidance 0 asks for the unconditional model: at every step, whatever the interval
            every_step = guidance_interval is None or guidance == 0
            active = None if every_step else interval_table(self.diffusion.alpha_bar, *guidance_interval).to(self.device)
            model = ClassifierFreeGuidance(net, self.class_labels(labels, num), scale=guidance, null=h.num_classes,
                                           active=active)
        residual = h.residual
        x0 = fn(model, self.diffusion, x_T, cond=cond, generator=generator,
                clip_x0=h.clip_x0 and not residual and not self.is_latent,  # latents are not bounded
                progress=progress, callback=callback, **opts)
        if residual:  # pixel space only: cond is the condition image in [-1, 1]
            x0 = x0 / h.residual_scale + cond
        net.train(was_training)
        return self.latent.decode(x0)

    def check_condition(self, cond: torch.Tensor) -> None:
        """Clear errors for a condition the network cannot take."""
        h = self.hparams
        if not h.cond_channels:
            raise ValueError("this model is unconditional: it takes no cond images")
        if cond.dim() != 4 or cond.shape[1] != h.cond_channels:
            raise ValueError(f"condition of shape {tuple(cond.shape)}: this model expects (B, {h.cond_channels}, H, W) "
                             f"({h.cond_channels}-channel condition images, trained with condition={h.condition!r})")
        f = self.size_factor
        if cond.shape[-1] % f or cond.shape[-2] % f:
            raise ValueError(f"condition size {tuple(cond.shape[-2:])}: height and width must be multiples of {f} "
                             "for this model (pad the input, as `dff translate` does)")


class PixelDiffusion(DiffusionModule):
    """Unconditional diffusion in pixel space (the original project's PixelDiffusion): every
    argument of DiffusionModule except cond_channels, which is 0."""

    def __init__(self, **kwargs):
        if kwargs.get("cond_channels", 0):
            raise ValueError("PixelDiffusion is unconditional: use PixelDiffusionConditional for a condition image")
        super().__init__(**kwargs)


class PixelDiffusionConditional(DiffusionModule):
    """Image-to-image diffusion in pixel space (the original project's PixelDiffusionConditional):
    the condition image is concatenated to x_t along channels. Every argument of DiffusionModule;
    cond_channels must be > 0 (default 3) and condition defaults to "image"."""

    def __init__(self, **kwargs):
        kwargs.setdefault("cond_channels", 3)
        kwargs.setdefault("condition", "image")
        if kwargs["cond_channels"] <= 0:
            raise ValueError("PixelDiffusionConditional needs cond_channels > 0; use PixelDiffusion without a condition")
        super().__init__(**kwargs)


class LatentDiffusion(DiffusionModule):
    """Unconditional diffusion in the latent space of an autoencoder (the original project's
    LatentDiffusion): every argument of DiffusionModule; `autoencoder` is required (the original's
    default was the hub id stabilityai/sd-vae-ft-ema)."""

    def __init__(self, **kwargs):
        if is_pixel_space(kwargs.get("autoencoder")):
            raise ValueError("LatentDiffusion needs model.autoencoder: an AutoencoderKL folder, a dff autoencoder "
                             "run or a hub id such as stabilityai/sd-vae-ft-ema")
        if kwargs.get("cond_channels", 0):
            raise ValueError("LatentDiffusion is unconditional: use LatentDiffusionConditional for a condition image")
        super().__init__(**kwargs)


class LatentDiffusionConditional(DiffusionModule):
    """Image-to-image diffusion in latent space (the original project's LatentDiffusionConditional):
    the condition is encoded by the same autoencoder (latent_condition='encode', as the original)
    or resized to the latent size ('resize') and concatenated to z_t."""

    def __init__(self, **kwargs):
        kwargs.setdefault("cond_channels", 3)
        kwargs.setdefault("condition", "image")
        if is_pixel_space(kwargs.get("autoencoder")):
            raise ValueError("LatentDiffusionConditional needs model.autoencoder (see LatentDiffusion)")
        if kwargs["cond_channels"] <= 0:
            raise ValueError("LatentDiffusionConditional needs cond_channels > 0; use LatentDiffusion without a condition")
        super().__init__(**kwargs)


MODELS: dict[str, type[DiffusionModule]] = {
    "DiffusionModule": DiffusionModule, "PixelDiffusion": PixelDiffusion,
    "PixelDiffusionConditional": PixelDiffusionConditional,
    "LatentDiffusion": LatentDiffusion, "LatentDiffusionConditional": LatentDiffusionConditional,
}
