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
# ---

# %% [markdown]
# # 01 · The sandbox: the diffusion process before any network
#
# Everything a diffusion model does can be seen without training one. In this notebook you
#
# 1. noise a photo with the **forward process** and see why one jump q(x_t | x_0) equals t small steps;
# 2. compare the **schedules** (linear, quadratic, sigmoid, cosine) through ᾱ_t and the log-SNR;
# 3. convert between the three things a network can predict (**ε, x₀, v**) and see why predicting ε
#    at high noise is hard;
# 4. write the **posterior** q(x_{t-1} | x_t, x_0) yourself and run the **reverse chain** with the
#    true noise;
# 5. sample a **2-D Gaussian mixture** with DDPM, DDIM and DPM-Solver++ driven by its *exact*
#    denoiser: how many steps does a sampler need to find every mode in the right proportion?
#
# The theory is in [notes/01_diffusion_process.md](../notes/01_diffusion_process.md); the same figures
# for any image come from `dff explore --image PHOTO --out DIR`. No training here: the whole notebook
# runs in a minute or two on a laptop CPU (`DFF_QUICK=1` shrinks the sample counts further, for CI).

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

import math

import matplotlib.pyplot as plt
import torch

from dff.diffusion import GaussianDiffusion, ddim, ddpm, dpmpp_2m, output_from_x0_eps, x0_eps_from_output
from dff.diffusion.analytic import GaussianMixture
from dff.tools.explore import explore_image
from dff.viz import (forward_process_figure, reverse_chain_figure, schedules_figure, steps_vs_jump,
                     steps_vs_jump_figure, x0_prediction_figure)

torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
print("quick mode (DFF_QUICK=1): fewer samples" if learn.quick() else "full mode")

# %% [markdown]
# ## The forward process
#
# One step adds a little Gaussian noise and shrinks the signal so the variance stays bounded
# (DDPM, Ho et al. 2020, Eq. 2):
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\big(\sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\big)$$
#
# so the noise added at step t has standard deviation $\sqrt{\beta_t}$. Composing t steps gives a
# closed form, with $\alpha_t = 1-\beta_t$ and $\bar\alpha_t = \prod_{i=1}^{t}\alpha_i$ (Eq. 4):
#
# $$q(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big)$$
#
# The photo below (scikit-learn's `china.jpg`, 64×64, scaled to [-1, 1]) is the x₀ of every figure.
# The first row is the mean $\sqrt{\bar\alpha_t}\,x_0$: the signal fades towards 0 (gray). The other
# rows are draws of x_t: by t = T/2 the photo is hard to see, at t = T it is gone.

# %%
x0 = explore_image(None, 64)  # (3, 64, 64) in [-1, 1]
diffusion = GaussianDiffusion(1000, "linear")
forward_process_figure(x0, diffusion, generator=g)

# %% [markdown]
# ## t small steps or one jump
#
# Run t steps of q(x_t | x_{t-1}) from x₀ on many chains, and draw x_t in one jump from q(x_t | x_0).
# For every t, fit x_t ≈ a·x₀ + s·noise over the chains. Both must give $a = \sqrt{\bar\alpha_t}$ and
# $s = \sqrt{1-\bar\alpha_t}$. This is why training can pick any t at random and noise x₀ in one go.

# %%
steps_vs_jump_figure(x0, diffusion, draws=learn.budget(16, 4), generator=g)

# %%
m = steps_vs_jump(x0, diffusion, draws=learn.budget(16, 4), generator=g)
for t in (1, 250, 500, 1000):
    print(f"t={t:4d}  closed form a={m['alpha'][t - 1]:.4f} s={m['sigma'][t - 1]:.4f}   "
          f"steps a={m['a_steps'][t - 1]:.4f} s={m['s_steps'][t - 1]:.4f}   "
          f"jump a={m['a_jump'][t - 1]:.4f} s={m['s_jump'][t - 1]:.4f}")

