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
# # 04 · Latent diffusion: first the autoencoder
#
# Pixel diffusion at 256×256 costs a step per second or worse; latent diffusion (Rombach et al. 2022)
# runs the same diffusion on the small latent z = E(x) of an autoencoder and decodes its samples with
# D. A latent model can never be better than its autoencoder, so the rule of the original
# DiffusionFastForward notebook is: **test the autoencoder on new data first.** In this notebook you
#
# 1. train a small autoencoder (diffusers' `AutoencoderKL`, f = 4) on 64×64 patches of three
#    grayscale textures (brick, grass, gravel: no pretrained RGB autoencoder serves 1-channel data);
# 2. test it: reconstructions, error maps, PSNR/SSIM on held-out patches;
# 3. look at the **latent scale** s that gives the diffusion unit-variance data;
# 4. train the digits' diffusion recipe on the latents and decode samples.
#
# `dff demo latent` trains the latent stage with a longer budget, in the space of the demo's autoencoder (the same
# config trained for 600 steps and shipped with dff as `dff:textures`); here both stages train for a few minutes,
# and seconds with `DFF_QUICK=1` (noisy figures).

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
from dff.data.builtin import TEXTURES, PhotoPatches
from dff.evaluation.reconstruction import evaluate_autoencoder, reconstruction_images
from dff.evaluation.psnr_ssim import psnr, ssim
from dff.training.fit import CONFIG_DIR
from dff.viz import read_metric

RUN = Path("runs/notebooks/04_latent")  # every file this notebook writes goes below this folder
torch.manual_seed(0)
print("quick mode (DFF_QUICK=1): tiny budgets, noisy figures" if learn.quick() else "full mode")

# %% [markdown]
# ## The data
#
# scikit-image's three 512×512 textures; the top three quarters give random 64×64 training crops,
# the bottom quarter is held out and tiled into 64×64 patches (sixteen per texture).

# %%
train_patches = PhotoPatches("train", image_size=64, channels=1, repeat=16, seed=0, source="textures")
real = torch.stack([train_patches[i]["image"] for i in range(12)])  # (12, 1, 64, 64), cycling through the textures
# (48, 1, 64, 64): the held-out tiles, texture by texture
held_out = reconstruction_images("textures", channels=1, size=64)
n = len(held_out) // len(TEXTURES)  # tiles per texture
print(f"textures {TEXTURES}; held-out patches {tuple(held_out.shape)}")
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
learn.show(axes[0], real, nrow=6, title="training crops (brick, grass, gravel, ...)")
learn.show(axes[1], held_out[torch.arange(12) // 4 * n + torch.arange(12) % 4], nrow=6,
           title="held-out patches (4 of each texture's 16)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Stage 1: the autoencoder
#
# `configs/autoencoder_demo.yaml`: widths 32, 64, 64 (three levels: f = 2² = 4), 4 latent
# channels, L1 reconstruction + 10⁻⁶ KL, trained on 64×64 crops, each encoded into a 16×16×4
# latent. (With f = 8 at 128×128, an earlier version of the demo, the grass blades did not survive
# the autoencoder, so no grass came out of the latent model.) The demo trains 600 steps; here fewer.

# %%
t0 = time.time()
ae_steps = learn.budget(250, 10)
cli = fit(["--config", str(CONFIG_DIR / "autoencoder_demo.yaml"), "--trainer.max_steps", str(ae_steps),
           "--trainer.default_root_dir", str(RUN / "autoencoder"), "--trainer.enable_progress_bar", "false",
           "--trainer.limit_val_batches", "0", "--checkpoint.every_n_train_steps", str(ae_steps)])
ae_run = Path(cli.trainer.log_dir)
ae = load_autoencoder(str(ae_run), channels=1).eval()  # its export: E and D on images in [-1, 1]
print(f"autoencoder: {ae_steps} steps in {learn.record('ae_train_s', time.time() - t0):.0f} s; factor f = {ae.factor}, "
      f"{ae.latent_channels} latent channels; exported to {ae_run / 'export'}")

# %% [markdown]
# ## Test the autoencoder on held-out data
#
# Reconstruction D(E(x)) of the held-out patches (the encoder's mean, as the latent model uses it),
# and the absolute error. Whatever the error maps show, the latent model will get wrong too.

# %%
with torch.no_grad():
    z_held = ae.encode(to_model_space(held_out))  # (48, 4, 16, 16)
    recon = to_image_space(ae.decode(z_held)).clamp(0, 1)  # (48, 1, 64, 64)
error = (recon - held_out).abs()
scores = evaluate_autoencoder(ae, held_out)
print(f"held-out reconstruction: PSNR {learn.record('ae_psnr', scores['psnr']):.2f} dB, "
      f"SSIM {learn.record('ae_ssim', scores['ssim']):.3f} ({scores['n']} patches)")
for k, name in enumerate(TEXTURES):
    part = slice(n * k, n * k + n)
    print(f"  {name:7s} PSNR {learn.record(f'ae_psnr_{name}', psnr(recon[part], held_out[part])):.2f} dB, "
          f"SSIM {ssim(recon[part], held_out[part]):.3f}")
shipped = evaluate_autoencoder(load_autoencoder("dff:textures", channels=1), held_out)  # the demo's: 600 steps
print(f"the demo's autoencoder (dff:textures, the same config at 600 steps): "
      f"PSNR {learn.record('shipped_ae_psnr', shipped['psnr']):.2f} dB, SSIM {shipped['ssim']:.3f}")
pick = torch.tensor([0, 1, n, n + 1, 2 * n, 2 * n + 1])  # two patches of each texture
fig, axes = plt.subplots(3, 1, figsize=(10, 5.6))
learn.show(axes[0], held_out[pick], nrow=6, title="held-out x")
learn.show(axes[1], recon[pick], nrow=6, title="reconstruction D(E(x))")
learn.show(axes[2], (error[pick] * 4).clamp(0, 1), nrow=6, title="|x - D(E(x))| x 4")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The latent scale
#
# The diffusion's schedule assumes data of about unit variance (like images in [-1, 1]): at t = T,
# x_T must be indistinguishable from N(0, I). An autoencoder's latents have whatever spread its
# training gave them, so the latent model diffuses z₀ = s · E(x) with s = 1 / std of the training
# latents (Rombach et al. 2022, Sec. 4.3.2; Stable Diffusion's 0.18215 was computed this way).
# `fit` estimates it from 512 training images when the config leaves `latent_scale: null`.
#
# **Exercise.** Write the scale.

# %% tags=["exercise"]
# Exercise latent_scale: s = 1 / (standard deviation of all the latents' elements)
def latent_scale_by_hand(z):
    """z: latents (N, c, h, w), unscaled. Returns s as a float or a 0-d tensor."""
    raise NotImplementedError("write s here")


# %%
latent_scale_by_hand = learn.check_latent_scale(latent_scale_by_hand)  # yours once written, else the library's

with torch.no_grad():
    z_train = ae.encode(to_model_space(torch.stack([train_patches[i]["image"] for i in range(48)])))  # (48, 4, 16, 16)
s = float(latent_scale_by_hand(z_train))
print(f"latents: mean {z_train.mean():.3f}, std {z_train.std():.3f} -> s = {s:.3f}")
fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
axes[0].hist(z_train.flatten().numpy(), bins=100, density=True, color="C0")
axes[0].set_title("E(x): latents as the encoder gives them", fontsize=9)
zs = (s * z_train).flatten().numpy()
grid = np.linspace(-4, 4, 200)
axes[1].hist(zs, bins=100, density=True, color="C1", label="s E(x)")
axes[1].plot(grid, np.exp(-grid ** 2 / 2) / np.sqrt(2 * np.pi), "k--", lw=1, label="N(0, 1)")
axes[1].set_title("s E(x): what the diffusion sees", fontsize=9), axes[1].legend(fontsize=8)
axes[2].bar(range(z_train.shape[1]), z_train.transpose(0, 1).flatten(1).std(1).numpy(), color="C0")
axes[2].set_title("std of each latent channel (one s for all)", fontsize=9), axes[2].set_xlabel("channel")
fig.tight_layout()
plt.show()

# %% [markdown]
# The 4 channels of one latent, 16×16 each, next to the patch it encodes: a latent is a small,
# image-like map (the U-Net's convolutions suit it), not a vector.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 2.8), gridspec_kw={"width_ratios": [1, 4]})
learn.show(axes[0], held_out[:1], title="x (64x64)")
z1 = z_held[0][:, None]  # (4, 1, 16, 16)
learn.show(axes[1], (z1 - z1.min()) / (z1.max() - z1.min()), nrow=len(z1),
           title=f"its latent: {len(z1)} channels of 16x16")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Stage 2: diffusion on the latents
#
# `configs/latent_demo.yaml` points `model.autoencoder` at the run above and trains a small U-Net
# with the digits' objective (cosine schedule, v-prediction, min-SNR-5) on the 16×16×4 latents:
# the ADM residual U-Net, dim 32 (in a trial it drew clean brick walls where the ConvNeXt U-Net drew
# only texture). `data.latent_cache` encodes the training crops once (each flip variant too) and
# trains from the file: the encoder is not run at every step. The cache records which autoencoder
# made it (a hash of its weights), so it lives beside that autoencoder's run.

# %%
t0 = time.time()
steps = learn.budget(500, 10)
cli = fit(["--config", str(CONFIG_DIR / "latent_demo.yaml"), "--model.autoencoder", str(ae_run),
           "--data.latent_cache", str(ae_run / "latents.pt"), "--data.repeat", str(learn.budget(96, 8)),
           "--trainer.max_steps", str(steps),
           "--trainer.default_root_dir", str(RUN / "diffusion"), "--trainer.enable_progress_bar", "false",
           "--checkpoint.every_n_train_steps", str(steps)])
model, run = cli.model.eval(), Path(cli.trainer.log_dir)
print(f"latent model: {steps} steps in {learn.record('latent_train_s', time.time() - t0):.0f} s; "
      f"latent scale s = {learn.record('latent_scale', model.latent.scale):.3f} "
      f"(estimated by fit; yours above: {s:.3f})")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for ax, (name, r) in zip(axes, (("autoencoder (L1 + KL)", ae_run), ("latent diffusion", run))):
    st, v = read_metric(r / "metrics.csv", "train/loss")
    k = max(1, len(v) // 10)
    ax.plot(st, v, alpha=0.3), ax.plot(st[k - 1:], np.convolve(v, np.ones(k) / k, mode="valid"))
    ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_title(f"{name}: train/loss", fontsize=9), ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Samples
#
# z_T ~ N(0, I) at the latent size, 100 steps of the stochastic DPM-Solver++(2M) SDE in latent
# space (the demo's sampler: on these latents it halves the FID of 20 deterministic steps, see
# docs/benchmarks.md), then D(z₀ / s). Compare with real patches and with what the autoencoder
# makes of them: the latent model aims at the middle row, not the top one.

# %%
t0 = time.time()
samples = model.sample(16, "dpmpp_2m_sde", steps=100, seed=0, progress=False)  # (16, 1, 64, 64) in [0, 1]
print(f"16 samples in {time.time() - t0:.1f} s")
with torch.no_grad():
    real_recon = to_image_space(ae.decode(ae.encode(to_model_space(real[:8])))).clamp(0, 1)
fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [1, 1, 2]})
learn.show(axes[0], real[:8], nrow=8, title="real training crops")
learn.show(axes[1], real_recon, nrow=8, title="their reconstructions: the best the latent model can do")
learn.show(axes[2], samples, nrow=8, title=f"16 samples of the latent model ({steps} steps), DPM-Solver++(2M) SDE 100")
fig.tight_layout()
plt.show()

# %% [markdown]
# What the full run of this notebook gave (`notebooks/results/04_latent.json`): held-out reconstruction
# 26.65 dB<!-- n: notebooks/results/04_latent.json values.ae_psnr --> (brick 32.56<!-- n:
# notebooks/results/04_latent.json values.ae_psnr_brick -->, grass
# 21.62<!-- n: notebooks/results/04_latent.json values.ae_psnr_grass -->, gravel 25.77<!-- n:
# notebooks/results/04_latent.json values.ae_psnr_gravel -->), latent scale
# 0.45<!-- n: notebooks/results/04_latent.json values.latent_scale -->. Two limits show here. The autoencoder's: the
# reconstructions keep the
# bricks and the pebbles' outlines but soften the grass blades, and no latent model can put back what its decoder
# loses (the demo's autoencoder, 600 steps of the same config, raises that ceiling to
# 28.37 dB<!-- n: notebooks/results/04_latent.json values.shipped_ae_psnr -->). And the latent model's training: 500
# steps give the grain of the
# textures, not yet their shapes; the demo's 4500 steps (bf16-mixed) in the shipped autoencoder's space make
# samples the texture judge recognises, every texture present (its measurements: docs/benchmarks.md, "The latent demo").

# %% [markdown]
# ## On a GPU, with real data
#
# The original project's latent setting is `configs/latent_maps_256.yaml`: 256×256 satellite photos
# (the A halves of pix2pix *maps*) in the 32×32×4 latent space of Stable Diffusion's VAE
# (`stabilityai/sd-vae-ft-ema`, downloaded once), ConvNeXt U-Net dim 64 with multipliers
# 1, 2, 4, 8 and attention, batch 8, lr 1e-4, 200,000 steps; the scale is estimated from the data:
#
# ```bash
# dff data download maps --dir data
# dff eval path/to/sd-vae-ft-ema --data path/to/your_images --image-size 256   # a local copy of the VAE: test it first
# dff fit --config configs/latent_maps_256.yaml --data.latent_cache data/maps_latents_256.pt
# dff sample runs/latent_maps_256/version_0 --num 16 --sampler dpmpp_2m --steps 20 --out samples
# ```
#
# For 1-channel, multispectral or medical images no pretrained VAE fits: train one
# (`configs/autoencoder_demo.yaml` is the pattern; `discriminator: true` adds a PatchGAN) and check
# its PSNR/SSIM before anything else.
#
# At 256×256 with the SD VAE's architecture a training step of latent diffusion is several times cheaper than one
# of pixel diffusion, and cached latents cheaper again (docs/benchmarks.md, "Latent against pixel"; no GPU numbers
# yet).
