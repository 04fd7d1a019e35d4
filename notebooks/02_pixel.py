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
# # 02 · Pixel diffusion on the digits
#
# A diffusion model learns to undo noise. In this notebook you
#
# 1. take **one training step by hand**: a clean image x₀, a random timestep t and noise ε give the
#    noisy x_t; the network predicts; the loss compares the prediction with its target;
# 2. **train** the same model with `dff.fit` on scikit-learn's handwritten digits (the recipe of
#    `configs/pixel_digits.yaml`, as `dff demo` does);
# 3. look at what it learned: the **loss curve**, the **loss against t**, samples of the **EMA and the
#    raw weights**, and the **samplers' cost against their quality** (FID and KID).
#
# Everything runs on a laptop CPU in minutes (the time of each notebook's full run is in
# [notebooks/README.md](README.md)). With `DFF_QUICK=1` in the environment every training budget shrinks
# to a few seconds (that is how CI runs it): the code and the figures are the same, but the samples are
# then noise.

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
import yaml

from dff import PixelDiffusion, fit
from dff.data import load_digits_tensor
from dff.training.fit import CONFIG_DIR
from dff.viz import read_metric

RUN = Path("runs/notebooks/02_pixel")  # every file this notebook writes goes below this folder
torch.manual_seed(0)
print("quick mode (DFF_QUICK=1): tiny budgets, noisy figures" if learn.quick() else "full mode")

# %% [markdown]
# ## The data
#
# 1,797 digits of 8×8 pixels, upsampled to 16×16, white on black, in [0, 1]. Inside the model
# images live in [-1, 1].

# %%
images, labels = load_digits_tensor(image_size=16)  # (1797, 1, 16, 16) in [0, 1]
print(images.shape, labels[:10].tolist())
fig, ax = plt.subplots(figsize=(5, 5))
learn.show(ax, images[:64], nrow=8, title="64 training digits (16x16)")
plt.show()

# %% [markdown]
# ## One training step by hand
#
# The forward process (DDPM, Ho et al. 2020, Eq. 4) jumps from x₀ to any timestep t in one go:
#
# $$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\qquad \varepsilon\sim\mathcal N(0, I)$$
#
# `alpha_bar` is the table of ᾱ_t for t = 0 … T-1 (0-indexed, as in diffusers). Each sample of a
# batch has its own t, so ᾱ_t must be picked per sample and shaped to broadcast against the images.
#
# **Exercise.** Write `q_sample_by_hand`; the cell after it compares it with the library's
# `GaussianDiffusion.q_sample` on a few cases.

# %% tags=["exercise"]
# Exercise q_sample: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
def q_sample_by_hand(x0, t, eps, alpha_bar):
    """x0, eps: (B, ...); t: (B,) long timesteps; alpha_bar: (T,) table. Returns x_t, shaped like x0."""
    raise NotImplementedError("write x_t here")


# %%
q_sample_by_hand = learn.check_q_sample(q_sample_by_hand)  # yours once written; until then the library's

# %% [markdown]
# The digits recipe predicts **v** = α ε − σ x₀ (Salimans & Ho 2022) instead of ε, with
# α = √ᾱ_t and σ = √(1−ᾱ_t): near t = 0 the target is mostly the noise, near t = T mostly −x₀, so
# the network never has to divide by a vanishing number.
#
# **Exercise.** Write the v target.

# %% tags=["exercise"]
# Exercise v_target: v = alpha * eps - sigma * x0
def v_target(x0, eps, alpha, sigma):
    """x0, eps: (B, C, H, W); alpha, sigma: (B, 1, 1, 1). Returns v, shaped like x0."""
    raise NotImplementedError("write v here")


# %%
v_target = learn.check_v_target(v_target)

# %% [markdown]
# Now one loss evaluation, step by step, with the (untrained) network of the digits recipe. The
# recipe weights each sample's squared error by min-SNR-5 (Hang et al. 2023): `min_snr_weight`.
# The last line checks it against the library's `GaussianDiffusion.loss` with the same t and ε.

