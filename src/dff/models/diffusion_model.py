"""The diffusion model as a plain torch module: the latent space, the network, its EMA copy and the diffusion
process, with the loss of a batch and sampling. No Lightning: it trains in any loop (training/module.py is
the Lightning shell around it), and an export samples with torch alone.

    x      images (B, C, H, W) in [0, 1], as they enter and leave
    z_0    what is diffused: s * E(2x - 1) (latent_space.py; 2x - 1 in pixel space), or (z_0 - c) * r for a
           residual model (SRDiff), c the condition image in [-1, 1] and r = residual_scale
    c      the condition code concatenated to z_t: the condition image in [-1, 1], its latent s * E(2c - 1),
           or the image resized to the latent size (latent_condition)
    y      class labels 0..num_classes - 1; num_classes is the "no label" of classifier-free guidance
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..data.arrays import DataRange
from ..data.condition import KINDS, Condition
from ..diffusion import GaussianDiffusion, get_sampler
from ..diffusion.guidance import DEFAULT_INTERVAL, ClassifierFreeGuidance, guidance_interval as interval_table
from ..diffusion.samplers import randn, step_options
from ..nn import BACKBONES
from .ema import EMA, SIGMA_REL_MAX
from .latent_space import LatentSpace

CONDITIONS = KINDS  # none | image | sr2 | sr4 | colorize | inpaint (data/condition.py)


class Settings(dict):
    """A model's settings by name, read as attributes as well (h.image_size)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Bf16Calls:
    """A network whose calls run under bf16 autocast and return float32, so that a sampler's arithmetic on x_t stays
    in float32 while the convolutions and matmuls run in bf16."""

    def __init__(self, net: nn.Module, device_type: str):
        self.net, self.device_type = net, device_type

    def __call__(self, *args) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.net(*args).float()


