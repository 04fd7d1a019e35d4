"""The LightningModule: a network, the diffusion process, EMA and the optimiser, composed.

`DiffusionModule` is the one core; `PixelDiffusion`, `PixelDiffusionConditional`,
`LatentDiffusion` and `LatentDiffusionConditional` are presets of it. Images enter and leave as
(B, C, H, W) floats in [0, 1]; the network works on z_0 = s * E(2x - 1), where E is the
autoencoder (the identity in pixel space) and s the latent scale (1 in pixel space).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F

from .autoencoders import IdentityAutoencoder, is_pixel_space, load_autoencoder
from .diffusion import GaussianDiffusion, get_sampler
from .diffusion.samplers import randn
from .ema import EMA
from .metrics import translation_scores
from .nn import BACKBONES


def to_model_space(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2 - 1


def to_image_space(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def _drop_autoencoder_keys(module, state_dict, prefix, local_metadata) -> None:
    """State-dict hook: the frozen autoencoder is not part of the model's weights."""
    for k in [k for k in state_dict if k.startswith(prefix + "autoencoder.")]:
        del state_dict[k]


def _ignore_missing_autoencoder_keys(module, incompatible_keys) -> None:
    """Load hook: the autoencoder's weights come from its own folder, so they are never missing."""
    keys = incompatible_keys.missing_keys
    keys[:] = [k for k in keys if not k.startswith("autoencoder.")]