# %%
config = yaml.safe_load((CONFIG_DIR / "pixel_digits.yaml").read_text())
print("model:", config["model"])
untrained = PixelDiffusion(image_size=16, channels=1, **config["model"])
d = untrained.diffusion  # GaussianDiffusion: schedule, targets, loss

x0 = 2 * images[:6] - 1  # (6, 1, 16, 16) in [-1, 1]
t = torch.tensor([0, 100, 300, 500, 700, 999])  # one timestep per sample
eps = torch.randn_like(x0)
x_t = q_sample_by_hand(x0, t, eps, d.alpha_bar)  # (6, 1, 16, 16)
alpha, sigma = d.alpha_sigma(t, x0)  # (6, 1, 1, 1) each
with torch.no_grad():
    prediction = untrained.net(x_t, t)  # the network's v
    target = v_target(x0, eps, alpha, sigma)
    per_sample = ((prediction - target) ** 2).flatten(1).mean(1)  # (6,)
    loss_by_hand = (per_sample * d.min_snr_weight(t)).mean()
    loss_library = d.loss(untrained.net, x0, t=t, eps=eps)
print(f"loss by hand {loss_by_hand:.5f}   GaussianDiffusion.loss {loss_library:.5f}")
assert torch.allclose(loss_by_hand, loss_library, rtol=1e-5)

x0_hat, _ = d.x0_eps(prediction, x_t, t)  # what the untrained network believes x0 was
fig, axes = plt.subplots(3, 6, figsize=(8, 4.4))
for j in range(6):
    for i, (img, name) in enumerate([(x0, "x0"), (x_t, "x_t"), (x0_hat.clamp(-1, 1), "x0_hat")]):
        axes[i, j].imshow((img[j, 0] + 1) / 2, cmap="gray", vmin=0, vmax=1)
        axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
        axes[i, j].set_title(f"{name}, t={int(t[j])}" if i == 1 else name, fontsize=8)