# %% [markdown]
# **Try it.** Scale the step noise by β_t instead of √β_t (the mistake of the original project's
# note) and the chains never reach the noise: the signal still fades (that part is right), but after
# 1000 steps the standard deviation is about 0.14 instead of 1, so x_T is a near-constant gray image,
# not the N(0, I) the sampler starts from.

# %%
x = x0.expand(8, *x0.shape).clone()
for t in range(diffusion.T):
    beta = float(diffusion.betas[t])
    x = (1 - beta) ** 0.5 * x + beta * torch.randn(x.shape, generator=g)  # wrong: beta, not sqrt(beta)
a_wrong = float((x.mean(0) * x0).sum() / (x0 * x0).sum())
print(f"with beta_t instead of sqrt(beta_t): a = {a_wrong:.3f}, s = {float((x - a_wrong * x0).std()):.3f} "
      f"(should be {m['alpha'][-1]:.3f} and {m['sigma'][-1]:.3f})")

# %% [markdown]
# ## Schedules and the log-SNR
#
# A schedule is the list β_1 … β_T. What the model sees is the signal-to-noise ratio
# $\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$; its logarithm is the clearest way to compare
# schedules. The linear schedule of DDPM destroys the image early
# (45%<!-- n: notebooks/results/01_sandbox.json values.share_below_-3_linear*100 --> of its steps are spent at
# log-SNR below -3, nearly pure noise); the cosine schedule (Nichol & Dhariwal 2021) spreads the noise levels more
# evenly (14%<!-- n: notebooks/results/01_sandbox.json values.share_below_-3_cosine*100 --> of its steps below -3).
# The bottom rows use the same noise, so only the schedule differs.

# %%
schedules_figure(x0, names=["linear", "quadratic", "sigmoid", "cosine"], generator=g)

# %%
for name in ("linear", "quadratic", "sigmoid", "cosine"):
    d = GaussianDiffusion(1000, name)
    log_snr = torch.log(d.alpha_bar / (1 - d.alpha_bar))
    share = learn.record(f"share_below_-3_{name}", (log_snr < -3).double().mean())
    print(f"{name:9s}  alpha_bar_T = {float(d.alpha_bar[-1]):.2e}   share of steps with log-SNR < -3: {share:.0%}")

# %% [markdown]
# ## What a network predicts: ε, x₀ or v
#
# Given x_t, knowing any one of ε, x₀ or $v = \alpha_t\varepsilon - \sigma_t x_0$ (Salimans & Ho 2022)
# gives the other two, with $\alpha_t = \sqrt{\bar\alpha_t}$, $\sigma_t = \sqrt{1-\bar\alpha_t}$:
#
# $$x_0 = (x_t - \sigma_t\varepsilon)/\alpha_t, \qquad x_0 = \alpha_t x_t - \sigma_t v, \qquad
# \varepsilon = \sigma_t x_t + \alpha_t v$$
#
# dff converts in one place, `dff.diffusion.x0_eps_from_output` and `output_from_x0_eps`. Below, every
# prediction type goes out and comes back.

# %%
t = torch.tensor([100, 500, 900])
x0_b = x0.expand(3, *x0.shape)  # (3, 3, 64, 64)
eps = torch.randn(x0_b.shape, generator=g)
x_t = diffusion.q_sample(x0_b, t, eps)
alpha, sigma = diffusion.alpha_sigma(t, x_t)
for prediction in ("eps", "x0", "v"):
    out = output_from_x0_eps(prediction, x0_b, eps, alpha, sigma)  # what the network should output
    x0_back, eps_back = x0_eps_from_output(prediction, out, x_t, alpha, sigma)
    print(f"{prediction:3s}: largest error of x0 {float((x0_back - x0_b).abs().max()):.1e}, "
          f"of eps {float((eps_back - eps).abs().max()):.1e}")

# %% [markdown]
# The conversions are exact, but a network is never exact. An error δ in a predicted ε becomes an
# error $\delta\,\sigma_t/\alpha_t$ in x₀: negligible early, a factor of 150 at t = T with the
# linear schedule. The last row below uses a noise estimate off by 0.1 standard deviations. This is
# one reason samplers clip x₀ to [-1, 1] in pixel space, and why v-prediction is preferred for
# schedules that reach pure noise.

