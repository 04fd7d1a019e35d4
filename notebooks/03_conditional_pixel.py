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
# # 03 · Image-to-image: conditioning by concatenation
#
# A conditional diffusion model generates an output **given** an input image: a low-resolution
# photo (super-resolution), a grayscale one (colorization), one with a hole (inpainting), a map
# (map → satellite photo). The recipe of the original DiffusionFastForward and of SR3/Palette is
# the simplest there is: concatenate the condition to x_t along the channels, and train exactly as
# before. In this notebook you
#
# 1. make the conditions of three tasks from 32×32 patches of scikit-learn's two sample photos;
# 2. train **×4 super-resolution** (with *residual* diffusion) and **colorization** with `dff.fit`;
# 3. compare K samples, their mean and bicubic upsampling, by eye and by **PSNR/SSIM**.
#
# A few minutes on a laptop CPU (the time of the full run is in [notebooks/README.md](README.md)); `DFF_QUICK=1`
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

import random
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from dff import fit
from dff.data.builtin import PhotoPatches
from dff.data.tasks import cond_channels, downsample, make_condition, random_box_mask
from dff.evaluation.psnr_ssim import psnr, ssim, translation_scores
from dff.training.fit import CONFIG_DIR
from dff.tools.translate import average_samples
from dff.viz import read_metric

RUN = Path("runs/notebooks/03_conditional_pixel")  # every file this notebook writes goes below this folder
torch.manual_seed(0)
print("quick mode (DFF_QUICK=1): tiny budgets, noisy figures" if learn.quick() else "full mode")

# %% [markdown]
# ## Conditions made from images
#
# The top three quarters of each photo are for training (random 32×32 crops), the bottom quarter is
# held out and tiled into 120 patches. `dff.data.tasks` makes each task's condition from the target:
#
# | task | condition | channels |
# | --- | --- | --- |
# | `sr4` | downscaled ×4 (bicubic, antialiased), upscaled back to 32×32 | 3 |
# | `colorize` | the luma (ITU-R BT.601) | 1 |
# | `inpaint` | the image with a rectangle blanked, plus the mask | 3 + 1 |
#
# The condition has the output's size, so the network's input is simply `cat([x_t, cond])`:
# 3 + 3, 3 + 1 or 3 + 4 channels.

# %%
val = PhotoPatches("val", image_size=32, channels=3)
targets = torch.stack([val[i]["image"] for i in range(len(val))])  # (120, 3, 32, 32) in [0, 1]
examples = targets[torch.linspace(0, len(targets) - 1, 6).long()]  # six patches spread over both photos
mask = random_box_mask(32, random.Random(0)).expand(len(examples), 1, 32, 32)  # (6, 1, 32, 32), 1 = missing
conds = {
    "sr4": make_condition("sr4", examples),
    "colorize": make_condition("colorize", examples),
    "inpaint": make_condition("inpaint", examples, mask=mask),
}
for task, c in conds.items():
    print(f"{task:9s} condition {tuple(c.shape)}: network input has 3 + {cond_channels(task, 3)} channels")
fig, axes = plt.subplots(1, 4, figsize=(11, 3.2))
learn.show(axes[0], examples, nrow=2, title="target")
learn.show(axes[1], conds["sr4"], nrow=2, title="sr4: bicubic of the 8x8 input")
learn.show(axes[2], conds["colorize"], nrow=2, title="colorize: luma")
learn.show(axes[3], conds["inpaint"][:, :3], nrow=2, title="inpaint: hole (mask channel not shown)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Residual diffusion
#
# A super-resolution model that diffuses the image itself must first learn to copy its input, and in
# a short run it learns photo-like texture that ignores the condition (docs/benchmarks.md, "Image-to-image").
# `dff` can diffuse the **residual** instead (SRDiff, Li et al. 2022;
# `model.residual: true`): the data the model generates is `(x0 − cond) × residual_scale`, what
# bicubic upsampling misses, and sampling adds the condition back. The residual is small (std ≈ 0.11
# in [-1, 1] units here), so `translate_demo.yaml` scales it by 6 to about unit spread.

# %%
residual = (2 * examples - 1) - (2 * conds["sr4"] - 1)  # in the model's [-1, 1] units
print(f"std of the residual: {residual.std():.3f}; after x 6: {6 * residual.std():.3f}")
fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
learn.show(axes[0], conds["sr4"], nrow=2, title="condition (bicubic)")
learn.show(axes[1], (0.5 + 3 * residual).clamp(0, 1), nrow=2, title="residual x 6 (gray = 0)")
learn.show(axes[2], examples, nrow=2, title="target = condition + residual")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Train
#
# Both models use `configs/translate_demo.yaml` (cosine schedule, lr 1e-3, EMA 0.995, batch 16)
# with two changes for a short budget: the ADM residual U-Net (`--model.backbone adm`, 1.1 M
# parameters, faster per step on a CPU than the config's ConvNeXt U-Net) and the digits'
# objective, v-prediction with min-SNR-5 weighting instead of ε (it learned faster on this
# notebook's short budgets in a trial run whose numbers were not kept). The
# super-resolution model diffuses the scaled residual; the colorization model cannot (its
# 1-channel condition is not an RGB image to add back), so it diffuses the image. The config
# trains 1200 steps; here 500 and 250.

# %%
def train(name, steps, *overrides):
    """fit on the photo patches with translate_demo.yaml; returns the model (EMA used for sampling) and its run
    folder."""
    t0 = time.time()
    cli = fit(["--config", str(CONFIG_DIR / "translate_demo.yaml"), "--model.backbone", "adm", "--model.dim", "26",
               "--model.prediction", "v", "--model.loss_weighting", "min_snr",
               "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(RUN / name),
               "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
               "--checkpoint.every_n_train_steps", str(steps), *overrides])
    print(f"{name}: {steps} steps in {learn.record(f'{name}_train_s', time.time() - t0):.0f} s")
    return cli.model.eval(), Path(cli.trainer.log_dir)


sr_model, sr_run = train("sr4", learn.budget(500, 20))
color_model, color_run = train("colorize", learn.budget(250, 20), "--data.pairs", "colorize",
                               "--model.residual", "false")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, run in (("sr4 (residual x 6)", sr_run), ("colorize", color_run)):
    s, v = read_metric(run / "metrics.csv", "train/loss")
    k = max(1, len(v) // 10)
    ax.plot(s[k - 1:], np.convolve(v, np.ones(k) / k, mode="valid"), label=name)
ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_ylabel("loss (moving average)"), ax.grid(alpha=0.3), ax.legend()
ax.set_title("training loss: v-prediction, min-SNR-5 weighting", fontsize=9)
plt.show()

# %% [markdown]
# ## K samples, their mean, and bicubic
#
# Each condition has many plausible outputs, so the model gives a different one per seed
# (`num_samples=K`). Their **mean** estimates the posterior mean E[x | condition], the output with
# the least expected squared error: higher PSNR/SSIM than any one sample, but blurrier. A single
# sample is sharper but invents detail that is not the ground truth's, which PSNR and SSIM punish
# (the perception–distortion trade-off, Blau & Michaeli 2018).

# %%
K = 8
n_eval = learn.budget(32, 8)
target = targets[torch.linspace(0, len(targets) - 1, n_eval).long()]  # (n, 3, 32, 32)
cond = make_condition("sr4", target)
t0 = time.time()
samples = sr_model.sample(cond=cond, num_samples=K, sampler="ddim", steps=20, seed=0,
                          progress=False)  # (n K, 3, 32, 32)
print(f"{len(samples)} samples (DDIM 20) in {time.time() - t0:.1f} s")
first = samples.reshape(n_eval, K, *samples.shape[1:])[:, 0]  # one sample per condition
mean = average_samples(samples, K)  # (n, 3, 32, 32)

rows = 4
lowres = torch.nn.functional.interpolate(downsample(target[:rows], 4), scale_factor=4, mode="nearest")
columns = [("input 8x8", lowres), ("bicubic", cond[:rows])]
columns += [(f"sample {k + 1}", samples.reshape(n_eval, K, *samples.shape[1:])[:rows, k]) for k in range(3)]
columns += [(f"mean of {K}", mean[:rows]), ("ground truth", target[:rows])]
fig, axes = plt.subplots(1, len(columns), figsize=(1.6 * len(columns), 6.2))
for ax, (title, x) in zip(axes, columns):
    learn.show(ax, x, nrow=1, title=title)
fig.suptitle("x4 super-resolution of held-out patches", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# **Exercise.** PSNR = 10 log₁₀(1 / MSE) for images in [0, 1]. `dff.evaluation.psnr_ssim.psnr` computes it per
# image and averages over the batch (the mean of per-image PSNRs, not the PSNR of the batch's mean
# squared error: a few perfect images would otherwise hide the bad ones). Write it.

# %% tags=["exercise"]
# Exercise psnr: the mean over the batch of 10 log10(1 / MSE) per image
def psnr_by_hand(x, y):
    """x, y: (B, C, H, W) in [0, 1]. Returns a scalar tensor: the mean of the B per-image PSNRs in dB."""
    raise NotImplementedError("write the PSNR here")


# %%
psnr_by_hand = learn.check_psnr(psnr_by_hand)  # yours once written; until then the library's

# %% [markdown]
# Scores over the held-out patches: bicubic, one sample, and the mean of the first k samples
# (`translation_scores` adds the consistency: PSNR of the output downscaled ×4 against the input,
# which a faithful super-resolution keeps high however it fills in the detail).

# %%
per_cond = samples.reshape(n_eval, K, *samples.shape[1:])
ks = [1, 2, 4, 8]
scores = {k: translation_scores(per_cond[:, :k].mean(1), target, cond, condition="sr4") for k in ks}
bicubic_psnr, bicubic_ssim = psnr_by_hand(cond, target), ssim(cond, target)
print(f"bicubic           PSNR {learn.record('sr_bicubic_psnr', bicubic_psnr):.2f} dB  "
      f"SSIM {learn.record('sr_bicubic_ssim', bicubic_ssim):.3f}")
for k in ks:
    s = scores[k]
    learn.record(f"sr_mean{k}_psnr", s["psnr"]), learn.record(f"sr_mean{k}_ssim", s["ssim"])
    print(f"mean of {k} sample{'s' if k > 1 else ' '} PSNR {s['psnr']:.2f} dB  SSIM {s['ssim']:.3f}  "
          f"consistency {s['consistency_psnr']:.1f} dB")
fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
a1.plot(ks, [float(scores[k]["psnr"]) for k in ks], "o-", label="mean of k samples")
a2.plot(ks, [float(scores[k]["ssim"]) for k in ks], "o-", label="mean of k samples")
a1.axhline(float(bicubic_psnr), color="gray", ls="--", label="bicubic")
a2.axhline(float(bicubic_ssim), color="gray", ls="--", label="bicubic")
for ax, name in ((a1, "PSNR (dB)"), (a2, "SSIM")):
    ax.set_xscale("log", base=2), ax.set_xticks(ks, [str(k) for k in ks]), ax.set_xlabel("k")
    ax.set_ylabel(name), ax.grid(alpha=0.3), ax.legend(fontsize=8)
fig.suptitle(f"x4 super-resolution, {n_eval} held-out patches, DDIM 20", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Colorization
#
# Same network, same loss; the condition is one gray channel. Without a residual to start from, the
# model has to learn both to copy the structure of its input and to choose colours, on half the
# budget. Compare its PSNR with that of the gray input itself (repeated to RGB): a colorization that
# scores below it has changed the brightness, not only added colour.

# %%
gray = make_condition("colorize", target)  # (n, 1, 32, 32)
colors = color_model.sample(cond=gray, num_samples=3, sampler="ddim", steps=20, seed=0, progress=False)
per_gray = colors.reshape(n_eval, 3, *colors.shape[1:])
print(f"gray input   PSNR {learn.record('color_gray_psnr', psnr(gray.repeat(1, 3, 1, 1), target)):.2f} dB")
print(f"one sample   PSNR {learn.record('color_one_psnr', psnr(per_gray[:, 0], target)):.2f} dB")
print(f"mean of 3    PSNR {learn.record('color_mean3_psnr', psnr(per_gray.mean(1), target)):.2f} dB")
columns = [("gray input", gray[:rows])] + [(f"sample {k + 1}", per_gray[:rows, k]) for k in range(3)]
columns += [("mean of 3", per_gray[:rows].mean(1)), ("ground truth", target[:rows])]
fig, axes = plt.subplots(1, len(columns), figsize=(1.6 * len(columns), 6.2))
for ax, (title, x) in zip(axes, columns):
    learn.show(ax, x, nrow=1, title=title)
fig.suptitle("colorization of held-out patches", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Class labels and classifier-free guidance, by hand
#
# A class label is a condition too, and a cheap one: an embedding added to the time embedding. One network
# trained with labels, a share of them (`model.label_dropout`, 0.2) replaced by a "no label" class, learns both
# the conditional prediction (given y) and the unconditional one. Classifier-free guidance (Ho & Salimans 2022,
# Eq. 6) mixes the two at every step:
#
# $$\text{pred} = \text{pred}(x_t, \varnothing) + s\,\big(\text{pred}(x_t, y) - \text{pred}(x_t, \varnothing)\big)$$
#
# s = 0 is the unconditional model, s = 1 the conditional one, s > 1 pushes each sample towards what its label
# makes likely, at the cost of variety. Below: the digits recipe with labels, the mixture written out by hand and
# checked against dff's sampler, then a sweep of s: how often the shipped digits classifier reads the requested
# class, against FID.

# %%
from dff.data import load_digits_tensor
from dff.diffusion import ddim
from dff.evaluation import compute_features, fid_from_features, get_extractor

cli = fit(["--config", str(CONFIG_DIR / "pixel_digits.yaml"), "--model.num_classes", "10", "--data.labels", "true",
           "--trainer.max_steps", str(learn.budget(800, 20)), "--trainer.default_root_dir", str(RUN / "classes"),
           "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "0", "--eval.every_n_steps", "0"])
digits_model = cli.model.model.eval()  # the DiffusionModel inside the training shell
net, d = digits_model.ema, digits_model.diffusion
y = torch.arange(10).repeat(2)  # two of each class
null = torch.full_like(y, 10)  # the "no label" class: index num_classes
scale = 1.5


def guided(x_t, t, cond=None):
    """Eq. 6: the unconditional prediction plus scale times the label's pull."""
    conditional, unconditional = net(x_t, t, None, y), net(x_t, t, None, null)
    return unconditional + scale * (conditional - unconditional)


x_T = torch.randn(len(y), 1, 16, 16, generator=torch.Generator().manual_seed(0))
by_hand = ((ddim(guided, d, x_T, steps=20, clip_x0=True, progress=False) + 1) / 2).clamp(0, 1)
library = digits_model.sample(len(y), "ddim", steps=20, labels=y, guidance=scale, guidance_interval=None, x_T=x_T,
                              progress=False)
print(f"guidance by hand vs dff's sampler: max |difference| {(by_hand - library).abs().max():.1e}")

# %% [markdown]
# Now a sweep of s. "Accuracy": the share of samples the shipped digits classifier reads as the label asked for;
# FID against all the real digits, on that classifier's features. Guidance buys accuracy and, past a point, costs
# FID: the samples of a class crowd around its most typical shape. Guiding only at middle noise levels (the
# interval σ in (0.28, 5.42], dff's default, after Kynkäänniemi et al. 2024) keeps most of the accuracy and gives
# back some variety: the high-noise steps, where guidance pulls every sample towards one shape, are left alone.

# %%
judge = get_extractor("digits")
real = load_digits_tensor(16, 1)[0]
f_real = compute_features(judge, real)
n = learn.budget(300, 80)  # samples per setting (FID needs more than the 64 feature dimensions)
labels = torch.arange(n) % 10


def accuracy_and_fid(x):
    with torch.no_grad():
        acc = (judge.classify(x).argmax(1) == labels).float().mean().item()
    return acc, fid_from_features(compute_features(judge, x), f_real)


rows = []
for s_ in learn.budget([0.0, 1.0, 1.5, 3.0, 6.0], [0.0, 1.5]):
    for interval in ([None, (0.28, 5.42)] if s_ == 1.5 else [None]):
        x = digits_model.sample(n, "dpmpp_2m", steps=20, labels=labels, guidance=s_, guidance_interval=interval,
                                seed=0, progress=False)
        acc, fid = accuracy_and_fid(x)
        rows.append((s_, interval, acc, fid, x[:20]))
        where = "interval" if interval else "every"
        learn.record(f"guidance_{s_:g}_{where}_accuracy", acc), learn.record(f"guidance_{s_:g}_{where}_fid", fid)
        print(f"s = {s_:3.1f} {'in ' + str(interval) if interval else 'at every step':22s} accuracy {acc:6.1%}  "
              f"FID {fid:6.2f}")

fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
for s_, interval, acc, fid, _ in rows:
    a1.scatter(fid, acc, marker="s" if interval else "o", color="C1" if interval else "C0")
    a1.annotate(f"s={s_:g}" + (" (interval)" if interval else ""), (fid, acc), fontsize=8)
a1.set_xlabel("FID (lower: closer to the real digits)"), a1.set_ylabel("accuracy (the requested class)")
a1.grid(alpha=0.3)
strongest = max(rows, key=lambda r: r[0])
learn.show(a2, strongest[4], nrow=10, title=f"s = {strongest[0]:g}: two of each class, 0-9")
fig.tight_layout()
plt.show()

# %% [markdown]
# `dff sample RUN --class 3 --guidance 1.5` draws a class from the command line (the interval is the default);
# the measured sweep at 1,000 samples, and why the interval and label dropout 0.2 were chosen, is in
# `docs/benchmarks.md`, "Class-conditional digits with classifier-free guidance".

# %% [markdown]
# ## On a GPU, with real data
#
# The original project's image-to-image setting is `configs/translate_maps_64.yaml`: pix2pix
# *maps*, map (B) → satellite photo (A), random 128×128 crops resized to 64×64, ConvNeXt U-Net
# dim 64 with multipliers 1, 2, 4, 8 and attention, batch 16, lr 1e-4, 200,000 steps:
#
# ```bash
# dff data download maps --dir data                               # the pix2pix archive (needs internet)
# dff fit --config configs/translate_maps_64.yaml                 # --trainer.devices N for N GPUs
# dff translate runs/translate_maps_64/version_0 --input my_maps/ --out photos/ --num-samples 4
# dff eval runs/translate_maps_64/version_0 --data data/maps/val --average 8   # PSNR/SSIM of the mean of 8
# ```
#
# Your own pairs work the same way with `--data.pairs folders` (root/A, root/B) or `side_by_side`,
# and any single images with `--data.pairs sr4 | colorize | inpaint`.
#
# What this notebook measured in its full run (`notebooks/results/03_conditional_pixel.json`; 500 steps,
# 32 held-out patches, DDIM 20): bicubic 30.46 dB<!-- n: notebooks/results/03_conditional_pixel.json
# values.sr_bicubic_psnr --> / SSIM 0.616<!-- n: notebooks/results/03_conditional_pixel.json values.sr_bicubic_ssim -->,
# one sample 27.38 dB<!-- n: notebooks/results/03_conditional_pixel.json values.sr_mean1_psnr --> /
# 0.524<!-- n: notebooks/results/03_conditional_pixel.json values.sr_mean1_ssim -->, the mean of 8 samples
# 29.77 dB<!-- n: notebooks/results/03_conditional_pixel.json values.sr_mean8_psnr --> /
# 0.592<!-- n: notebooks/results/03_conditional_pixel.json values.sr_mean8_ssim -->. The longer runs of the
# super-resolution config, and the GPU time of its 1200 steps, are in docs/benchmarks.md ("Image-to-image"); it has
# no measurements of the maps configs yet.
