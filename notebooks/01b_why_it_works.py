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
# # 01b · Why it works: from the likelihood to L_simple, the denoiser and the score
#
# Notebook 01 drove the samplers with an *exact* denoiser. A real model is a network trained with a plain
# mean-squared error on the noise. This notebook shows why that is the right thing to train:
#
# 1. **L_simple from the ELBO**, in one page: DDPM's bound on the likelihood is a weighted mean-squared
#    error on ε, and L_simple drops the weight;
# 2. **the MSE-optimal denoiser is E[x₀ | x_t]**: you write the training loop, train a small network on
#    the 2-D mixture of notebook 01, and measure its distance to the exact E[x₀ | x_t];
# 3. **the score view**: the same network, divided by −σ_t, is the score ∇ log q_t(x_t) (Tweedie);
# 4. you write the **DDPM and DDIM steps** in ε-form and sample with the network;
# 5. **predict, then run**: what the denoiser does at t = T, what training on half the timesteps does, and
#    what the EMA of the weights is worth.
#
# The theory is in [notes/01b_why_it_works.md](../notes/01b_why_it_works.md). Before this notebook:
# [01_sandbox](01_sandbox.ipynb) (the process and the samplers); after it: [02_pixel](02_pixel.ipynb) (the
# same loss on images). The network is tiny: the whole notebook runs on a laptop CPU in a minute or two,
# and `DFF_QUICK=1` shrinks the training further, for CI (then the samples are noisier).

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
import time

import matplotlib.pyplot as plt
import torch

from dff.diffusion import GaussianDiffusion, ddim, ddim_timesteps, ddpm
from dff.diffusion.analytic import GaussianMixture

torch.manual_seed(0)
torch.set_num_threads(1)  # the network is tiny: one thread trains it faster than several
g = torch.Generator().manual_seed(0)
print("quick mode (DFF_QUICK=1): a short training, noisier samples" if learn.quick() else "full mode")

# %% [markdown]
# ## L_simple from the ELBO
#
# DDPM trains $p_\theta$ by a lower bound on $\log p_\theta(x_0)$ (Ho et al. 2020, Eq. 3). Written with
# the posteriors $q(x_{t-1} \mid x_t, x_0)$ of notebook 01, it is one term per step (Eq. 5):
#
# $$L = \mathbb E_q\Big[\underbrace{D_\mathrm{KL}\big(q(x_T \mid x_0)\,\|\,p(x_T)\big)}_{L_T}
# + \sum_{t>1}\underbrace{D_\mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0)\,\|\,p_\theta(x_{t-1} \mid x_t)\big)}_{L_{t-1}}
# \ \underbrace{-\ \log p_\theta(x_0 \mid x_1)}_{L_0}\Big]$$
#
# $L_T$ has nothing to learn. For $t > 1$ both distributions are Gaussian: the posterior has covariance
# $\tilde\beta_t I$, and the model's step is *chosen* as $\mathcal N(\mu_\theta(x_t, t), \sigma_t^2 I)$ with a
# fixed $\sigma_t^2$ ($\beta_t$ or $\tilde\beta_t$). Between two Gaussians of fixed isotropic covariances the
# KL divergence is the squared distance of the means over twice the second one's variance, plus a constant
# that depends on the variances only, so (Eq. 8)
#
# $$L_{t-1} = \mathbb E_q\Big[\frac{1}{2\sigma_t^2}\,
# \big\lVert\tilde\mu_t(x_t, x_0) - \mu_\theta(x_t, t)\big\rVert^2\Big] + C$$
#
# Now write $x_0$ through the noise, $x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}$
# (Eq. 4): the posterior mean becomes
# $\tilde\mu_t = \big(x_t - \tfrac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon\big)/\sqrt{\alpha_t}$ (Eq. 10).
# Give $\mu_\theta$ the same form with a network $\varepsilon_\theta(x_t, t)$ in place of ε (Eq. 11): the
# $x_t$ terms cancel and only the noise is left (Eq. 12),
#
# $$L_{t-1} - C = \mathbb E_{x_0, \varepsilon}\Big[\frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)}\,
# \big\lVert\varepsilon - \varepsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t\big)
# \big\rVert^2\Big].$$
#
# **L_simple** (Eq. 14) draws t uniformly and drops the weight:
#
# $$L_\text{simple} = \mathbb E_{t, x_0, \varepsilon}\,\big\lVert\varepsilon - \varepsilon_\theta(x_t, t)\big\rVert^2.$$
#
# Each t is still the same regression with the same best answer; what changes is how much each t counts
# against the others when the network cannot be perfect everywhere. The cell draws the weight the bound
# gives each t under the linear schedule, for both choices of $\sigma_t^2$, against L_simple's constant 1.

