# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Image-to-image in latent space
#
# Notebook 03 concatenated the condition image to x_t; notebook 04 moved the diffusion into an
# autoencoder's latent space. Together: the network sees z_t and a **condition code** of the same
# latent size. dff makes that code in one of two ways (`model.latent_condition`):
#
# - `encode`: the condition through the same encoder, scaled like the latents (the original
#   DiffusionFastForward, for conditions that are images like the outputs: maps, photos);
# - `resize`: the condition image area-resized to the latent size (for conditions the autoencoder
#   was not trained on: masks, other channel counts, segmentation maps).
#
# You will train both on ×4 super-resolution of the texture patches, translate inputs larger than
# the training crops (z_T takes the condition's size), and compare the translations with the
# **ceiling** every latent model has: its autoencoder's round trip.
#
# A few minutes on a 2-core CPU (the time of the full run is in [notebooks/README.md](README.md)); `DFF_QUICK=1`
# shrinks the training to seconds (noisy outputs).

# %% tags=["install"]
# On Colab, or anywhere dff is not installed yet, this cell installs it (with the notebooks' extra); where dff
# imports, it does nothing. DFF_SOURCE chooses what to install: a clone URL (git+https://...), a folder or a wheel.
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("dff") is None:
    source = os.environ.get("DFF_SOURCE", "diffusion-fast-forward")  # the package index's name by default
    spec = f"diffusion-fast-forward[learn] @ {source}" if "://" in source else f"{source}[learn]"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", spec], check=True)

# %%
from dff.tools import learn

learn.require()  # says what to install if the notebooks' extra is missing

import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from dff import fit
from dff.models.autoencoders import load_autoencoder, to_image_space, to_model_space
from dff.data.tasks import downsample, make_condition
from dff.evaluation.reconstruction import evaluate_autoencoder, reconstruction_images
from dff.models import LatentSpace
from dff.evaluation.psnr_ssim import psnr, ssim
from dff.training.fit import CONFIG_DIR
from dff.viz import read_metric

RUN = Path("runs/notebooks/05_conditional_latent")  # every file this notebook writes goes below this folder
torch.manual_seed(0)
print("quick mode (DFF_QUICK=1): tiny budgets, noisy figures" if learn.quick() else "full mode")

# %% [markdown]
# ## The autoencoder
#
# The f = 4 autoencoder of notebook 04 at its full budget: `configs/autoencoder_demo.yaml` trained for 600 steps on
# 64×64 crops of the three grayscale textures, shipped with dff as `dff:textures` (the latent demo's), so this
# notebook trains no autoencoder. Notebook 04 showed how to test one; here its held-out score once more.

# %%
ae = "dff:textures"  # a model.autoencoder value like a folder or a hub id: models/weights/textures_autoencoder
ae_scores = evaluate_autoencoder(load_autoencoder(ae, channels=1), reconstruction_images("textures", 1, 64))
print(f"autoencoder {ae}: held-out 64x64 patches PSNR {ae_scores['psnr']:.2f} dB, SSIM {ae_scores['ssim']:.3f}")

# %% [markdown]
# ## Two condition codes
#
# The task: the held-out 128×128 patches, downscaled ×4 to 32×32; the condition is that input
# upscaled back (bicubic), as in notebook 03. `LatentSpace` (the part of the model that holds the
# autoencoder and the scale) turns it into the network's code:

# %%
target = reconstruction_images("textures", channels=1, size=128)  # (12, 1, 128, 128): held-out, 4 per texture
cond = make_condition("sr4", target)  # (12, 1, 128, 128): bicubic of the 32x32 input
codes = {}
for kind in ("encode", "resize"):
    space = LatentSpace(ae, channels=1, scale=1.0, condition=kind)  # scale 1: the codes as they are
    with torch.no_grad():
        codes[kind] = space.condition_code(cond)
    print(f"{kind:6s}: condition {tuple(cond.shape)} -> code {tuple(codes[kind].shape)}")


def channels_as_images(z):
    """(c, h, w) -> (c, 1, h, w) in [0, 1], each channel stretched to its own range, for viewing."""
    z = z[:, None]
    lo, hi = z.amin((1, 2, 3), keepdim=True), z.amax((1, 2, 3), keepdim=True)
    return (z - lo) / (hi - lo + 1e-8)


fig, axes = plt.subplots(1, 3, figsize=(11, 2.9), gridspec_kw={"width_ratios": [1, 1, 4]})
learn.show(axes[0], cond[:1], title="condition (128x128)")
for ax, kind in zip(axes[1:], ("resize", "encode")):
    c, h, w = codes[kind][0].shape
    learn.show(ax, channels_as_images(codes[kind][0]), nrow=c, title=f"{kind}: {c} channel{'s' * (c > 1)} x {h}x{w}")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Exercise.** Write the `resize` code yourself, from the condition image and the autoencoder's factor f.
# What it must be is in [note 05](../notes/05_conditional_latent_diffusion.md), "Condition codes": think of
# the range the network's inputs live in, and of what one pixel of the latent grid stands for. The check
# names the case that fails; the line after it compares your code with the one `LatentSpace` made above.

# %% tags=["exercise"]
# Exercise resize_code: the 'resize' condition code of a latent model
def resize_code(cond, f):
    """cond: condition images (B, C, H, W) in [0, 1], H and W multiples of f; f: the autoencoder's down-sampling
    factor. Returns the 'resize' condition code (B, C, H/f, W/f) of note 05 (its equation for 'resize')."""
    raise NotImplementedError("write the resize code")


# %%
resize_code = learn.check_resize_code(resize_code)  # yours once written; until then the library's
factor = cond.shape[-1] // codes["resize"].shape[-1]  # the autoencoder's f, from the two sizes
print(f"resize_code(cond, {factor}) against LatentSpace's code above: largest difference "
      f"{float((resize_code(cond, factor) - codes['resize']).abs().max()):.1e}")

# %% [markdown]
# `encode` gives the network the condition in the very language of z: 4 channels that the decoder
# understands, so for an image-like condition it is the richer code. `resize` keeps a 32×32
# thumbnail (here as many pixels as the 32×32 input had), and needs nothing from the autoencoder. In both
# cases the code is concatenated to z_t along the channels.
#
# ## Train both
#
# `configs/latent_demo.yaml` (v-prediction, min-SNR-5) with `--data.pairs sr4` and, as in
# notebook 04, the ADM U-Net; on 64×64 crops (latents 16×16×4). The latent cache stores each
# crop's latent and its condition code, beside the autoencoder that made them.

# %%
models, runs = {}, {}
steps = learn.budget(400, 10)
for kind in ("encode", "resize"):
    t0 = time.time()
    cli = fit(["--config", str(CONFIG_DIR / "latent_demo.yaml"), "--model.autoencoder", ae,
               "--model.latent_condition", kind, "--data.pairs", "sr4", "--data.image_size", "64",
               "--data.latent_cache", str(RUN / f"latents_{kind}.pt"), "--data.repeat", str(learn.budget(96, 8)),
               "--trainer.max_steps", str(steps),
               "--trainer.default_root_dir", str(RUN / kind), "--trainer.enable_progress_bar", "false",
               "--checkpoint.every_n_train_steps", str(steps)])
    models[kind], runs[kind] = cli.model.eval(), Path(cli.trainer.log_dir)
    print(f"{kind}: {steps} steps in {learn.record(f'{kind}_train_s', time.time() - t0):.0f} s; "
          f"latent scale {float(models[kind].latent.scale):.3f}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.3))
for kind, r in runs.items():
    st, v = read_metric(r / "metrics.csv", "train/loss")
    k = max(1, len(v) // 10)
    ax.plot(st[k - 1:], np.convolve(v, np.ones(k) / k, mode="valid"), label=f"latent_condition={kind}")
ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_ylabel("loss (moving average)"), ax.grid(alpha=0.3), ax.legend()
plt.show()

# %% [markdown]
# ## z_T takes the condition's size
#
# The models were trained on 64×64 crops, but the U-Net is convolutional: `sample` draws z_T at
# the latent size of the condition it is given. The 128×128 held-out conditions give 32×32 latents
# and 128×128 outputs (`dff translate` does the same with whole files, padding them to a multiple of
# the model's size factor, here 4 × 4 = 16: the autoencoder's and the U-Net's).

# %%
outputs = {}
for kind, m in models.items():
    shapes = []
    t0 = time.time()
    outputs[kind] = m.sample(cond=cond, sampler="ddim", steps=50, seed=0, progress=False,
                             callback=lambda s: shapes.append(tuple(s["x_t"].shape)) if s["i"] == 0 else None)
    print(f"{kind}: condition {tuple(cond.shape)} -> z_t {shapes[0]} -> output {tuple(outputs[kind].shape)} "
          f"({time.time() - t0:.1f} s); size factor {m.size_factor}")

# %% [markdown]
# ## The autoencoder is the ceiling
#
# Whatever the latent model does, its output is D(z) for some z: it can only draw what the decoder
# can draw. The round trip D(E(target)) shows what the autoencoder keeps of the target, a reference
# rather than a bound: E is not the decoder's best inverse (some other z may decode closer to the
# target), and a mean of several decoded samples is no D(z) at all. Bicubic upsampling never passes
# through the autoencoder.

# %%
with torch.no_grad():
    round_trip = to_image_space(models["encode"].latent.autoencoder.decode(
        models["encode"].latent.autoencoder.encode(to_model_space(target)))).clamp(0, 1)
rows = {"bicubic": cond, "encode": outputs["encode"], "resize": outputs["resize"], "round trip D(E(x))": round_trip}
for name, x in rows.items():
    key = name.split()[0].replace("round", "round_trip")
    print(f"{name:20s} PSNR {learn.record(f'psnr_{key}', psnr(x, target)):6.2f} dB   "
          f"SSIM {learn.record(f'ssim_{key}', ssim(x, target)):.3f}")
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2))
names = list(rows)
a1.bar(names, [float(psnr(x, target)) for x in rows.values()], color=["gray", "C0", "C1", "C2"])
a2.bar(names, [float(ssim(x, target)) for x in rows.values()], color=["gray", "C0", "C1", "C2"])
a1.set_ylabel("PSNR (dB)"), a2.set_ylabel("SSIM")
for ax in (a1, a2):
    ax.tick_params(axis="x", labelsize=8), ax.grid(alpha=0.3, axis="y")