class DiffusionModule(L.LightningModule):
    """Diffusion model on images: training by L_simple, EMA weights, sampling with any sampler."""

    def __init__(
        self,
        image_size: int = 64,  # side of the square images (set from the data in `dff fit`)
        channels: int = 3,  # image channels (set from the data in `dff fit`)
        cond_channels: int = 0,  # channels of a condition image concatenated to x_t (0: unconditional)
        condition: str = "none",  # none | image (given) | sr2 | sr4 | colorize | inpaint (made from an input; set from the data)
        dim: int = 64,  # U-Net base width
        dim_mults: Sequence[int] = (1, 2, 4, 8),  # U-Net width multipliers, one per level
        attention: bool = True,  # convnext: linear attention per level, full in the middle; adm: full at the lowest level and middle
        backbone: str = "adm",  # adm (residual U-Net of DDPM / ADM; measured best) | convnext (the original project's U-Net)
        timesteps: int = 1000,  # T
        schedule: str = "linear",  # beta schedule: linear | quadratic | sigmoid | cosine
        zero_terminal_snr: bool = False,  # rescale the schedule to alpha_bar_T = 0 (needs v or x0)
        prediction: str = "eps",  # network target: eps | x0 | v
        loss_weighting: str = "none",  # none (L_simple) | min_snr (min-SNR-gamma, Hang et al. 2023)
        min_snr_gamma: float = 5.0,  # gamma of min-SNR weighting
        offset_noise: float = 0.0,  # offset-noise strength (0: off)
        lr: float = 1e-4,  # AdamW learning rate
        weight_decay: float = 0.0,  # AdamW weight decay
        warmup_steps: int = 0,  # linear learning-rate warm-up
        ema_decay: float = 0.9999,  # EMA decay (reached after the warm-up)
        ema_warmup: bool = True,  # EMA decay warm-up min(decay, (1 + n) / (10 + n))
        clip_x0: bool = True,  # clip predicted x0 to [-1, 1] while sampling (pixel space)
        val_steps: int = 20,  # DDIM steps of the translations scored in validation (paired data)
        residual: bool = False,  # diffuse the residual x0 - cond (SRDiff, Li et al. 2022); cond has the output's channels
        residual_scale: float = 1.0,  # multiply the residual by this (~ 1 / its std) so the diffused data has unit scale
        num_classes: int = 0,  # class-conditional with classifier-free guidance: labels 0..num_classes-1 (0: off)
        label_dropout: float = 0.1,  # share of training labels replaced by "no label" (Ho & Salimans 2022)
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
        if latent_condition not in ("encode", "resize"):
            raise ValueError(f"unknown latent_condition {latent_condition!r}: expected 'encode' or 'resize'")
        self.save_hyperparameters()
        self.autoencoder = load_autoencoder(autoencoder, channels)
        ae, latent = self.autoencoder, not is_pixel_space(autoencoder)
        if latent and residual:
            raise ValueError("residual=True is for pixel space; a latent model (model.autoencoder set) cannot use it")
        if latent and cond_channels and latent_condition == "encode" and cond_channels != channels:
            raise ValueError(f"latent_condition='encode' passes the condition through the autoencoder, which takes "
                             f"{channels}-channel images, but cond_channels={cond_channels}: use latent_condition='resize'")
        net_cond = ae.latent_channels if latent and cond_channels and latent_condition == "encode" else cond_channels
        # z_0 = s * E(x); s is a buffer so that checkpoints keep the estimate (NaN: not estimated yet)
        s = 1.0 if not latent else float("nan") if latent_scale is None else float(latent_scale)
        self.register_buffer("scale", torch.tensor(s, dtype=torch.float32))
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
        self.net = BACKBONES[backbone](ae.latent_channels, ae.latent_channels, net_cond, dim, dim_mults, attention,
                                       num_classes=num_classes)
        if image_size % self.size_factor:
            raise ValueError(
                f"image_size {image_size} cannot be divided down by the U-Net: with dim_mults={tuple(dim_mults)}"
                + (f" and the autoencoder's factor {ae.factor}" if latent else "")
                + f" it must be a multiple of {self.size_factor}"
            )
        # the frozen autoencoder is rebuilt from `autoencoder`, never stored in checkpoints
        self._register_state_dict_hook(_drop_autoencoder_keys)
        self.register_load_state_dict_post_hook(_ignore_missing_autoencoder_keys)
        self.ema = EMA(self.net, ema_decay, ema_warmup)
        self.diffusion = GaussianDiffusion(timesteps, schedule, prediction, zero_terminal_snr,
                                           loss_weighting=loss_weighting, min_snr_gamma=min_snr_gamma,
                                           offset_noise=offset_noise)

    # ------------------------------------------------------------------ latent space
    @property
    def is_latent(self) -> bool:
        return not isinstance(self.autoencoder, IdentityAutoencoder)

    @property
    def size_factor(self) -> int:
        """Image sides must be multiples of this: the autoencoder's factor times the U-Net's."""
        return self.autoencoder.factor * self.net.size_factor

    def latent_scale(self) -> torch.Tensor:
        if torch.isnan(self.scale):
            raise RuntimeError("the latent scale is not set: it is estimated at the start of `fit` "
                               "(or give model.latent_scale, or call estimate_latent_scale)")
        return self.scale

    def encode_unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """E(2x - 1): images (B, C, H, W) in [0, 1] -> latents (B, c, H/f, W/f), before the scale."""
        return self.autoencoder.encode(to_model_space(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_0 = s * E(2x - 1), the data the diffusion model sees."""
        return self.encode_unscaled(x) * self.latent_scale()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from z_0: (D(z_0 / s) + 1) / 2."""
        return to_image_space(self.autoencoder.decode(z / self.latent_scale()))

    def condition_code(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition as the network takes it, before any latent scale: pixel space and
        latent_condition='resize': the image in [-1, 1] (area-resized to the latent size);
        'encode': its latent E(2c - 1)."""
        c = to_model_space(cond)
        if not self.is_latent:
            return c
        if self.hparams.latent_condition == "encode":
            return self.autoencoder.encode(c)
        f = self.autoencoder.factor
        return F.interpolate(c, size=(c.shape[-2] // f, c.shape[-1] // f), mode="area")

    def scale_condition(self, code: torch.Tensor) -> torch.Tensor:
        """Encoded conditions get the latents' scale; images stay as they are."""
        return code * self.latent_scale() if self.is_latent and self.hparams.latent_condition == "encode" else code

    @torch.no_grad()
    def estimate_latent_scale(self, latents: torch.Tensor) -> float:
        """s = 1 / std of the given unscaled latents (Rombach et al. 2022, sec. 4.3.2 / appendix G);
        stored in the `scale` buffer and returned."""
        s = 1.0 / latents.float().std().item()
        self.scale.fill_(s)
        return s

    def on_fit_start(self) -> None:
        """Latent models: cache the training latents if the data asks for it, and estimate the
        latent scale from the training data when it is not set (rank 0's estimate is shared)."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "wants_latent_cache", False):
            dm.use_latent_cache(self)  # (an error for pixel models)
        if self.is_latent and torch.isnan(self.scale):
            from .data.latents import sample_latents

            z = sample_latents(self, dm.train_set if dm is not None else None, self.hparams.latent_scale_samples)
            s = self.trainer.strategy.broadcast(self.estimate_latent_scale(z), 0)
            self.scale.fill_(s)
            print(f"latent scale s = 1 / std of {len(z)} training latents = {s:.4f}")

    # ------------------------------------------------------------------ forward
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The training network's prediction for x_t at timesteps t (B,)."""
        return self.net(x_t, t, cond)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "latent" in batch:  # cached latents (data.latent_cache)
            x0 = batch["latent"] * self.latent_scale()  # (B, c, h, w)
        else:
            x0 = self.encode(batch["image"])  # (B, c, H/f, W/f); pixel space: (B, C, H, W) in [-1, 1]
        cond = None
        if "cond_code" in batch:
            cond = self.scale_condition(batch["cond_code"])
        elif "cond" in batch:
            cond = self.scale_condition(self.condition_code(batch["cond"]))
        if self.hparams.get("residual"):
            x0 = (x0 - cond) * self.hparams.residual_scale  # the diffused data is what the condition misses
        net = self.net
        if self.hparams.get("num_classes"):
            y = self.training_labels(batch)
            net = lambda x_t, t, c=None: self.net(x_t, t, c, y)  # noqa: E731
        loss = self.diffusion.loss(net, x0, cond)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=x0.shape[0])
        return loss

    def training_labels(self, batch: dict) -> torch.Tensor:
        """The batch's labels (B,), a random label_dropout share replaced by the null label."""
        h = self.hparams
        if "label" not in batch:
            raise ValueError(f"model.num_classes={h.num_classes} needs labelled data: data.labels=true for a folder "
                             "(labels from sub-folder names) or the digits")
        y = batch["label"].long()
        if y.min() < 0 or y.max() >= h.num_classes:
            raise ValueError(f"label {int(y.max())} in the data, but model.num_classes={h.num_classes}: "
                             f"set model.num_classes to the number of classes")
        drop = torch.rand(y.shape, device=y.device) < h.label_dropout
        return torch.where(drop, torch.full_like(y, h.num_classes), y)

    def class_labels(self, labels, num: int) -> torch.Tensor:
        """Labels (num,) on the model's device from an int or a sequence; errors for unknown classes."""
        h = self.hparams
        if not h.get("num_classes"):
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
        scores = translation_scores(out, batch["image"], batch["cond"], self.hparams.condition)
        for k, v in scores.items():
            self.log(f"val/{k}", v, batch_size=out.shape[0], sync_dist=True)

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Update the EMA once per optimiser step (after the step, before the gradients are cleared)."""
        self.ema.update(self.net)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the class so that a checkpoint can be rebuilt without unpickling code."""
        checkpoint["dff_model_class"] = type(self).__name__

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(self.net.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        if h.warmup_steps <= 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / h.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        num: int = 16,  # number of images (unconditional models)
        sampler: str = "ddim",  # ddpm | ddim | dpmpp_2m | euler | heun
        steps: Optional[int] = None,  # DDIM steps (default 50), fast samplers (default 20); DDPM takes all T
        eta: float = 0.0,  # DDIM noise: 0 deterministic, 1 ancestral
        spacing: str = "leading",  # DDIM timestep spacing: leading | trailing
        seed: Optional[int] = None,  # seed of a CPU generator (ignored if generator is given)
        generator: Optional[torch.Generator] = None,
        cond: Optional[torch.Tensor] = None,  # condition images (B, C_cond, H, W) in [0, 1] (conditional models)
        num_samples: int = 1,  # outputs per condition (conditional models): (B * num_samples, C, H, W)
        labels=None,  # class-conditional models: a class index, or one per sample (None: unconditional)
        guidance: float = 2.0,  # classifier-free guidance scale s: 0 unconditional, 1 conditional, > 1 sharper
        use_ema: bool = True,  # sample with the EMA weights
        progress: bool = True,
        callback: Optional[Callable[[dict], None]] = None,
    ) -> torch.Tensor:
        """Generate images (num, C, H, W) in [0, 1]; for a conditional model, num_samples images per
        condition, grouped by condition (rows 0..K-1 belong to cond[0]), at the condition's size."""
        h = self.hparams
        fn = get_sampler(sampler)
        opts: dict = {}
        if sampler == "ddim":
            opts = dict(steps=50 if steps is None else steps, eta=eta, spacing=spacing)
        elif sampler != "ddpm":  # dpmpp_2m, euler, heun: their own default spacing
            opts = dict(steps=20 if steps is None else steps)
        elif steps is not None and steps != h.timesteps:
            raise ValueError(f"the ddpm sampler always takes all T={h.timesteps} steps, got steps={steps}; use ddim for fewer")
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(seed) if seed is not None else generator.seed()
        f = self.autoencoder.factor
        size = (h.image_size // f, h.image_size // f)  # of z_T: the latent size (pixel space: the image size)
        if h.cond_channels and cond is None:
            raise ValueError(f"this model is conditional ({h.condition}, {h.cond_channels} channels): pass cond images")
        if cond is not None:
            self.check_condition(cond)
            cond = self.scale_condition(self.condition_code(cond.to(self.device))).repeat_interleave(num_samples, dim=0)
            num, size = cond.shape[0], tuple(cond.shape[-2:])
        net = self.ema if use_ema else self.net
        was_training = net.training
        net.eval()
        x_T = randn((num, self.autoencoder.latent_channels, *size), generator, self.device)
        model = net
        if labels is not None:
            from .diffusion.guidance import ClassifierFreeGuidance
            model = ClassifierFreeGuidance(net, self.class_labels(labels, num), guidance, h.num_classes)
        residual = h.get("residual", False)
        x0 = fn(model, self.diffusion, x_T, cond=cond, generator=generator,
                clip_x0=h.clip_x0 and not residual and not self.is_latent,  # latents are not bounded
                progress=progress, callback=callback, **opts)
        if residual:  # pixel space only: cond is the condition image in [-1, 1]
            x0 = x0 / h.residual_scale + cond
        net.train(was_training)
        return self.decode(x0)

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