# %%
d = GaussianDiffusion(1000, "linear")  # the schedule of notebook 01; the network predicts eps
t_paper = torch.arange(2, d.T + 1)  # the KL terms L_1 ... L_{T-1} sit at the paper's t = 2, ..., T
i = t_paper - 1  # 0-indexed tables
beta, alpha, ab = d.betas[i], d.alphas[i], d.alpha_bar[i]
weights = {"sigma_t^2 = beta_t": beta**2 / (2 * beta * alpha * (1 - ab)),
           "sigma_t^2 = beta_tilde_t": beta**2 / (2 * d.beta_tilde[i] * alpha * (1 - ab))}  # Eq. 12's factor

fig, ax = plt.subplots(figsize=(7, 3.4))
for name, w in weights.items():
    ax.plot(t_paper, w / w.mean(), label=f"ELBO, {name} (over its mean)")
    print(f"{name:25s} weight at t = 2: {float(w[0] / w[-1]):5.1f} times the one at t = T; the first tenth of the "
          f"steps carries {float(w[: len(w) // 10].sum() / w.sum()):.0%} of the total")
ax.axhline(1, color="k", ls="--", label="L_simple: the same for every t")
ax.set_yscale("log"), ax.set_xlabel("t"), ax.set_ylabel("weight of the term at t"), ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The bound weights the nearly clean steps far more than the rest (the first tenth of the steps carries
# a third or more of its total), although the noise left to remove there is tiny and barely changes a
# sample; L_simple, flat, moves that weight to the noisier steps, where the denoising is hard and decides
# what the sample becomes. DDPM (Sec. 3.4, Table 2) found the
# unweighted loss gives better samples than the true bound; later work tunes the weight instead of
# dropping it (min-SNR, in note 01).
#
# ## The best network is E[x₀ | x_t]
#
# For each t the loss is a mean-squared error, and a function $f(x_t)$ minimises
# $\mathbb E\lVert f(x_t) - y\rVert^2$ when it is the conditional mean $E[y \mid x_t]$: the error splits
# into $\lVert f - E[y \mid x_t]\rVert^2$ plus the part no $f$ can touch, the variance of $y$ given $x_t$
# (the one-line proof is in the note). With $y = \varepsilon$ the best network is $E[\varepsilon \mid x_t]$,
# and the x₀ it implies, $(x_t - \sigma_t\,\hat\varepsilon)/\alpha_t$, is $E[x_0 \mid x_t]$: the same
# denoiser the samplers of notebook 01 used in closed form. A network trained on the mixture can therefore
# be compared with the best possible one, which real data never allows.
#
# The data, as in notebook 01: eight modes on a circle of radius 2, standard deviation 0.12, weights
# 3:1:2:1:3:1:2:1.

# %%
K = 8
angle = torch.arange(K) * 2 * math.pi / K
mixture = GaussianMixture(torch.tensor([3.0, 1, 2, 1, 3, 1, 2, 1]), torch.stack([2 * angle.cos(), 2 * angle.sin()], 1),
                          torch.full((K,), 0.12))
exact = mixture.denoiser(d)  # model(x_t, t) -> the exact E[eps | x_t], float64
data = mixture.sample(2000, g)  # (2000, 2), for the figures

# %% [markdown]
# **Predict, then run.** At t = T − 1 almost nothing of x₀ is left in x_t ($\bar\alpha_T \approx 4\cdot 10^{-5}$).
# Where does the best denoiser's $E[x_0 \mid x_t]$ point then: to the mode nearest to x_t, to the heaviest
# mode, or somewhere else? Decide before running the cell.

# %%
x_T = torch.randn(5, 2, generator=g, dtype=torch.float64)
for t in (d.T - 1, 300, 50):
    x0_hat = mixture.x0_mean(x_T if t == d.T - 1 else d.q_sample(data[:5], torch.full((5,), t), x_T),
                             float(d.alpha_bar[t]))
    print(f"t = {t:3d}: E[x0 | x_t] = " + "  ".join(f"({x:+.2f}, {y:+.2f})" for x, y in x0_hat.tolist()))
print(f"the data mean sum_k pi_k mu_k = ({float(mixture.pi @ mixture.mu[:, 0]):+.2f}, "
      f"{float(mixture.pi @ mixture.mu[:, 1]):+.2f}); the nearest mode is 2 away from it")

# %% [markdown]
# At t = T − 1 every x_t gets the same answer: the **mean of the data**, the centre of the circle, where
# no data lies at all. The MSE optimum hedges: with no information about x₀ left, the average is the
# guess with the least squared error. At t = 300 (rows from noisy data points) it has moved part of the way
# towards the modes the point could have come from, and at t = 50 it sits on one. A sampler's first steps
# therefore all point to the centre; only later steps pick a mode. This is why a single step from noise
# (notebook 01's DDIM with 2 steps) gives one blob in the middle.
#
# ## Exercise: the training loop
#
# Write the loop that trains $\varepsilon_\theta$ on L_simple (DDPM Algorithm 1) and keeps an exponential
# moving average (EMA) of its weights, the network you sample with. What it needs is in the note: the
# loss (its Eq. for L_simple), the jump $q(x_t \mid x_0)$ (`diffusion.q_sample`) and the EMA update. The
# check trains your loop for a few seconds on the mixture and measures the distance of your EMA network's
# x₀ from the exact $E[x_0 \mid x_t]$ at four noise levels; it names the level that fails.

# %% tags=["exercise"]
# Exercise train_denoiser: DDPM's Algorithm 1 with Adam, and an EMA copy of the network
def train_denoiser(net, data_sampler, diffusion, steps, ema_decay, lr=2e-3):
    """net(x_t, t) -> eps_hat, with x_t (B, D) and t (B,) long; data_sampler() -> a batch x0 (B, D);
    diffusion: a GaussianDiffusion (diffusion.T timesteps, diffusion.q_sample(x0, t, eps)). Takes `steps`
    Adam steps (learning rate lr) on L_simple (the note's Eq. of L_simple, DDPM Eq. 14) and returns a copy of
    net whose weights follow the trained ones as an exponential moving average of decay ema_decay, updated
    after every step."""
    raise NotImplementedError("write the training loop")


# %%
train_denoiser = learn.check_train_denoiser(train_denoiser)  # yours once written; until then the library's

# %% [markdown]
# Now the real training, with whichever loop passed: `learn.MLPDenoiser` is an MLP of x_t and a sinusoidal
# embedding of t (three hidden layers of 128), predicting ε.

# %%
net = learn.MLPDenoiser()  # eps_theta(x_t, t); after training, `net` holds the last step's raw weights
steps, batch = learn.budget(8000, 300), 512
ema_decay = learn.budget(0.998, 0.98)  # the EMA averages over about 1 / (1 - decay) steps
t0 = time.time()
ema_net = train_denoiser(net, lambda: mixture.sample(batch, g).float(), d, steps, ema_decay)
train_s = learn.record("train_s", time.time() - t0)
print(f"trained {sum(p.numel() for p in net.parameters())} weights for {steps} steps of {batch} points "
      f"in {train_s:.1f} s")

# %% [markdown]
# ## The network against the exact denoiser
#
# For points $x_t$ of the noisy data at a few noise levels, the arrows go from $x_t$ to the predicted
# $\hat x_0$: black for the exact $E[x_0 \mid x_t]$, red for the network's. At low noise both pull each point
# onto its own mode; at high noise both pull everything towards the centre.

# %%
levels = (50, 250, 550)
fig, axes = plt.subplots(1, len(levels), figsize=(14, 4.8), sharex=True, sharey=True)
for ax, t in zip(axes, levels):
    tt = torch.full((60,), t)
    x_t = d.q_sample(data[:60], tt, torch.randn(60, 2, generator=g, dtype=torch.float64))  # (60, 2)
    alpha, sigma = d.alpha_sigma(tt, x_t)
    with torch.no_grad():
        x0_net = (x_t - sigma * ema_net(x_t, tt)) / alpha
    x0_exact = mixture.x0_mean(x_t, float(d.alpha_bar[t]))
    ax.scatter(data[:, 0], data[:, 1], s=1, c="0.8")
    for x0_hat, color, name in ((x0_exact, "k", "exact E[x0 | x_t]"), (x0_net, "C3", "network")):
        dx = (x0_hat - x_t).numpy()
        ax.quiver(x_t[:, 0], x_t[:, 1], dx[:, 0], dx[:, 1], angles="xy", scale_units="xy", scale=1, color=color,
                  width=0.004, alpha=0.7, label=name)
    ax.set_title(f"t = {t}, alpha_bar = {float(d.alpha_bar[t]):.3f}", fontsize=9)
    ax.set_xlim(-4, 4), ax.set_ylim(-4, 4), ax.set_aspect("equal")
axes[0].legend(fontsize=8, loc="lower left")
fig.suptitle("x_t -> x0_hat: the exact denoiser and the trained network", fontsize=10)
plt.show()

# %% [markdown]
# The numbers behind it. For 4,000 points at each level: the network's mean squared distance to the exact
# $E[x_0 \mid x_t]$, and both denoisers' mean squared error against the true x₀. Since $E[x_0 \mid x_t]$ is the
# MSE optimum, the network can never beat it against the true x₀, and the two errors differ by exactly the
# squared distance between the denoisers (the split of the proof): the last column checks that.

# %%
print(f"{'t':>4s} {'alpha_bar':>9s} {'|net - exact|^2':>16s} {'MSE exact':>10s} {'MSE net':>9s} "
      f"{'MSE net - MSE exact - |net - exact|^2':>38s}")
for t in (50, 100, 250, 400, 550, 700):
    x0 = mixture.sample(4000, g)
    tt = torch.full((4000,), t)
    x_t = d.q_sample(x0, tt, torch.randn(x0.shape, generator=g, dtype=x0.dtype))
    alpha, sigma = d.alpha_sigma(tt, x_t)
    with torch.no_grad():
        x0_net = (x_t - sigma * ema_net(x_t, tt)) / alpha
    x0_exact = mixture.x0_mean(x_t, float(d.alpha_bar[t]))
    dist2, mse_exact, mse_net = (((a - b) ** 2).sum(1).mean() for a, b in ((x0_net, x0_exact), (x0_exact, x0),
                                                                            (x0_net, x0)))
    learn.record(f"dist2_t{t}", dist2), learn.record(f"mse_exact_t{t}", mse_exact)
    print(f"{t:4d} {float(d.alpha_bar[t]):9.3f} {float(dist2):16.4f} {float(mse_exact):10.4f} "
          f"{float(mse_net):9.4f} {float(mse_net - mse_exact - dist2):38.4f}")

# %% [markdown]
# How to read it: the network's squared distance to $E[x_0 \mid x_t]$ is a small fraction of the error that
# even the exact denoiser makes against the true x₀. That error is not a flaw: it is the uncertainty about x₀
# that x_t leaves, and it grows with t until it is the spread of the whole data.
# The last column is near zero up to sampling noise (the cross term of the split averages out).
# At the high-noise end the network's distance grows: an ε-prediction's error is multiplied by
# $\sigma_t/\alpha_t$ when it is turned into an x₀ (notebook 01), which is large there.
#
# ## The score view
#
# The same network is also the **score** of the noisy data, $\nabla_{x_t}\log q_t(x_t)$: the direction in
# which the density of x_t grows fastest. Tweedie's formula (Efron 2011) ties it to the denoiser,
#
# $$E[x_0 \mid x_t] = \frac{x_t + \sigma_t^2\,\nabla\log q_t(x_t)}{\alpha_t}
# \qquad\Longleftrightarrow\qquad \nabla\log q_t(x_t) = -\frac{E[\varepsilon \mid x_t]}{\sigma_t},$$
#
# so an ε-network is a score model up to the factor $-1/\sigma_t$, and L_simple is *denoising score
# matching* (Vincent 2011) with the weight $\sigma_t^2$; the samplers are solvers of the score's SDE and ODE
# (Song et al. 2021). First numerically, for the exact denoiser: the score by autograd on the mixture's
# noisy density `mixture.log_prob(x_t, alpha_bar)` against $-\hat\varepsilon/\sigma_t$.

# %%
for t in (10, 100, 400, 900):
    x_t = (3 * torch.rand(500, 2, generator=g, dtype=torch.float64) - 1.5) * 2  # (500, 2) in [-3, 3]^2
    x_t.requires_grad_(True)
    score = torch.autograd.grad(mixture.log_prob(x_t, float(d.alpha_bar[t])).sum(), x_t)[0]  # (500, 2)
    sigma = float((1 - d.alpha_bar[t]).sqrt())
    eps_hat = exact(x_t.detach(), torch.full((500,), t))
    print(f"t = {t:3d}: max |score - (-eps_hat / sigma)| = {float((score + eps_hat / sigma).abs().max()):.1e}  "
          f"(the score itself reaches {float(score.abs().max()):.1f})")

# %% [markdown]
# Equal to rounding. Now the learned field: $\sigma_t\times$ the score, i.e. $-\hat\varepsilon$, on a grid,
# the exact one in black and the network's in red on top. Near the data it points onto the modes; far from
# it, back towards the circle. The titles average the difference of the two fields twice: over points
# $x_t \sim q_t$, where training drew its inputs, and over the whole grid, whose corners and centre the
# noisy data rarely reaches at low noise.

# %%
side = torch.linspace(-3.5, 3.5, 17, dtype=torch.float64)
grid = torch.stack(torch.meshgrid(side, side, indexing="xy"), -1).reshape(-1, 2)  # (289, 2)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.9), sharey=True)
for ax, t in zip(axes, (100, 400)):
    tt, t_data = torch.full((len(grid),), t), torch.full((len(data),), t)
    x_t = d.q_sample(data, t_data, torch.randn(data.shape, generator=g, dtype=data.dtype))  # (2000, 2) ~ q_t
    with torch.no_grad():
        fields = {"exact": -exact(grid, tt), "network": -ema_net(grid, tt)}  # sigma_t * score, (289, 2)
        on_data = float((ema_net(x_t, t_data) - exact(x_t, t_data)).norm(dim=1).mean())
    ax.scatter(data[:, 0], data[:, 1], s=1, c="0.8")
    for (name, f), color, width in zip(fields.items(), ("k", "C3"), (0.007, 0.003)):
        ax.quiver(grid[:, 0], grid[:, 1], f[:, 0], f[:, 1], color=color, alpha=0.8, width=width, label=name)
    on_grid = float((fields["network"] - fields["exact"]).norm(dim=1).mean())
    ax.set_title(f"sigma_t x score at t = {t}; mean |network - exact|\n{on_data:.3f} over x_t ~ q_t, "
                 f"{on_grid:.3f} over the grid", fontsize=9)
    ax.set_aspect("equal")
axes[0].legend(fontsize=8, loc="lower left")
plt.show()

# %% [markdown]
# ## Exercises: the samplers' steps, in ε-form
#
# Both samplers of notebook 01 take a step from $x_t$ with the network's $\hat\varepsilon$. Write them
# with 0-indexed tables as in notebook 01: `alpha_bar[t]` is $\bar\alpha$ at the paper's step t + 1, and
# $\bar\alpha$ before the first step is 1. The checks name the case that fails.
#
# **DDPM's step** (DDPM Algorithm 2, line 4): the mean of Eq. 11 plus $\sigma_t z$, with
# $\sigma_t^2 = \tilde\beta_t$, the posterior variance (dff's `ddpm` default; the paper also uses $\beta_t$).
# `noise` is the $z$ the caller drew; at t = 0 no noise is added.

# %% tags=["exercise"]
# Exercise ddpm_step_eps: one step of DDPM's sampler written with the predicted noise
def ddpm_step_eps(x_t, t, eps_hat, betas, alpha_bar, noise):
    """x_t, eps_hat, noise: (B, ...) tensors; t: an int, 0-indexed; betas, alpha_bar: the (T,) tables.
    Returns x_{t-1}, shaped like x_t: the note's DDPM step (DDPM Algorithm 2, line 4) with the posterior
    variance beta_tilde_t (DDPM Eq. 7) as sigma_t^2."""
    raise NotImplementedError("write the DDPM step")


# %%
ddpm_step_eps = learn.check_ddpm_step_eps(ddpm_step_eps)  # yours once written; until then the library's

# %% [markdown]
# **DDIM's deterministic step** (Song et al. 2021, Eq. 12 with η = 0): from $x_t$ to $x_{t'}$ with
# $t' < t$ (not necessarily $t - 1$); $t' = -1$ means after the last step, where $\bar\alpha = 1$.

# %% tags=["exercise"]
# Exercise ddim_step: one deterministic DDIM step
def ddim_step(x_t, t, t_prev, eps_hat, alpha_bar):
    """x_t, eps_hat: (B, ...) tensors; t, t_prev: ints, 0-indexed, t_prev < t, t_prev = -1 after the last step;
    alpha_bar: the (T,) table. Returns x_{t_prev}, shaped like x_t: the note's DDIM step (Song et al. 2021,
    Eq. 12 with eta = 0)."""
    raise NotImplementedError("write the DDIM step")


# %%
ddim_step = learn.check_ddim_step(ddim_step)  # yours once written; until then the library's

# %% [markdown]
# Chained over the timesteps, your steps are the samplers: the cell runs them with the trained network
# and compares them with dff's `ddpm` (all T steps, the same noise) and `ddim` (50 steps).

# %%
n = learn.budget(2000, 300)
x_T = torch.randn(n, 2, generator=g)  # (n, 2) float32, the same starting noise for every sampler
x, noise_g = x_T, torch.Generator().manual_seed(1)
with torch.no_grad():
    for t in range(d.T - 1, -1, -1):  # DDPM: every timestep, fresh noise drawn as dff's ddpm draws it
        z = torch.randn(x.shape, generator=noise_g, dtype=x.dtype) if t > 0 else torch.zeros_like(x)
        x = ddpm_step_eps(x, t, ema_net(x, torch.full((n,), t)), d.betas, d.alpha_bar, z)
    ours_ddpm = x
    ts = ddim_timesteps(d.T, 50)  # DDIM's 50 timesteps, decreasing
    x = x_T
    for k, t in enumerate(ts):
        t_prev = int(ts[k + 1]) if k + 1 < len(ts) else -1
        x = ddim_step(x, int(t), t_prev, ema_net(x, torch.full((n,), int(t))), d.alpha_bar)
    ours_ddim = x
runs = {"data": data[:n],
        "exact, DDPM 1000": ddpm(exact, d, x_T.double(), generator=torch.Generator().manual_seed(1), progress=False),
        "network, DDPM 1000": ddpm(ema_net, d, x_T, generator=torch.Generator().manual_seed(1), progress=False),
        "exact, DDIM 50": ddim(exact, d, x_T.double(), steps=50, progress=False),
        "network, DDIM 50": ddim(ema_net, d, x_T, steps=50, progress=False)}
for name, ours in (("DDPM 1000", ours_ddpm), ("DDIM 50", ours_ddim)):
    print(f"your {name} chain against dff's: largest difference "
          f"{float((ours - runs['network, ' + name]).abs().max()):.1e}")


# %%
def coverage(x):
    """Total-variation distance between the samples' mode weights and the true ones, and the mean
    spread of the samples around their nearest mode (the data's is 0.12), as in notebook 01."""
    k = mixture.assign(x)
    weights = torch.bincount(k, minlength=K).double() / len(x)
    return 0.5 * float((weights - mixture.pi).abs().sum()), float((x.double() - mixture.mu[k]).std(0).mean())


def scatter_runs(runs, title):
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.6), sharex=True, sharey=True)
    for ax, (name, x) in zip(axes, runs.items()):
        tv, spread = coverage(x)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
        ax.set_title(f"{name}\nTV {tv:.3f}, spread {spread:.2f}", fontsize=9)
        ax.set_xlim(-3.5, 3.5), ax.set_ylim(-3.5, 3.5), ax.set_aspect("equal")
    fig.suptitle(title, fontsize=10)
    plt.show()


