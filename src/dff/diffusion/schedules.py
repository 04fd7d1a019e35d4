"""Noise schedules: beta_t for t = 1..T, and the cumulative alpha_bar_t.

Notation (Ho et al. 2020, "DDPM"):
    beta_t       variance of the noise added at step t,            q(x_t | x_{t-1})  (Eq. 2)
    alpha_t      1 - beta_t
    alpha_bar_t  prod_{s<=t} alpha_s, so q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (Eq. 4)
    SNR(t)       alpha_bar_t / (1 - alpha_bar_t)

Tensors are indexed from 0: betas[i] is beta_{i+1}. All schedules are float64.

The linear, quadratic and sigmoid schedules are defined for T = 1000 by (beta_start, beta_end);
for another T they are rescaled by 1000 / T (as in Nichol & Dhariwal 2021, improved-diffusion),
so that alpha_bar_T stays close to 0 whatever T is. At T = 1000 they equal diffusers'
"linear", "scaled_linear" and "sigmoid" schedules.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

Schedule = Literal["linear", "quadratic", "sigmoid", "cosine"]
SCHEDULES: tuple[str, ...] = ("linear", "quadratic", "sigmoid", "cosine")


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear schedule of DDPM (Ho et al. 2020, Sec. 4): beta_1 = 1e-4 ... beta_T = 0.02."""
    scale = 1000 / T
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)


def quadratic_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Quadratic schedule: linear in sqrt(beta), the shape of latent diffusion's 'scaled_linear' (which uses
    beta from 0.00085 to 0.012; here DDPM's 1e-4 to 0.02, as for the other schedules)."""
    scale = 1000 / T
    return torch.linspace((scale * beta_start) ** 0.5, (scale * beta_end) ** 0.5, T, dtype=torch.float64) ** 2


def sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Sigmoid schedule: beta_start + sigmoid(linspace(-6, 6)) (beta_end - beta_start)."""
    scale = 1000 / T
    s = torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64))
    return scale * (beta_start + s * (beta_end - beta_start))


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t + s) / (1 + s)) pi / 2), t in [0, 1]
    (Nichol & Dhariwal 2021, Eq. 17)."""

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return f(t) / f(torch.zeros_like(t))


def cosine_betas(T: int, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule: beta_t = 1 - alpha_bar(t/T) / alpha_bar((t-1)/T), clipped at 0.999 (Nichol & Dhariwal 2021)."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    alpha_bar = cosine_alpha_bar(t)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0 and alpha_bar_1 is kept
    (Lin et al. 2024, Algorithm 1)."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def make_betas(schedule: str, T: int, zero_terminal_snr: bool = False) -> torch.Tensor:
    """beta_1..beta_T (shape (T,), float64) for a named schedule."""
    if T < 2:
        raise ValueError(f"timesteps must be at least 2, got {T}")
    makers = {"linear": linear_betas, "quadratic": quadratic_betas, "sigmoid": sigmoid_betas, "cosine": cosine_betas}
    if schedule not in makers:
        raise ValueError(f"unknown schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    betas = makers[schedule](T)
    if betas.max() >= 1:
        raise ValueError(f"schedule {schedule!r} with T={T} gives beta >= 1; use more timesteps")
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas
