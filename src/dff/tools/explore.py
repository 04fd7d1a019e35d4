"""`dff explore`: the sandbox figures of the diffusion process for any image, and with `--run` a
trained model's denoising trajectory (strip and animated GIF). Seconds on a CPU.

    forward.png        mean alpha_t x0 and draws of x_t at t = 0, T/5, ..., T
    steps_vs_jump.png  t single steps q(x_t | x_{t-1}) against the jump q(x_t | x_0): their moments
    schedules.png      beta_t, alpha_bar_t, log-SNR of each schedule; the image at the same t under each
    x0_from_xt.png     x0 recovered from x_t with the true noise, and with a slightly wrong one
    reverse_chain.png  DDPM and DDIM run with the true noise (an oracle model), from N(0, I) back to x0
    trajectory.png / trajectory.gif   (--run) the model's DDIM trajectory from noise to samples
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..models.autoencoders import to_model_space
from ..data.builtin import source_arrays
from ..data.folder import load_image, to_tensor
from ..diffusion import SCHEDULES, GaussianDiffusion
from ..files import check_out_dir
from ..viz import (forward_process_figure, plot_trajectory, reverse_chain_figure, save_gif, schedules_figure,
                  steps_vs_jump_figure, x0_prediction_figure)

FIGURES = ("forward.png", "steps_vs_jump.png", "schedules.png", "x0_from_xt.png", "reverse_chain.png")
RUN_FIGURES = ("trajectory.png", "trajectory.gif")


def center_square(im: Image.Image, size: int) -> Image.Image:
    """The largest centred square of im, resized to size x size (bicubic)."""
    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return im.crop(box).resize((size, size), Image.Resampling.BICUBIC)


def explore_image(path: Optional[str | Path], size: int) -> torch.Tensor:
    """x0 (C, size, size) in [-1, 1]: the image at `path` (grayscale stays one channel), or the bundled
    photo (scikit-learn's china.jpg) when path is None."""
    if path is None:
        im = Image.fromarray(source_arrays("photos")[0])
    else:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--image {path}: no such file")
        try:
            with Image.open(path) as probe:
                channels = 1 if probe.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
            im = load_image(path, channels)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"--image {path} is not an image PIL can read ({e}); "
                             "give a PNG, JPEG or TIFF file") from None
    return to_model_space(to_tensor(center_square(im, size)))


def model_trajectory(model, *, num: int = 6, steps: int = 50, keep: Optional[Sequence[int]] = None,
                     frames: int = 25, seed: int = 0) -> tuple[list[tuple[int, torch.Tensor]], list[torch.Tensor]]:
    """The DDIM trajectory of an unconditional model (pixel or latent): (strip, gif_frames), the strip
    x_T and x_t after the steps in `keep` (default 9 spread over the run; decoded to images in [0, 1]),
    the GIF about `frames` frames of x_t from noise to the samples (frames=0: none)."""
    h = model.hparams
    if model.condition:
        raise ValueError("explore --run draws the trajectory of unconditional models; this one is image-to-image "
                         f"({model.condition}): use dff translate")
    f = model.latent.factor
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(num, model.latent.channels, h.image_size // f, h.image_size // f, generator=g)  # (num, c, h, w)
    x_T = x_T.to(model.device)
    keep = set(keep if keep is not None else np.linspace(0, steps - 1, 9).round().astype(int).tolist())
    every = max(1, steps // frames) if frames else None
    strip = [(h.timesteps, model.latent.decode(x_T).cpu())]
    gif = [strip[0][1]] if frames else []

    def record(s: dict) -> None:
        in_gif = every is not None and (s["i"] % every == 0 or s["i"] == steps - 1)
        if s["i"] in keep or in_gif:
            image = model.latent.decode(s["x_t"]).cpu()  # (num, C, H, W) in [0, 1]
            if s["i"] in keep:
                strip.append((s["t"], image))
            if in_gif:
                gif.append(image)

    model.sample(num, "ddim", steps=steps, generator=g, x_T=x_T, progress=False, callback=record)
    return strip, gif


def explore(out: str | Path, *, image: Optional[str | Path] = None, schedule: str = "all", timesteps: int = 1000,
            size: int = 64, run: Optional[str | Path] = None, seed: int = 0, overwrite: bool = False) -> list[Path]:
    """Write the sandbox figures (FIGURES) for one image into `out`, and with `run` the model's
    trajectory (RUN_FIGURES); return the files written. `schedule` picks the schedule of the
    figures ('all': linear, with every schedule side by side in schedules.png)."""
    if schedule != "all" and schedule not in SCHEDULES:
        raise ValueError(f"--schedule {schedule!r}: expected one of {', '.join(SCHEDULES)} or all")
    if timesteps < 10 or size < 8:
        raise ValueError(f"--timesteps must be at least 10 and --size at least 8, got {timesteps} and {size}")
    out = Path(out)
    check_out_dir(out, overwrite)
    model = None
    if run is not None:  # load first: a bad run folder fails before anything is written
        from ..models.pretrained import load_pretrained

        model = load_pretrained(run)
    x0 = explore_image(image, size)  # (C, size, size)
    out.mkdir(parents=True, exist_ok=True)
    names = list(SCHEDULES) if schedule == "all" else [schedule]
    diffusion = GaussianDiffusion(timesteps, names[0])
    g = torch.Generator().manual_seed(seed)
    figures = (lambda p: forward_process_figure(x0, diffusion, generator=g, path=p),
               lambda p: steps_vs_jump_figure(x0, diffusion, generator=g, path=p),
               lambda p: schedules_figure(x0, names=names, timesteps=timesteps, generator=g, path=p),
               lambda p: x0_prediction_figure(x0, diffusion, generator=g, path=p),
               lambda p: reverse_chain_figure(x0, diffusion, generator=g, path=p))
    written = []
    for name, draw in zip(FIGURES, figures):
        draw(out / name)
        written.append(out / name)
    if model is not None:
        strip, frames = model_trajectory(model, seed=seed)
        plot_trajectory(strip, out / RUN_FIGURES[0],
                        title=f"{Path(run).name}: DDIM trajectory, x_t from noise to samples")
        save_gif(frames, out / RUN_FIGURES[1], nrow=len(frames[0]))
        written += [out / n for n in RUN_FIGURES]
    return written
