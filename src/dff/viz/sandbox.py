"""The sandbox: figures of the diffusion process on one image, before any network is trained.

Each figure function takes one clean image x0 (C, H, W) in model space [-1, 1] and a
`GaussianDiffusion`, and returns a matplotlib Figure (saved when `path=` is given). The numbers
behind the figures come from separate functions (`steps_vs_jump`, `oracle_chain`) so tests can
check them against the closed forms.

Times are the paper's: t = 0 is the clean image, t = T the last noise level. The code's tables are
0-indexed (code index t - 1 holds the paper's step t), so q_sample(x0, t - 1) draws x_t.

Notation (Ho et al. 2020): alpha_bar_t = prod_{i=1..t} (1 - beta_i); x_t = alpha_t x0 + sigma_t eps
with alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t)   (DDPM Eq. 4).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ..diffusion import GaussianDiffusion, ddim, ddim_timesteps, ddpm, make_betas, output_from_x0_eps
from .plots import save_figure, show_image


def image_space(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped for display."""
    return ((x + 1) / 2).clamp(0, 1)


def paper_times(T: int, n: int = 5) -> list[int]:
    """t = 0, T/n, 2T/n, ..., T (rounded): the columns of the sandbox figures."""
    return [round(k * T / n) for k in range(n + 1)]


def draw_x_t(diffusion: GaussianDiffusion, x0: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    """x_t = alpha_t x0 + sigma_t eps at the paper's time t (t = 0: x0 itself); x0 (C, H, W) or (B, C, H, W)."""
    if t == 0:
        return x0.expand_as(eps).clone()
    x0 = x0.expand_as(eps)
    return diffusion.q_sample(x0, torch.full((eps.shape[0],), t - 1, dtype=torch.long), eps)


def alpha_sigma_at(diffusion: GaussianDiffusion, t: int) -> tuple[float, float]:
    """(alpha_t, sigma_t) at the paper's time t as floats ((1, 0) at t = 0)."""
    ab = 1.0 if t == 0 else float(diffusion.alpha_bar[t - 1])
    return ab ** 0.5, (1 - ab) ** 0.5


# ===================================================================== forward process
def forward_process_figure(x0: torch.Tensor, diffusion: GaussianDiffusion, *, times: Optional[Sequence[int]] = None,
                           draws: int = 3, generator: Optional[torch.Generator] = None, path=None) -> Figure:
    """Rows: the mean alpha_t x0 of q(x_t | x0), then `draws` samples of x_t; columns: t = 0 ... T."""
    times = list(times or paper_times(diffusion.T))
    eps = torch.randn((draws, *x0.shape), generator=generator)  # (draws, C, H, W), the same noise in every column
    fig = Figure(figsize=(1.5 * len(times), 1.5 * (draws + 1) + 0.5), layout="constrained")
    axes = fig.subplots(draws + 1, len(times), squeeze=False)
    for j, t in enumerate(times):
        alpha, sigma = alpha_sigma_at(diffusion, t)
        show_image(axes[0, j], image_space(alpha * x0), f"t={t}\nalpha {alpha:.3f}\nsigma {sigma:.3f}")
        x_t = draw_x_t(diffusion, x0, t, eps)  # (draws, C, H, W)
        for i in range(draws):
            show_image(axes[i + 1, j], image_space(x_t[i]))
    axes[0, 0].set_ylabel("mean", fontsize=8)
    for i in range(draws):
        axes[i + 1, 0].set_ylabel(f"draw {i + 1}", fontsize=8)
    fig.suptitle(f"forward process q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I), {diffusion.schedule} schedule, "
                 f"T={diffusion.T}", fontsize=9)
    return save_figure(fig, path)


# ===================================================================== steps vs. jump
def fit_moments(x_t: torch.Tensor, x0: torch.Tensor) -> tuple[float, float]:
    """(a, s) with x_t ~ a x0 + s N(0, I) fitted over draws (B, ...) of x_t: a by least squares of the
    mean over draws against x0, s the standard deviation of x_t - a x0."""
    a = float((x_t.mean(0) * x0).sum() / (x0 * x0).sum())
    return a, float((x_t - a * x0).std())


def steps_vs_jump(x0: torch.Tensor, diffusion: GaussianDiffusion, *, draws: int = 16, size: int = 16,
                  generator: Optional[torch.Generator] = None) -> dict[str, np.ndarray]:
    """The moments of x_t reached by t single steps q(x_t | x_{t-1}) (DDPM Eq. 2) and by the jump
    q(x_t | x_0) (DDPM Eq. 4), fitted at every t = 1..T over `draws` chains, with the closed form
    alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t). Every pixel follows the same law, so
    the moments are fitted on x0 area-resized to at most `size` x `size` pixels, which keeps T steps fast."""
    T = diffusion.T
    if x0.shape[-1] > size or x0.shape[-2] > size:
        x0 = torch.nn.functional.interpolate(x0[None], size=(min(size, x0.shape[-2]), min(size, x0.shape[-1])),
                                             mode="area")[0]  # (C, size, size)
    x0b = x0.expand(draws, *x0.shape)  # (draws, C, H, W)
    x = x0b.clone()
    out = {k: np.zeros(T) for k in ("a_steps", "s_steps", "a_jump", "s_jump")}
    for t in range(T):  # code index t: the paper's step t + 1
        tt = torch.full((draws,), t, dtype=torch.long)
        x = diffusion.q_step_sample(x, tt, torch.randn(x.shape, generator=generator))
        jump = diffusion.q_sample(x0b, tt, torch.randn(x.shape, generator=generator))
        out["a_steps"][t], out["s_steps"][t] = fit_moments(x, x0)
        out["a_jump"][t], out["s_jump"][t] = fit_moments(jump, x0)
    out["alpha"] = diffusion.alpha_bar.numpy() ** 0.5
    out["sigma"] = (1 - diffusion.alpha_bar.numpy()) ** 0.5
    out["t"] = np.arange(1, T + 1)
    return out


def steps_vs_jump_figure(x0: torch.Tensor, diffusion: GaussianDiffusion, *, draws: int = 16,
                         generator: Optional[torch.Generator] = None, path=None) -> Figure:
    """alpha_t and sigma_t fitted to x_t after t single steps and after one jump, against the closed form."""
    m = steps_vs_jump(x0, diffusion, draws=draws, generator=generator)
    every = max(1, diffusion.T // 40)
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, sym, closed in ((axes[0], "a", "alpha"), (axes[1], "s", "sigma")):
        ax.plot(m["t"], m[closed], "k-", lw=1.2, label=f"closed form {closed}_t")
        ax.plot(m["t"][::every], m[f"{sym}_steps"][::every], "o", ms=3.5, mfc="none", label="t single steps")
        ax.plot(m["t"][::every], m[f"{sym}_jump"][::every], "x", ms=3.5, label="one jump from x_0")
        ax.set_xlabel("t"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    axes[0].set_title("mean: x_t's coefficient on x_0", fontsize=9)
    axes[1].set_title("standard deviation of x_t around it", fontsize=9)
    err = max(np.abs(m["a_steps"] - m["alpha"]).max(), np.abs(m["s_steps"] - m["sigma"]).max())
    fig.suptitle(f"{diffusion.T} steps of q(x_t | x_(t-1)) reach q(x_t | x_0): largest gap to the closed form "
                 f"{err:.3f} ({draws} chains, {diffusion.schedule})", fontsize=9)
    return save_figure(fig, path)


# ===================================================================== schedules
def log_snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """log SNR(t) = log(alpha_bar_t / (1 - alpha_bar_t))   (Kingma et al. 2021, Eq. 2 with the VP schedule)."""
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def schedules_figure(x0: torch.Tensor, *, names: Sequence[str], timesteps: int = 1000,
                     times: Optional[Sequence[int]] = None, generator: Optional[torch.Generator] = None,
                     path=None) -> Figure:
    """beta_t, alpha_bar_t and log-SNR of each named schedule; below, the image at the same times t
    under each schedule (the same noise everywhere, so only the schedule differs)."""
    T = timesteps
    times = list(times or [round(T * f) for f in (0.1, 0.25, 0.5, 0.75, 0.9)])
    eps = torch.randn((1, *x0.shape), generator=generator)  # (1, C, H, W)
    fig = Figure(figsize=(max(10, 1.6 * len(times) + 1.5), 3.2 + 1.5 * len(names)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.2, 1.5 * len(names)])
    curves = top.subplots(1, 3)
    t = np.arange(1, T + 1)
    for name in names:
        betas = make_betas(name, T)
        ab = torch.cumprod(1 - betas, 0)
        curves[0].plot(t, betas.numpy(), label=name)
        curves[1].plot(t, ab.numpy(), label=name)
        curves[2].plot(t, log_snr(ab).numpy(), label=name)
    for ax, title in zip(curves, ("beta_t (log scale)", "alpha_bar_t", "log SNR(t)")):
        ax.set_title(title, fontsize=9), ax.set_xlabel("t"), ax.grid(alpha=0.3)
    curves[0].set_yscale("log"), curves[0].legend(fontsize=8)
    images = bottom.subplots(len(names), len(times), squeeze=False)
    for i, name in enumerate(names):
        diffusion = GaussianDiffusion(T, name)
        for j, tj in enumerate(times):
            x_t = draw_x_t(diffusion, x0, tj, eps)[0]
            show_image(images[i, j], image_space(x_t), f"t={tj}" if i == 0 else "")
        images[i, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"schedules side by side, T={T}; the same image and noise at the same t", fontsize=9)
    return save_figure(fig, path)


# ===================================================================== x0 from x_t
def x0_from_noise(x_t: torch.Tensor, eps: torch.Tensor, diffusion: GaussianDiffusion, t: int) -> torch.Tensor:
    """x0_hat = (x_t - sigma_t eps) / alpha_t   (DDPM Eq. 4 solved for x0), at the paper's time t >= 1."""
    alpha, sigma = alpha_sigma_at(diffusion, t)
    return (x_t - sigma * eps) / alpha


def x0_prediction_figure(x0: torch.Tensor, diffusion: GaussianDiffusion, *, times: Optional[Sequence[int]] = None,
                         eps_error: float = 0.1, generator: Optional[torch.Generator] = None, path=None) -> Figure:
    """Rows: x_t; x0 recovered from x_t with the true noise (exact); x0 recovered with a noise estimate off by
    `eps_error` standard deviations, whose error grows as sigma_t / alpha_t = 1 / sqrt(SNR)."""
    times = [t for t in (times or paper_times(diffusion.T)) if t > 0]
    eps = torch.randn(x0.shape, generator=generator)  # (C, H, W)
    wrong = eps + eps_error * torch.randn(x0.shape, generator=generator)
    fig = Figure(figsize=(1.6 * len(times), 5.4), layout="constrained")
    axes = fig.subplots(3, len(times), squeeze=False)
    worst = 0.0
    for j, t in enumerate(times):
        alpha, sigma = alpha_sigma_at(diffusion, t)
        x_t = alpha * x0 + sigma * eps
        exact = x0_from_noise(x_t, eps, diffusion, t)
        worst = max(worst, float((exact - x0).abs().max()))
        show_image(axes[0, j], image_space(x_t), f"t={t}\nsigma/alpha={sigma / alpha:.3g}")
        show_image(axes[1, j], image_space(exact))
        show_image(axes[2, j], image_space(x0_from_noise(x_t, wrong, diffusion, t)))
    for i, label in enumerate(("x_t", "x0 from true eps", f"eps off by {eps_error:g}")):
        axes[i, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"x0 = (x_t - sigma_t eps) / alpha_t: exact with the true noise (largest error {worst:.1e});\n"
                 f"an error in eps is multiplied by sigma_t / alpha_t", fontsize=9)
    return save_figure(fig, path)


# ===================================================================== reverse chain
def oracle(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """The model that knows x0: it outputs the true noise eps = (x_t - alpha_t x0) / sigma_t, in the
    diffusion's prediction type, so a sampler run with it follows the reverse chain with the true noise."""
    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = diffusion.alpha_sigma(t, x_t)
        eps = (x_t - alpha * x0) / sigma
        return output_from_x0_eps(diffusion.prediction, x0.expand_as(x_t), eps, alpha, sigma)
    return model


def oracle_chain(x0: torch.Tensor, diffusion: GaussianDiffusion, *, sampler: str = "ddpm", steps: int = 50,
                 keep: Optional[Sequence[int]] = None, draws: int = 1,
                 generator: Optional[torch.Generator] = None) -> list[tuple[int, torch.Tensor]]:
    """(t, x_t) along the reverse chain from x_T ~ N(0, I) with the oracle model: DDPM (Algorithm 2,
    all T steps, fresh noise at each) or DDIM (eta = 0, `steps` steps). Returns x_T and, for each paper
    time in `keep` (default T/5 apart), the state of the chain nearest to it; the last is t = 0, x0 itself."""
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"unknown sampler {sampler!r} for the oracle chain: expected 'ddpm' or 'ddim'")
    keep = sorted(set(keep if keep is not None else paper_times(diffusion.T)), reverse=True)
    grid = (list(range(diffusion.T - 1, -1, -1)) if sampler == "ddpm"
            else [int(t) for t in ddim_timesteps(diffusion.T, steps)])
    after = [t + 1 for t in grid[1:]] + [0]  # the paper time of the chain after step i
    x_T = torch.randn((draws, *x0.shape), generator=generator)  # (draws, C, H, W)
    states = [(diffusion.T, x_T)]

    def record(s: dict) -> None:
        states.append((after[s["i"]], s["x_t"].clone()))

    fn = ddpm if sampler == "ddpm" else ddim
    opts = {} if sampler == "ddpm" else {"steps": steps}
    fn(oracle(diffusion, x0), diffusion, x_T, generator=generator, progress=False, callback=record, **opts)
    picked = [states[0]] + [min(states, key=lambda s: abs(s[0] - t)) for t in keep]
    return list({id(s): s for s in picked}.values())  # in order, each state once


def reverse_chain_figure(x0: torch.Tensor, diffusion: GaussianDiffusion, *, ddim_steps: int = 50,
                         generator: Optional[torch.Generator] = None, path=None) -> Figure:
    """The reverse chain run with the true noise: DDPM (stochastic, T steps) and DDIM (deterministic,
    `ddim_steps` steps), from pure noise back to x0, with alpha_t x0 for reference."""
    times = paper_times(diffusion.T)
    rows = [("DDPM", oracle_chain(x0, diffusion, sampler="ddpm", keep=times, generator=generator)),
            (f"DDIM {ddim_steps}", oracle_chain(x0, diffusion, sampler="ddim", steps=ddim_steps, keep=times,
                                                generator=generator))]
    n = max(len(states) for _, states in rows)
    fig = Figure(figsize=(1.5 * n, 1.6 * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for i, (name, states) in enumerate(rows):
        for j in range(n):
            if j < len(states):
                t, x = states[j]
                show_image(axes[i, j], image_space(x[0]), f"t={t}")
            else:
                axes[i, j].axis("off")
        axes[i, 0].set_ylabel(name, fontsize=8)
    err = max(float((states[-1][1] - x0).abs().max()) for _, states in rows)
    fig.suptitle(f"reverse chain with the true noise (an oracle model): from N(0, I) to x_0, final error {err:.1e}",
                 fontsize=9)
    return save_figure(fig, path)