fig.suptitle("one training example per column: x0, its noisy x_t, the untrained network's guess of x0", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Train with `fit`
#
# `fit` takes the arguments of the command line (`dff fit --config configs/pixel_digits.yaml ...`):
# Lightning trains, logs the loss to `metrics.csv`, keeps EMA weights and exports them. The shipped
# recipe trains 1600 steps; here 1000, and 30 in quick mode (the cell prints its time).

# %%
steps = learn.budget(1000, 30)
t0 = time.time()
cli = fit(["--config", str(CONFIG_DIR / "pixel_digits.yaml"), "--trainer.max_steps", str(steps),
           "--trainer.default_root_dir", str(RUN), "--trainer.enable_progress_bar", "false",
           "--samples.every_n_steps", "0", "--checkpoint.every_n_train_steps", str(steps)])
model = cli.model.eval()
run = Path(cli.trainer.log_dir)
d = model.diffusion
print(f"{steps} steps in {learn.record('train_s', time.time() - t0):.0f} s; run folder {run}")

# %% [markdown]
# ## The loss curve
#
# The loss falls fast and then slowly; it stays noisy because each batch draws new t and ε, and the
# loss depends strongly on t (next figure). The EMA of the weights averages that noise out.

# %%
log_steps, losses = read_metric(run / "metrics.csv", "train/loss")
k = max(1, len(losses) // 20)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(log_steps, losses, alpha=0.35, label="train/loss (logged every 10 steps)")
ax.plot(log_steps[k - 1:], np.convolve(losses, np.ones(k) / k, mode="valid"), label=f"moving average of {k}")
ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.grid(alpha=0.3), ax.legend()
ax.set_title("training loss (v-prediction, min-SNR-5 weighted)", fontsize=9)
plt.show()

# %% [markdown]
# ## The loss against t
#
# The same 256 digits and the same noise at 25 timesteps, through the EMA network. Left: the
# network's own loss (squared error on v, with and without the min-SNR weight). Right: the error of
# the x₀ it implies: near t = 0 x₀ is almost given, near t = T it must be guessed from nothing, so
# the network can only predict the average digit there.

# %%
ts = np.linspace(0, d.T - 1, 25).round().astype(int)
x0 = 2 * images[:256] - 1
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
v_err, v_weighted, x0_err = [], [], []
with torch.no_grad():
    for ti in ts:
        t = torch.full((len(x0),), int(ti))
        x_t = d.q_sample(x0, t, eps)
        out = model.ema(x_t, t)
        err = ((out - d.target(x0, t, eps)) ** 2).flatten(1).mean(1)  # (256,)
        v_err.append(err.mean().item())
        v_weighted.append((err * d.min_snr_weight(t)).mean().item())
        x0_hat, _ = d.x0_eps(out, x_t, t)
        x0_err.append(((x0_hat - x0) ** 2).mean().item())
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
a1.plot(ts, v_err, "o-", ms=3, label="squared error on v")
a1.plot(ts, v_weighted, "o-", ms=3, label="x min-SNR-5 weight (the training loss)")
a1.set_yscale("log"), a1.set_xlabel("t"), a1.legend(fontsize=8), a1.grid(alpha=0.3)
a2.plot(ts, x0_err, "o-", ms=3, color="C2")
a2.set_xlabel("t"), a2.set_ylabel("mean squared error of x0_hat"), a2.grid(alpha=0.3)
fig.suptitle("what the trained network gets wrong, by timestep", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Sampling: the denoising trajectory
#
# DDIM, 50 steps from pure noise: the digit's shape appears in the second half of the steps, its
# details last. (`dff.tools.demo.trajectory` records x_t along the way; `dff demo` draws the same figure.)

# %%
from dff.tools.demo import trajectory

states = trajectory(model, num=4, steps=50)  # [(t, x_t in [0, 1]) ...]
fig, axes = plt.subplots(1, len(states), figsize=(1.1 * len(states), 4.6))
for ax, (t_state, x_state) in zip(axes, states):
    learn.show(ax, x_state, nrow=1, title=f"t={t_state}")
fig.suptitle("denoising trajectory: x_t from t = T (left) to the sample (right)", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Samplers: cost against quality
#
# FID and KID compare the statistics of generated and real digits on the features of a small CNN
# trained on the digits (`dff.evaluation.DigitsFeatures`, shipped with dff; its numbers are on its
# own scale, not comparable with Inception FIDs). FID is biased upwards for small sets: compare
# only FIDs computed from the same number of images. As a floor, the same number of *real* digits
# scored against all of them (a subset of the reference, so a slightly optimistic floor).

# %%
from dff.evaluation import compute_features, fid_from_features, get_extractor, kid_from_features

extractor = get_extractor("digits")
f_real = compute_features(extractor, images)  # (1797, 64)
N = learn.budget(256, 80)  # images per setting (FID needs more than the 64 feature dimensions)


def scores(x):
    f = compute_features(extractor, x)
    return fid_from_features(f, f_real), kid_from_features(f, f_real, subset_size=len(f))[0]


floor_fid, floor_kid = scores(images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:N]])
learn.record("fid_real", floor_fid)
print(f"{N} real digits: FID {floor_fid:.2f}, KID {floor_kid:.4f}"
      " (the floor at this N; KID is unbiased, so it can be < 0)")

# %%
settings = learn.budget([("ddim", 10), ("ddim", 50), ("dpmpp_2m", 10), ("dpmpp_2m", 20),
                         ("euler", 10), ("euler", 20), ("euler", 50)], [("ddim", 5), ("dpmpp_2m", 5), ("euler", 5)])
results, grids = [], {}
for sampler, n_steps in settings:
    t0 = time.time()
    x = model.sample(N, sampler, steps=n_steps, seed=0, progress=False)
    seconds = time.time() - t0
    fid, kid = scores(x)
    results.append((sampler, n_steps, learn.record(f"fid_{sampler}_{n_steps}", fid), kid, seconds))
    grids[sampler, n_steps] = x[:36]
    print(f"{sampler:9s} {n_steps:3d} steps: FID {fid:6.2f}  KID {kid:.4f}  ({seconds:.1f} s)")

fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
for sampler in dict.fromkeys(r[0] for r in results):
    rows = [r for r in results if r[0] == sampler]
    a1.plot([r[1] for r in rows], [r[2] for r in rows], "o-", label=sampler)
    a2.plot([r[1] for r in rows], [r[3] for r in rows], "o-", label=sampler)
for ax, name, floor in ((a1, "FID", floor_fid), (a2, "KID", floor_kid)):
    ax.axhline(floor, color="gray", ls="--", label=f"{N} real digits")
    ax.set_xscale("log"), ax.set_xlabel("network evaluations (steps)"), ax.set_ylabel(name)
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
fig.suptitle(f"sample quality against cost, {N} samples per point (digits features)", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# The same seed through each sampler's cheapest (top) and most expensive (bottom) setting: at
# 10 steps Euler leaves a grainy haze that 50 steps remove; DPM-Solver++, a second-order solver, is done
# at 10. Euler's haze is not its order: deterministic DDIM is the same first-order Euler step, taken in
# σ = sqrt((1 - ᾱ) / ᾱ) (Karras et al. 2022, Sec. 3), and it is fine at 10 steps. The difference is
# the grid: Euler's Karras grid starts at the schedule's own σ_max, huge under the cosine schedule
# (ᾱ_T is nearly 0), and with ρ = 7 it spends most of its 10 levels near that top, where nothing
# forms, then crosses the range where the digit appears in two or three jumps. DDIM's evenly spaced
# timesteps spread the same 10 steps over that range.

# %%
samplers = list(dict.fromkeys(sampler for sampler, _ in grids))
fig, axes = plt.subplots(2, len(samplers), figsize=(3 * len(samplers), 6.2), squeeze=False)
for j, sampler in enumerate(samplers):
    mine = sorted(n for s_, n in grids if s_ == sampler)
    for i, n_steps in enumerate((mine[0], mine[-1])):
        learn.show(axes[i, j], grids[sampler, n_steps][:16], nrow=4, title=f"{sampler}, {n_steps} steps")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### DDIM is Euler
#
# Check the claim with the trained model. Write x̃ = x_t / sqrt(ᾱ_t) = x̂₀ + σ ε̂ with σ = sqrt((1 - ᾱ) / ᾱ):
# the probability-flow ODE is then dx̃/dσ = ε̂, and one Euler step from σ to σ' is x̃' = x̃ + (σ' - σ) ε̂.
# Taken on DDIM's own 10 timesteps (with x̂₀ clipped and ε̂ re-derived, as the sampler does), it gives DDIM's
# samples to float precision. Then the two grids side by side: the same first-order step, other σ levels.

# %%
from dff.diffusion import ddim_timesteps
from dff.diffusion.fast_samplers import edm_sigmas

d, net = model.diffusion, model.ema  # the process and the network the samplers call
ts = ddim_timesteps(d.T, 10, "leading").tolist()  # DDIM's 10 timesteps, decreasing
abar = d.alpha_bar.double()
x_T = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    x = x_T.double()  # x_t at t = ts[0]
    for i, t in enumerate(ts):
        a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
        x0_hat, eps_hat = d.x0_eps(net(x.float(), torch.full((16,), t)).double(), x, torch.full((16,), t),
                                   clip_x0=True)
        sigma, sigma_next = s / a, (0.0 if i + 1 == len(ts) else ((1 - abar[ts[i + 1]]) / abar[ts[i + 1]]).sqrt())
        x_tilde = x / a + (sigma_next - sigma) * eps_hat  # the Euler step in sigma
        x = x_tilde if i + 1 == len(ts) else x_tilde * abar[ts[i + 1]].sqrt()  # back to x_t (sigma 0: x0)
euler_by_hand = ((x.float() + 1) / 2).clamp(0, 1)
ddim_samples = model.sample(16, "ddim", steps=10, x_T=x_T, progress=False)
gap = learn.record("euler_by_hand_vs_ddim", (euler_by_hand - ddim_samples).abs().max())
print(f"Euler in sigma on DDIM's grid vs DDIM: max |difference| {gap:.1e}")
ddim_sigma = [((1 - abar[t]) / abar[t]).sqrt().item() for t in ts]
karras_sigma = edm_sigmas(d, 10)[0][:-1].tolist()  # the euler sampler's grid (rho = 7), sigma_max first
learn.record("karras_levels_above_100", sum(s > 100 for s in karras_sigma))
print("DDIM's sigma levels:  ", "  ".join(f"{v:.3g}" for v in ddim_sigma))
print("Euler's Karras levels:", "  ".join(f"{v:.3g}" for v in karras_sigma))

# %% [markdown]
# The first line is the identity: the same step on the same grid. The grids are what differ. Under the cosine
# schedule ᾱ at the last timestep is nearly 0, so the schedule's own σ_max (the first Karras level printed) is
# huge, and with ρ = 7 the Karras grid spends most of its 10 levels far above σ = 1, where x̃ is nearly all noise
# and the network can only predict the mean digit; the range around σ = 1, where strokes take shape, it crosses in
# two or three jumps. DDIM's evenly spaced timesteps put most of the same 10 steps there (compare the two lines).
# That, not the step's order, is Euler's FID at 10 steps above.

# %% [markdown]
# ## EMA against raw weights
#
# The network's weights after the last optimiser step (raw) and their exponential moving average
# (EMA, decay 0.995 here) sample from the same noise, and are scored by FID and KID as above. The
# raw weights jump with every noisy gradient step; their average is usually the better model,
# which is why `sample` uses EMA by default.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
for ax, use_ema in zip(axes, (True, False)):
    x = model.sample(N, "dpmpp_2m", steps=20, seed=0, use_ema=use_ema, progress=False)
    fid, kid = scores(x)
    name = "EMA" if use_ema else "raw"
    learn.record(f"fid_{name.lower()}", fid)
    print(f"{name:4s} weights: FID {fid:.2f}, KID {kid:.4f}")
    learn.show(ax, x[:36], nrow=6, title=f"{name} weights (DPM-Solver++ 20, seed 0): FID {fid:.2f}")
plt.show()

# %% [markdown]
# ## On a GPU, with your own images
#
# The same code scales up through a config: `configs/pixel_64.yaml` is the original
# DiffusionFastForward setting (64×64, ConvNeXt U-Net dim 64 with multipliers 1, 2, 4, 8 and
# attention, batch 16, lr 1e-4, EMA 0.9999, 200,000 steps, linear schedule, ε-prediction):
#
# ```bash
# dff fit --config configs/pixel_64.yaml --data.root path/to/images        # add --trainer.devices 4 for 4 GPUs
# dff fit --config configs/pixel_64.yaml --data.root path/to/images --ckpt_path last   # resume
# dff sample runs/pixel_64/version_0 --num 64 --sampler dpmpp_2m --steps 20 --out samples
# dff eval runs/pixel_64/version_0 --data path/to/images --extractor inception   # FID/KID; needs torch-fidelity
# ```
#
# What this notebook measured in its full run (`notebooks/results/02_pixel.json`, written by
# `python scripts/run_notebooks.py 02_pixel`; 1000 steps, 256 samples per sampler, FID on the digits features):
# DPM-Solver++ scored FID 3.66<!-- n: notebooks/results/02_pixel.json values.fid_dpmpp_2m_10 --> at 10 steps, DDIM
# 5.59<!-- n: notebooks/results/02_pixel.json values.fid_ddim_10 --> at 10 and
# 3.79<!-- n: notebooks/results/02_pixel.json values.fid_ddim_50 --> at 50, Euler
# 29.60<!-- n: notebooks/results/02_pixel.json values.fid_euler_10 --> at 10 and
# 4.00<!-- n: notebooks/results/02_pixel.json values.fid_euler_50 --> at 50, against
# 1.33<!-- n: notebooks/results/02_pixel.json values.fid_real --> for 256 real digits. Expect the same ordering on your
# data; measure FID with an extractor that suits it (Inception for photos, your own classifier's features for other
# images). docs/benchmarks.md has the longer runs, with several seeds, and the GPU settings.