fig.suptitle("x4 super-resolution of the 12 held-out 128x128 patches (DDIM 50)", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# What the full run of this notebook printed (`notebooks/results/05_conditional_latent.json`): bicubic
# 23.85 dB<!-- n: notebooks/results/05_conditional_latent.json values.psnr_bicubic -->, `encode` 23.18 dB<!-- n:
# notebooks/results/05_conditional_latent.json values.psnr_encode -->, `resize`
# 22.81 dB<!-- n: notebooks/results/05_conditional_latent.json values.psnr_resize -->, the round trip 28.53 dB<!-- n:
# notebooks/results/05_conditional_latent.json values.psnr_round_trip -->. The f = 4
# autoencoder's round trip is above bicubic (with the former f = 8 one it was below), so a latent model could beat
# bicubic here; compare the printed scores above with it to see how far the models are after 400 steps. The
# pictures: brick edges sharper than bicubic, grass and gravel with the right grain but not the ground truth's
# blades and pebble outlines, which the round trip keeps better. (Pixel-wise scores punish a sampler that
# invents plausible detail in the wrong place, so PSNR favours the smooth bicubic.)

# %%
pick = torch.tensor([0, 4, 8])  # one patch per texture: brick, grass, gravel
lowres = torch.nn.functional.interpolate(downsample(target[pick], 4), scale_factor=4, mode="nearest")
columns = [("input 32x32", lowres), ("bicubic", cond[pick]), ("encode", outputs["encode"][pick]),
           ("resize", outputs["resize"][pick]), ("round trip", round_trip[pick]), ("ground truth", target[pick])]
fig, axes = plt.subplots(1, len(columns), figsize=(2 * len(columns), 6.4))
for ax, (title, x) in zip(axes, columns):
    learn.show(ax, x, nrow=1, title=title)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## On a GPU, with real data
#
# The original project's conditional latent setting is `configs/translate_latent_maps_256.yaml`:
# pix2pix *maps* at 256×256, map → satellite photo, both in the 32×32×4 latent space of Stable
# Diffusion's VAE with `latent_condition: encode`, ConvNeXt U-Net dim 64 with multipliers 1, 2, 4, 8
# and attention, batch 8, lr 1e-4, 200,000 steps:
#
# ```bash
# dff data download maps --dir data
# dff fit --config configs/translate_latent_maps_256.yaml --data.latent_cache data/maps_pairs_256.pt
# dff translate runs/translate_latent_maps_256/version_0 --input my_maps/ --out photos/
# dff eval runs/translate_latent_maps_256/version_0 --data data/maps/val            # PSNR/SSIM of the translations
# dff eval runs/translate_latent_maps_256/version_0 --autoencoder --data path/to/photos --image-size 256   # the ceiling
# ```
#
# `docs/benchmarks.md` has no measurements of conditional latent models beyond this notebook's. At 256×256 with the
# SD VAE's architecture a latent training step is several times cheaper than a pixel one, and cached latents cheaper
# again (docs/benchmarks.md, "Latent against pixel").