# %%
x0_prediction_figure(x0, diffusion, generator=g)

# %% [markdown]
# ## The posterior and the reverse chain
#
# Going back one step is easy *if x₀ is known*: q(x_{t-1} | x_t, x_0) is Gaussian (Eqs. 6-7) with
#
# $$\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0 +
# \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t, \qquad
# \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t$$
#
# and $\bar\alpha_0 = 1$. DDPM's sampler replaces x₀ by the network's estimate and draws from this
# Gaussian, step after step.
#
# **Exercise.** Write the posterior mean $\tilde\mu_t$; the next cell checks it against the library's
# `GaussianDiffusion.q_posterior`. The tables are 0-indexed: `alpha_bar[t]` is ᾱ at the paper's step
# t + 1, and ᾱ of the step before t = 0 is 1.

# %% tags=["exercise"]
# Exercise posterior_mean: mu_tilde = sqrt(ab_prev) beta / (1 - ab) x0 + sqrt(alpha) (1 - ab_prev) / (1 - ab) x_t
def posterior_mean(x0, x_t, t, betas, alpha_bar):
    """x0, x_t: (B, ...); t: (B,) long; betas, alpha_bar: (T,) tables. Returns mu_tilde, shaped like x0."""
    raise NotImplementedError("write the posterior mean")


# %%
posterior_mean = learn.check_posterior_mean(posterior_mean)  # yours once written; until then the library's

# %% [markdown]
# Now run the reverse chain with the **true noise**: an oracle model that knows x₀ outputs, at every
# step, exactly the ε that is in x_t. DDPM (fresh noise at each of its 1000 steps) and DDIM
# (deterministic, 50 steps) both start from pure noise N(0, I) and land on the photo exactly. A real
# network only estimates this ε, and its errors are what the samplers have to live with.

# %%
reverse_chain_figure(x0, diffusion, generator=g)

# %% [markdown]
# ## Sampling a distribution with its exact denoiser
#
# For a Gaussian mixture the best possible network is known in closed form: $E[x_0 \mid x_t]$ is a
# responsibility-weighted average of each component's posterior mean
# (`dff.diffusion.analytic.GaussianMixture`). Driving the real samplers with it separates the error of
# the *sampler* from the error of a *network*.
#
# The data: eight modes on a circle of radius 2, standard deviation 0.12, with weights 3:1:2:1:3:1:2:1.

# %%
K = 8
angle = torch.arange(K) * 2 * math.pi / K
mixture = GaussianMixture(torch.tensor([3.0, 1, 2, 1, 3, 1, 2, 1]), torch.stack([2 * angle.cos(), 2 * angle.sin()], 1),
                          torch.full((K,), 0.12))
n = learn.budget(2000, 300)
d = GaussianDiffusion(1000, "linear")
denoiser = mixture.denoiser(d)
x_T = torch.randn(n, 2, generator=g, dtype=torch.float64)  # the same starting noise for every sampler


def coverage(x):
    """Total-variation distance between the samples' mode weights and the true ones, and the mean
    spread of the samples around their nearest mode (the data's is 0.12)."""
    k = mixture.assign(x)
    weights = torch.bincount(k, minlength=K).double() / len(x)
    return 0.5 * float((weights - mixture.pi).abs().sum()), float((x - mixture.mu[k]).std(0).mean())


runs = {"data": mixture.sample(n, g),
        "DDPM 1000": ddpm(denoiser, d, x_T, generator=g, progress=False)}
for steps in (2, 5, 10, 50):
    runs[f"DDIM {steps}"] = ddim(denoiser, d, x_T, steps=steps, progress=False)
    runs[f"DPM-Solver++ {steps}"] = dpmpp_2m(denoiser, d, x_T, steps=steps, progress=False)

