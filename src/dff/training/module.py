"""The Lightning shell around DiffusionModel (models/diffusion_model.py): the optimiser and its schedule, logging,
the non-finite guard, seeding, checkpoint counters, the latent cache and scale at the start of fit, validation.

`DiffusionModule` is what `dff fit` trains; `PixelDiffusion`, `PixelDiffusionConditional`, `LatentDiffusion` and
`LatentDiffusionConditional` are presets of it. The diffusion itself (latent space, network, EMA, loss,
sampling) is `self.model`, a plain torch module that samples without Lightning.
"""
from __future__ import annotations

import os
from typing import Optional

import lightning as L
import torch

from ..data import ImageDataModule
from ..data.latent_cache import sample_latents
from ..data.stream import draw_seed
from ..diffusion.samplers import check_steps
from ..evaluation.psnr_ssim import translation_scores
from ..models.autoencoders import is_pixel_space
from ..models.diffusion_model import DiffusionModel
from ..models.pretrained import model_settings, model_state_dict
from .optim import (adamw, batch_scaled, check_decay, decay_length, refresh_rate, run_schedule, time_spent)


def _add_model_prefix(state_dict, prefix, *args) -> None:
    """Load pre-hook: checkpoints written before DiffusionModel was split off (up to dff 0.2) hold its weights
    without the `model.` prefix."""
    if not any(k.startswith(prefix + "model.") for k in state_dict):
        for k, v in model_state_dict({k[len(prefix):]: state_dict.pop(k) for k in list(state_dict)
                                      if k.startswith(prefix)}).items():
            state_dict[prefix + "model." + k] = v


