"""The diffusers pipeline of dff exports that diffusers' own pipelines cannot run, shipped as `pipeline.py` in the
exported folder: class-conditional models (labels and guidance) and latent models (an AutoencoderKL decodes):

    pipe = DiffusionPipeline.from_pretrained(OUT, custom_pipeline=OUT, trust_remote_code=True)
    images = pipe(class_labels=[3, 3, 7], guidance_scale=1.5, num_inference_steps=50).images   # with classes
    images = pipe(batch_size=4, num_inference_steps=50).images                                 # latent, no classes

Classifier-free guidance (Ho & Salimans 2022, Eq. 6): pred = pred(x_t, null) + s (pred(x_t, y) - pred(x_t, null)),
used only where the noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) lies in (lo, hi] (Kynkaanniemi et
al. 2024), the conditional prediction elsewhere; the null label is the last class embedding. Latent models sample
z_0 and decode D(z_0 / s) with s the autoencoder's `scaling_factor` (the run's latent scale). dff's own sampler does
the same, so the same noise gives the same images. This file imports torch and diffusers only: diffusers copies
it out of the export folder and runs it without dff.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class DffPipeline(DiffusionPipeline):
    """UNet2DModel (with class embeddings: num_class_embeds = classes + 1, the last "no label"), a scheduler, and
    for latent models an AutoencoderKL."""

    _optional_components = ["vae"]

    def __init__(self, unet, scheduler, vae=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, class_labels: Optional[Sequence[int]] = None, guidance_scale: float = 1.5,
                 guidance_interval: Optional[tuple[float, float]] = (0.28, 5.42), num_inference_steps: int = 50,
                 generator: Optional[torch.Generator] = None, eta: float = 0.0, output_type: str = "pil",
                 return_dict: bool = True) -> Union[ImagePipelineOutput, tuple]:
        cfg = self.unet.config
        y = None if class_labels is None else torch.as_tensor(list(class_labels), dtype=torch.long, device=self.device)
        if cfg.num_class_embeds and y is None:
            raise ValueError("this model is class-conditional: give class_labels, one per image")
        n = batch_size if y is None else len(y)
        shape = (n, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        x = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)  # x_T
        alpha_bar = self.scheduler.alphas_cumprod.double()
        sigma = ((1 - alpha_bar) / alpha_bar).sqrt()  # (T,)
        every_step = guidance_interval is None or guidance_scale == 0  # scale 0: the unconditional model throughout
        active = torch.ones_like(sigma, dtype=torch.bool) if every_step else (
            (sigma > guidance_interval[0]) & (sigma <= guidance_interval[1]))
        step_args = inspect.signature(self.scheduler.step).parameters
        extra = {k: v for k, v in (("eta", eta), ("use_clipped_model_output", True), ("generator", generator))
                 if k in step_args}
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            if y is None:
                pred = self.unet(x, t).sample
            else:
                null = torch.full_like(y, cfg.num_class_embeds - 1)
                conditional, unconditional = self.unet(torch.cat([x, x]), t,
                                                       class_labels=torch.cat([y, null])).sample.chunk(2)
                guided = unconditional + guidance_scale * (conditional - unconditional)
                pred = guided if active[int(t)] else conditional
            x = self.scheduler.step(pred, t, x, **extra).prev_sample
        if self.vae is not None:  # z_0 -> D(z_0 / s)
            x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        image = (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, C) in [0, 1]
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if return_dict else (image,)