fig, axes = plt.subplots(2, 5, figsize=(16, 6.6), sharex=True, sharey=True)
for ax, name in zip(axes.flat, ["data", "DDPM 1000", "DDIM 2", "DDIM 5", "DDIM 10", "DDIM 50",
                                "DPM-Solver++ 2", "DPM-Solver++ 5", "DPM-Solver++ 10", "DPM-Solver++ 50"]):
    x = runs[name].numpy()
    tv, spread = coverage(runs[name])
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
    ax.set_title(f"{name}\nTV {tv:.3f}, spread {spread:.2f}", fontsize=9)
    ax.set_xlim(-3.5, 3.5), ax.set_ylim(-3.5, 3.5), ax.set_aspect("equal")
fig.suptitle("the same exact denoiser, different samplers and numbers of steps", fontsize=10)
plt.show()

# %%
print(f"{'sampler':18s} {'TV of weights':>14s} {'spread':>8s}")
for name, x in runs.items():
    tv, spread = coverage(x)
    learn.record(f"tv_{name.replace(' ', '_')}", tv), learn.record(f"spread_{name.replace(' ', '_')}", spread)
    print(f"{name:18s} {tv:14.3f} {spread:8.3f}")

# %% [markdown]
# What to read from it:
#
# - **DDPM with all 1000 steps** reproduces the mixture: its weights are as far from the true ones
#   (TV 0.030<!-- n: notebooks/results/01_sandbox.json values.tv_DDPM_1000 -->) as 2,000 fresh draws of the data
#   (TV 0.027<!-- n: notebooks/results/01_sandbox.json values.tv_data -->), and its spread is the data's.
# - **Few steps leave samples between the modes.** With 2 steps every sampler ends in one blob at
#   the centre (spread 1.0<!-- n: notebooks/results/01_sandbox.json values.spread_DDIM_2 --> for DDIM): its only real
#   step replaces all modes by their average (and with the
#   default 'leading' spacing the first step is even taken at t = T/2). At 5 steps the samples reach
#   the circle but fill it; at 10 steps DPM-Solver++ has the weights
#   (TV 0.033<!-- n: notebooks/results/01_sandbox.json values.tv_DPM-Solver++_10 -->) and DDIM nearly, both
#   still leaving a thin ring between the modes; at 50 both deterministic samplers match DDPM.
# - A second-order solver (DPM-Solver++) gets there in fewer steps than DDIM: the cost of a sample
#   is the number of network calls, so this is the 20-step default of `dff sample`.
#
# With a trained network the picture is the same plus the network's own errors; notebook 02 measures
# it on the digits with FID and KID.

# %% [markdown]
# ## For your own data
#
# Nothing here depends on the image: `dff explore --image YOUR_IMAGE --out DIR` writes the same
# figures for a map tile, a micrograph or a scan, at the size you train at (`--size`), for any schedule
# (`--schedule cosine`). Look at the forward grid first: if your images are still recognisable at
# t = T/2, you have large, smooth structures that the noise destroys late, and the schedule should be
# noisier, not less noisy: the cosine schedule keeps more signal than the linear one at every t
# (compare `d.alpha_bar[T // 2]` of the two), which suits small images like the digits; large or smooth
# images call for the linear schedule or a cosine shifted towards noise (Hoogeboom et al. 2023; Chen
# 2023). With a trained run, `--run runs/NAME/version_0` adds its denoising trajectory as a strip and a
# GIF.
#
# On a GPU with real data the settings change, not the process: `configs/pixel_64.yaml` (64×64 maps,
# the original project's U-Net) and `configs/latent_maps_256.yaml` (256×256 through an autoencoder) keep
# the original project's T = 1000, linear schedule and ε-prediction; the digits recipe of notebook 02
# (`configs/pixel_digits.yaml`) uses the cosine schedule with v-prediction and min-SNR weighting, the
# choice docs/benchmarks.md measured as better on small data.
#
# Next: [notebook 01b](01b_why_it_works.ipynb) shows why a network trained with a plain mean-squared error can
# take the exact denoiser's place (you train one on this mixture and compare), then notebook 02 trains a first
# network on images.