class DiffusionModel(nn.Module):
    """Diffusion model on images: `loss(batch)` (L_simple, Ho et al. 2020, Eq. 14, or its weighted forms) and
    `sample(...)` with any sampler, the EMA weights by default.

    Composed of: `latent` (LatentSpace: autoencoder and latent scale; the identity in pixel space), `net` (the
    U-Net), `ema` (its EMA copy) and `diffusion` (GaussianDiffusion: schedule, targets, loss)."""

    def __init__(
        self,
        # ---- data (set from data: by `dff fit`)
        image_size: int = 64,  # side of the square images
        channels: int = 3,  # image channels
        data_range: Optional[dict] = None,  # array data: per-channel {"low", "high"} that map to [0, 1], the dtype and
                                            # format (data/arrays.py's DataRange); samples go back to these units
        cond_data_range: Optional[dict] = None,  # pairs of array files: the condition files' range (as data_range)
        # ---- network
        backbone: str = "adm",  # adm (residual U-Net of DDPM / ADM; measured best) | convnext (the original's U-Net)
        dim: int = 64,  # U-Net base width
        dim_mults: Sequence[int] = (1, 2, 4, 8),  # U-Net width multipliers, one per level
        attention: bool = True,  # convnext: linear attention per level, full in the middle; adm: full at the
                                 # lowest level and in the middle
        num_res_blocks: int = 2,  # adm: ResBlocks per level on the way down (one more on the way up); convnext: 2
        adm_layout: str = "diffusers",  # adm: diffusers (UNet2DModel's layers, exportable) | v1 (checkpoints made
                                        # before dff 0.3, whose files lack this key, load as v1): nn/adm.py
        # ---- diffusion process and loss
        timesteps: int = 1000,  # T
        schedule: str = "linear",  # beta schedule: linear | quadratic | sigmoid | cosine
        zero_terminal_snr: bool = False,  # rescale the schedule to alpha_bar_T = 0 (needs v or x0)
        prediction: str = "eps",  # network target: eps | x0 | v
        loss_weighting: str = "none",  # none (L_simple) | min_snr (min-SNR-gamma, Hang et al. 2023)
        min_snr_gamma: float = 5.0,  # gamma of min-SNR weighting
        offset_noise: float = 0.0,  # offset-noise strength (0: off)
        # ---- EMA
        ema_decay: float = 0.9999,  # EMA decay (reached after the warm-up)
        ema_warmup: bool = True,  # EMA decay warm-up min(decay, (1 + n) / (10 + n))
        ema_sigma_rel: Optional[float] = None,  # instead: EDM2's power-function EMA of this length relative to the
                                                # run (ema.py)
        # ---- sampling
        clip_x0: bool = True,  # clip predicted x0 to [-1, 1] while sampling (pixel space)
        # ---- conditioning: image-to-image (set from data: by `dff fit`) and classes
        cond_channels: int = 0,  # channels of a condition image concatenated to x_t (0: unconditional)
        condition: str = "none",  # none | image (given) | sr2 | sr4 | colorize | inpaint (made from an input)
        residual: bool = False,  # diffuse the residual x0 - cond (SRDiff, Li et al. 2022); cond has the output's
                                 # channels
        residual_scale: float = 1.0,  # multiply the residual by this (~ 1 / its std): the diffused data has unit scale
        num_classes: int = 0,  # class-conditional with classifier-free guidance: labels 0..num_classes-1 (0: off)
        label_dropout: float = 0.2,  # share of training labels replaced by "no label" (Ho & Salimans 2022;
                                     # 0.2 trains the unconditional branch better than 0.1: docs/benchmarks.md)
        # ---- latent space (latent_space.py)
        autoencoder: Optional[str] = None,  # latent diffusion: AutoencoderKL folder, dff autoencoder run or hub id
                                            # (None: pixel space)
        latent_scale: Optional[float] = None,  # s in z_0 = s * E(x); None: 1 / std of the training latents,
                                               # estimated at the start of fit
        latent_condition: str = "encode",  # latent conditional models: encode (by the autoencoder) | resize (to the
                                           # latent size)
        latent_scale_samples: int = 512,  # training images encoded to estimate the latent scale
    ):
        super().__init__()
        args = {k: v for k, v in locals().items() if k in inspect.signature(DiffusionModel).parameters}
        self.hparams = Settings(args)
        # 0. settings that disagree
        self.units = DataRange.from_dict(data_range)  # None: images, in [0, 1]
        if self.units is not None and self.units.channels != channels:
            raise ValueError(f"data_range has {self.units.channels} channel(s), the model {channels}")
        self.condition = Condition(condition, cond_channels)  # the data's description (an error if they disagree)
        self.cond_units = DataRange.from_dict(cond_data_range)  # None: the condition is an image, or made from one
        if self.cond_units is not None and (condition != "image" or self.cond_units.channels != cond_channels):
            raise ValueError(f"cond_data_range has {self.cond_units.channels} channel(s), for a given condition image "
                             f"of cond_channels={cond_channels} (condition={condition!r})")
        if residual and cond_channels != channels:
            raise ValueError(f"residual=True diffuses x0 - cond, so the condition needs the output's {channels} "
                             f"channels, got cond_channels={cond_channels}")
        # 1. the latent space: z_0 = s * E(2x - 1) (the identity in pixel space)
        self.latent = LatentSpace(autoencoder, channels, scale=latent_scale, condition=latent_condition)
        latent = self.latent.is_latent
        if latent and residual:
            raise ValueError("residual=True is for pixel space; a latent model (model.autoencoder set) cannot use it")
        if latent and cond_channels and latent_condition == "encode" and cond_channels != channels:
            raise ValueError(f"latent_condition='encode' passes the condition through the autoencoder, which takes "
                             f"{channels}-channel images, but cond_channels={cond_channels}: use "
                             "latent_condition='resize'")
        # 2. the network, on z_t and the condition code c
        if not dim_mults or any(not isinstance(m, int) or m < 1 for m in dim_mults):
            raise ValueError(f"model.dim_mults={list(dim_mults)!r}: expected one positive whole number per U-Net "
                             "level, e.g. [1, 2, 4, 8]")
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
        if num_res_blocks < 1 or (backbone != "adm" and num_res_blocks != 2):
            raise ValueError(f"model.num_res_blocks={num_res_blocks}: expected at least 1 block per level, and 2 for "
                             f"the {backbone} backbone (its depth is fixed; num_res_blocks is for backbone: adm)")
        depth = {"num_res_blocks": num_res_blocks, "layout": adm_layout} if backbone == "adm" else {}
        self.net = BACKBONES[backbone](in_channels=self.latent.channels, out_channels=self.latent.channels,
                                       cond_channels=self.latent.code_channels(cond_channels), dim=dim,
                                       dim_mults=dim_mults, attention=attention, num_classes=num_classes, **depth)
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

    memory_format = torch.contiguous_format  # torch.channels_last after speed_up(channels_last=True)

    @property
    def is_latent(self) -> bool:
        return self.latent.is_latent

    @property
    def device(self) -> torch.device:
        return self.latent.scale.device

    @property
    def size_factor(self) -> int:
        """Image sides must be multiples of this: the autoencoder's factor times the U-Net's."""
        return self.latent.factor * self.net.size_factor

    # ------------------------------------------------------------------ speed options
    def speed_up(self, *, channels_last: bool = False, checkpointing: bool = False, compile: bool = False,
                 compile_backend: str = "inductor", compile_mode: Optional[str] = None) -> None:
        """The speed options that live in the model (training/speed.py chooses them per device):
        channels_last: NHWC weights for the network and its EMA copy, and NHWC inputs in the loss and sampling;
        checkpointing: recompute each U-Net stage's activations in backward (Chen et al. 2016);
        compile: torch.compile the training network in place (nn.Module.compile: parameter names in checkpoints
        and exports stay those of the plain module; the EMA copy and sampling stay uncompiled; static shapes, as
        the training loader drops the short last batch)."""
        if channels_last:
            self.memory_format = torch.channels_last
            self.net.to(memory_format=torch.channels_last)
            self.ema.to(memory_format=torch.channels_last)
        if checkpointing:
            self.net.checkpointing = True  # before compiling: the traced forward reads it
        if compile:
            self.net.compile(backend=compile_backend, mode=compile_mode, dynamic=False)

    def plain(self) -> None:
        """Undo speed_up: contiguous weights, the eager network, no checkpointing (so that sampling in memory gives
        bit for bit what the export gives)."""
        self.net.checkpointing = False
        self.memory_format = torch.contiguous_format
        self.net.to(memory_format=torch.contiguous_format)
        self.ema.to(memory_format=torch.contiguous_format)
        self.net._compiled_call_impl = None  # nn.Module.compile's handle: the eager forward again

    # ------------------------------------------------------------------ training
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The training network's prediction for x_t at timesteps t (B,)."""
        return self.net(x_t, t, cond)

    def loss(self, batch: dict) -> torch.Tensor:
        """The training loss of a batch: {"image": (B, C, H, W) in [0, 1]} (or {"latent": unscaled latents} from a
        latent cache), with "cond" (condition images; "cond_code" from a cache) and "label" when the model takes
        them. Random draws (t, noise, label dropout) come from the global generator."""
        x0, cond = self.training_data(batch)  # (B, c, h, w) and (B, c_cond, h, w) | None
        if self.hparams.residual:
            x0 = (x0 - cond) * self.hparams.residual_scale  # the diffused data is what the condition misses
        if self.memory_format is not torch.contiguous_format:  # x_t and the noise inherit NHWC from x0
            x0 = x0.contiguous(memory_format=self.memory_format)
            cond = None if cond is None else cond.contiguous(memory_format=self.memory_format)
        net = self.net
        if self.hparams.num_classes:
            y = self.training_labels(batch)
            net = lambda x_t, t, c=None: self.net(x_t, t, c, y)  # noqa: E731
        return self.diffusion.loss(net, x0, cond)

    def training_data(self, batch: dict) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(z_0, c) of a batch; the latent scale is not read back from the device (checked once, at fit start)."""
        if "latent" in batch:  # cached latents (data.latent_cache)
            x0 = batch["latent"] * self.latent.s(check=False)  # (B, c, h, w)
        else:
            x0 = self.latent.encode(batch["image"], check=False)  # (B, c, H/f, W/f); pixel space: in [-1, 1]
        if "cond_code" in batch:
            return x0, self.latent.scale_condition(batch["cond_code"], check=False)
        if "cond" in batch:
            return x0, self.latent.scale_condition(self.latent.condition_code(batch["cond"]), check=False)
        return x0, None

    def training_labels(self, batch: dict) -> torch.Tensor:
        """The batch's labels (B,), a random label_dropout share replaced by the null label."""
        h = self.hparams
        if "label" not in batch:
            raise ValueError(f"model.num_classes={h.num_classes} needs labelled data: data.labels=true for a folder "
                             "(labels from sub-folder names) or the digits")
        y = batch["label"].long()
        drop = torch.rand(y.shape, device=y.device) < h.label_dropout
        return torch.where(drop, torch.full_like(y, h.num_classes), y)

    def check_labels(self, labels) -> None:
        """Labels of the training data (a sequence or tensor) must lie in 0..num_classes - 1."""
        n = self.hparams.num_classes
        if not n or labels is None or not len(labels):
            return
        y = torch.as_tensor(labels)
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"label {hi if hi >= n else lo} in the data, but model.num_classes={n}: "
                             "set model.num_classes to the number of classes")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        num: int = 16,  # number of images (unconditional models)
        sampler: str = "ddim",  # ddpm | ddim | dpmpp_2m | dpmpp_2m_sde | euler | heun
        *,
        steps: Optional[int] = None,  # None: the sampler's default (diffusion.default_steps); DDPM takes all T
        eta: float = 0.0,  # DDIM noise: 0 deterministic, 1 ancestral
        spacing: Optional[str] = None,  # DDIM timestep spacing: leading | trailing; None: the sampler's choice
        seed: Optional[int] = None,  # seed of a CPU generator (ignored if generator is given)
        generator: Optional[torch.Generator] = None,
        cond: Optional[torch.Tensor] = None,  # condition images (B, C_cond, H, W) in [0, 1] (conditional models)
        num_samples: int = 1,  # outputs per condition (conditional models): (B * num_samples, C, H, W)
        labels=None,  # class-conditional models: a class index, or one per sample (None: unconditional)
        guidance: float = 1.5,  # classifier-free guidance scale s: 0 unconditional, 1 conditional, > 1 sharper
        guidance_interval: Optional[tuple[float, float]] = DEFAULT_INTERVAL,  # (lo, hi): guide only where
                                     # lo < sigma_t <= hi (Kynkaanniemi et al. 2024); None: at every step
        use_ema: bool = True,  # sample with the EMA weights
        x_T: Optional[torch.Tensor] = None,  # the initial noise (num, c, h, w); None: drawn from the generator
        progress: bool = True,
        callback: Optional[Callable[[dict], None]] = None,  # called after every step with {i, t, x_t, x0_hat}
        precision: str = "32",  # "32", or "bf16": the network's calls under bf16 autocast (the sampler's arithmetic
                                # stays float32): x1.7-1.9 on a CPU with AVX-512 bf16 (benchmarks/speed/sample_speed.py)
    ) -> torch.Tensor:
        """Generate images (num, C, H, W) in [0, 1]; for a conditional model, num_samples images per
        condition, grouped by condition (rows 0..K-1 belong to cond[0]), at the condition's size."""
        h = self.hparams
        fn = get_sampler(sampler)
        opts = step_options(sampler, h.timesteps, steps)
        if sampler == "ddim":
            opts.update(eta=eta, spacing=spacing)  # the other samplers keep their own default spacing
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(seed) if seed is not None else generator.seed()
        f = self.latent.factor
        size = (h.image_size // f, h.image_size // f)  # of z_T: the latent size (pixel space: the image size)
        if self.condition and cond is None:
            raise ValueError(f"this model is conditional ({self.condition}): pass cond images")
        if cond is not None:
            self.check_condition(cond)
            cond = self.latent.scale_condition(self.latent.condition_code(cond)).repeat_interleave(num_samples, dim=0)
            num, size = cond.shape[0], tuple(cond.shape[-2:])
        if precision not in ("32", "bf16"):
            raise ValueError(f"sampling precision {precision!r}: expected '32' or 'bf16'")
        net = self.ema if use_ema else self.net
        was_training = net.training
        net.eval()
        if x_T is None:
            x_T = randn((num, self.latent.channels, *size), generator, self.device)  # (num, c, h, w)
        elif tuple(x_T.shape) != (num, self.latent.channels, *size):
            raise ValueError(f"x_T of shape {tuple(x_T.shape)}: expected {(num, self.latent.channels, *size)}")
        model = net if precision == "32" else Bf16Calls(net, self.device.type)
        if labels is not None:
            # guidance 0 asks for the unconditional model: at every step, whatever the interval
            every_step = guidance_interval is None or guidance == 0
            active = (None if every_step
                      else interval_table(self.diffusion.alpha_bar, *guidance_interval).to(self.device))
            model = ClassifierFreeGuidance(model, self.class_labels(labels, num), scale=guidance, null=h.num_classes,
                                           active=active)
        x0 = fn(model, self.diffusion, x_T.to(self.device).contiguous(memory_format=self.memory_format), cond=cond,
                generator=generator, clip_x0=self.clips_x0, progress=progress, callback=callback, **opts)
        if h.residual:  # pixel space only: cond is the condition image in [-1, 1]
            x0 = x0 / h.residual_scale + cond
        net.train(was_training)
        return self.latent.decode(x0)

    def to_data_units(self, x: torch.Tensor):
        """Samples (B, C, H, W) in [0, 1] as a numpy array in the training data's units and dtype (array data; the
        inverse of the data's normalisation), or None for image data."""
        return None if self.units is None else self.units.to_numpy(x)

    @property
    def clips_x0(self) -> bool:
        """Whether samplers clip the predicted x0 to [-1, 1]: for images, not for residuals or latents (unbounded)."""
        return self.hparams.clip_x0 and not self.hparams.residual and not self.is_latent

    def check_condition(self, cond: torch.Tensor) -> None:
        """Clear errors for a condition the network cannot take."""
        c = self.condition
        if not c:
            raise ValueError("this model is unconditional: it takes no cond images")
        if cond.dim() != 4 or cond.shape[1] != c.channels:
            raise ValueError(f"condition of shape {tuple(cond.shape)}: this model expects (B, {c.channels}, H, W) "
                             f"({c.channels}-channel condition images, trained with condition={c.kind!r})")
        f = self.size_factor
        if cond.shape[-1] % f or cond.shape[-2] % f:
            raise ValueError(f"condition size {tuple(cond.shape[-2:])}: height and width must be multiples of {f} "
                             "for this model (pad the input, as `dff translate` does)")

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