class DiffusionModule(L.LightningModule):
    """Trains a DiffusionModel (`self.model`) by AdamW on its loss, updating its EMA after every optimiser step."""

    def __init__(
        self,
        # ---- optimisation
        lr: float = 1e-4,  # AdamW learning rate
        weight_decay: float = 0.0,  # AdamW weight decay
        warmup_steps: int = 0,  # linear learning-rate warm-up
        lr_decay: str = "none",  # none | linear | cosine: decay to 0 at trainer.max_steps, or at the end of
                                 # trainer.max_time when no max_steps is set (lr_factor)
        batch_reference: Optional[int] = None,  # the batch lr, warmup_steps and ema_decay are tuned for: at another
                                                # global batch they are rescaled (batch_scaled); None: used as given
        nonfinite_patience: int = 10,  # skip steps with non-finite gradients (on the device) and stop after this
                                       # many in a row (0: off)
        # ---- validation
        val_steps: int = 20,  # DDIM steps of the translations scored in validation (paired data)
        **model,  # DiffusionModel's settings (models/diffusion_model.py): image_size, channels, dim, schedule, ...
    ):
        super().__init__()
        check_decay(lr_decay)
        self.model = DiffusionModel(**model)
        check_steps(self.model.hparams.timesteps, val_steps, "model.val_steps (DDIM)")
        self.save_hyperparameters({**self.model.hparams, "lr": lr, "weight_decay": weight_decay,
                                   "warmup_steps": warmup_steps, "lr_decay": lr_decay,
                                   "batch_reference": batch_reference, "nonfinite_patience": nonfinite_patience,
                                   "val_steps": val_steps})
        self._register_load_state_dict_pre_hook(_add_model_prefix)

    # the model's parts, as the shell's (callbacks, tests and tools read them here)
    net = property(lambda self: self.model.net)
    ema = property(lambda self: self.model.ema)
    latent = property(lambda self: self.model.latent)
    diffusion = property(lambda self: self.model.diffusion)
    is_latent = property(lambda self: self.model.is_latent)
    size_factor = property(lambda self: self.model.size_factor)
    condition = property(lambda self: self.model.condition)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model(x_t, t, cond)

    def sample(self, *args, **kwargs) -> torch.Tensor:
        """DiffusionModel.sample: images (B, C, H, W) in [0, 1]."""
        return self.model.sample(*args, **kwargs)

    def on_train_start(self) -> None:
        """A time budget's rate from the time spent so far (a resumed run's budget may differ from its checkpoint's)."""
        if self._trainer is not None:
            refresh_rate(self.lr_schedulers())

    def on_fit_start(self) -> None:
        """Latent models: cache the training latents if the data asks for it, and estimate the
        latent scale from the training data when it is not set (rank 0's estimate is shared)."""
        self.run_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))  # seed_everything's, if given
        dm = getattr(self.trainer, "datamodule", None)
        latent = self.model.latent
        if isinstance(dm, ImageDataModule) and dm.hparams.latent_cache:
            if not self.is_latent:
                raise ValueError("data.latent_cache is for latent models: set model.autoencoder, or remove "
                                 "data.latent_cache")
            dm.use_latent_cache(latent)
        if self.is_latent and not latent.has_scale:
            z = sample_latents(latent.encode_unscaled, dm.train_set if dm is not None else None,
                               self.hparams.latent_scale_samples)
            s = self.trainer.strategy.broadcast(latent.estimate_scale(z), 0)
            latent.set_scale(s)
            print(f"latent scale s = 1 / std of {len(z)} training latents = {s:.4f}")
        latent.s()  # checked once here, so the training step need not read it back from the device
        self.model.check_labels(getattr(getattr(dm, "train_set", None), "labels", None))  # digits, labelled folders

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch)
        self.log_loss(loss.detach(), len(next(iter(batch.values()))))
        return loss

    def log_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """Sum the loss on the device and log its mean every log_every_n_steps steps: reading a value back
        (as the progress bar does for every logged value) waits for the GPU, so it happens once per interval."""
        self.loss_sum = loss if getattr(self, "loss_sum", None) is None else self.loss_sum + loss
        self.loss_count = getattr(self, "loss_count", 0) + 1
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        if (self.global_step + 1) % max(every, 1) == 0:  # logged as a host tensor: the progress bar reads it for free
            self.log("train/loss", (self.loss_sum / self.loss_count).cpu(), prog_bar=True, on_step=True,
                     on_epoch=False, batch_size=batch_size)
            if self._trainer is not None and self.trainer.optimizers:  # the rate this step used (a host float)
                self.log("train/lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]), on_step=True,
                         on_epoch=False, batch_size=batch_size)
            self.loss_sum, self.loss_count = None, 0

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """Seed the step's random draws (t, noise, label dropout) from (run seed, epoch, batch, rank): a run
        resumed from a checkpoint draws what an uninterrupted run draws, and sample grids or validations in
        between change nothing. Data sets without a `labels` list (checked at the start of fit): the first
        batch's labels are checked here, once, not in the step (the check reads the device)."""
        torch.manual_seed(draw_seed(getattr(self, "run_seed", 0), self.current_epoch, batch_idx, self.global_rank))
        if "label" in batch and not getattr(self, "labels_checked", False):
            self.model.check_labels(batch["label"])
            self.labels_checked = True

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Translate the validation conditions (EMA weights, DDIM val_steps) and score them against
        the targets: PSNR and SSIM; for super-resolution also the consistency with the input."""
        if "cond" not in batch:
            return
        out = self.model.sample(cond=batch["cond"], sampler="ddim", steps=self.hparams.val_steps, seed=batch_idx,
                                progress=False)
        with torch.autocast(self.device.type, enabled=False):  # scores (and the bicubic baseline) in float32
            scores = translation_scores(out.float(), batch["image"].float(), batch["cond"].float(),
                                        condition=self.hparams.condition)
        for k, v in scores.items():
            self.log(f"val/{k}", v, batch_size=out.shape[0], sync_dist=True)

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Update the EMA once per optimiser step (after the step, before the gradients are cleared)."""
        self.model.ema.update(self.model.net)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the class so that a checkpoint can be rebuilt without unpickling code, and the running sums a
        resumed run continues from (the loss of the open log interval, the non-finite step counts)."""
        checkpoint["dff_model_class"] = type(self).__name__
        checkpoint["dff_counters"] = {k: getattr(self, k) for k in self.COUNTERS if getattr(self, k, None) is not None}
        checkpoint["dff_lr_decay_total"] = self.trainer.max_steps if self.hparams.lr_decay != "none" else 0

    COUNTERS = ("loss_sum", "loss_count", "nonfinite_run", "nonfinite_total")

    resumed_decay_total: Optional[int] = None  # the step the resumed checkpoint's run decayed to 0 at (0: no decay)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = model_settings(checkpoint.get("hyper_parameters", {}))  # a file without adm_layout: v1
        h = self.model.hparams
        if h.backbone == "adm" and saved.get("backbone", "adm") == "adm" and saved["adm_layout"] != h.adm_layout:
            raise ValueError(f"this checkpoint's U-Net has layout {saved['adm_layout']!r}, the run's model "
                             f"{h.adm_layout!r}: resume with --model.adm_layout {saved['adm_layout']}")
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
        grads = [p.grad for p in self.model.net.parameters() if p.grad is not None]
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
            raise ValueError("model.batch_reference needs the batch size: train with an ImageDataModule "
                             "(data: in the config)")
        return int(batch) * t.world_size * t.accumulate_grad_batches

    def configure_optimizers(self):
        h = self.hparams
        lr, warmup = h.lr, h.warmup_steps
        if h.batch_reference:
            B = self.global_batch()
            lr, warmup, self.model.ema.decay = batch_scaled(h.lr, h.warmup_steps, h.ema_decay, B, h.batch_reference)
            if self.trainer.is_global_zero:
                print(f"batch {B} (recipe tuned at {h.batch_reference}): lr {lr:.3g}, warm-up {warmup} steps, "
                      f"EMA decay {self.model.ema.decay:.6g}")
        opt = adamw(self.model.net.parameters(), lr, h.weight_decay, h.nonfinite_patience)
        if h.lr_decay != "none" and time_spent(self.trainer) is None:  # a decay by steps alone
            total, resumed = decay_length(h.lr_decay, self.trainer.max_steps), self.resumed_decay_total
            if resumed and resumed != total and self.trainer.is_global_zero:  # a resume with another max_steps
                print(f"dff: model.lr_decay={h.lr_decay}: the checkpoint's run decayed to 0 at step {resumed}, "
                      f"this one at trainer.max_steps={total}: the learning rate from the resumed step on follows "
                      "the new length")
        return run_schedule(self.trainer if h.lr_decay != "none" else None, opt, warmup, h.lr_decay)


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
            raise ValueError("PixelDiffusionConditional needs cond_channels > 0; "
                             "use PixelDiffusion without a condition")
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
            raise ValueError("LatentDiffusionConditional needs cond_channels > 0; "
                             "use LatentDiffusion without a condition")
        super().__init__(**kwargs)


MODELS: dict[str, type[DiffusionModule]] = {
    "DiffusionModule": DiffusionModule, "PixelDiffusion": PixelDiffusion,
    "PixelDiffusionConditional": PixelDiffusionConditional,
    "LatentDiffusion": LatentDiffusion, "LatentDiffusionConditional": LatentDiffusionConditional,
}