scatter_runs(runs, "the trained network next to the exact denoiser, the same starting noise")
for name, x in runs.items():
    print(f"{name:20s} TV of the mode weights {coverage(x)[0]:.3f}, spread {coverage(x)[1]:.3f}")

# %% [markdown]
# A few thousand steps of a small MLP and a plain MSE on ε, and the samples land on the eight modes in
# about the right proportions, like the exact denoiser's: this is the whole argument of the notebook. What
# differs is a spread a little wider than the data's and a few samples left between the modes, more with
# DDIM's 50 steps than with DDPM's 1000. Most likely this is where the network saw the fewest examples:
# at low noise, x_t rarely falls between the modes in training.
#
# ## Predict, then run: train on half of the timesteps
#
# Train the same network with the same budget, but draw t only from the **upper half**, t ≥ T/2, so that it
# never sees a nearly clean x_t. Then sample with DDPM from the same noise. Will the samples still land on
# the modes? Will they be too sharp, too wide, or in the wrong places? And where will the network's x₀ be
# off: at high noise or at low noise? Decide, then run.

# %%
t0 = time.time()
torch.manual_seed(0)
upper = learn.train_denoiser_library(learn.MLPDenoiser(), lambda: mixture.sample(batch, g).float(), d, steps,
                                     ema_decay, t_min=d.T // 2)
print(f"trained on t >= {d.T // 2} only, in {time.time() - t0:.1f} s")
for t in (50, 250, 550, 700):
    dist = {name: learn.x0_distance(m, mixture, d, t, generator=g) for name, m in (("all t", ema_net),
                                                                                   ("t >= T/2", upper))}
    print(f"t = {t}: distance of x0_hat to E[x0 | x_t]: trained on all t {dist['all t']:.3f}, "
          f"on t >= T/2 only {dist['t >= T/2']:.3f}")
half = {"data": data[:n], "trained on all t": runs["network, DDPM 1000"],
        "trained on t >= T/2": ddpm(upper, d, x_T, generator=torch.Generator().manual_seed(1), progress=False)}
scatter_runs(half, "DDPM 1000 from the same noise")

# %% [markdown]
# The network trained on the upper half is at least as good as the other where it was trained (t ≥ T/2:
# all its capacity went there) and far off below, where it never saw an input: the time embedding of a
# small t is new to it. The samples do not reach the modes at all: they end as one wide blob around the
# centre. The second half of the chain is the one that must carry each sample out to its mode, and it is
# driven by a wrong ε for hundreds of steps in a row. Each t is
# its own regression problem: what the loss never covers, the network does not know.
#
# ## Predict, then run: the EMA against the raw weights
#
# `net` still holds the weights of the last training step; `ema_net` their moving average. Which of the two
# is closer to $E[x_0 \mid x_t]$, and at which noise level is the difference largest? Decide, then run.

# %%
for t in (50, 250, 400, 550, 700):
    dist = {name: learn.x0_distance(m, mixture, d, t, generator=g) for name, m in (("ema", ema_net), ("raw", net))}
    print(f"t = {t}: distance of x0_hat to E[x0 | x_t]: EMA {dist['ema']:.3f}, raw weights {dist['raw']:.3f}")
raw = ddpm(net, d, x_T, generator=torch.Generator().manual_seed(1), progress=False)
print(f"DDPM samples: EMA TV {coverage(runs['network, DDPM 1000'])[0]:.3f}, raw weights TV {coverage(raw)[0]:.3f}")

# %% [markdown]
# The raw weights move with every batch: each Adam step chases that batch's noise, so the last step's
# network carries the error of the last few batches. The average of the recent weights cancels much of it,
# and the cancellation helps most at the noisy end, where a small error in ε becomes a large one in x₀. On
# images the same effect is what notebook 02 measures with FID.
#
# ## Next
#
# The argument did not depend on the data being two-dimensional: for images $E[x_0 \mid x_t]$ has no closed
# form, but the same loss still learns it. [Notebook 02](02_pixel.ipynb) trains the same objective on the
# digits, where the measures are FID and KID instead of a distance to the exact denoiser. The theory of
# this notebook, with the proofs: [notes/01b_why_it_works.md](../notes/01b_why_it_works.md).
