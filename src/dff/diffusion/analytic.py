"""A data distribution whose exact denoiser is known: the isotropic Gaussian mixture, for learning and
testing samplers before any network is trained (notebooks/01_sandbox, tests).

Notation: x0 ~ sum_k pi_k N(mu_k, s_k^2 I) in D dimensions. Under x_t = alpha x0 + sigma eps
(alpha = sqrt(alpha_bar_t), sigma = sqrt(1 - alpha_bar_t)), component k reaches x_t as
N(alpha mu_k, v_k I) with v_k = alpha^2 s_k^2 + sigma^2, so that
    r_k(x_t)      = pi_k N(x_t; alpha mu_k, v_k I) / sum_j pi_j N(x_t; alpha mu_j, v_j I)   (responsibilities)
    E[x0 | x_t]   = sum_k r_k(x_t) (mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k))
the posterior mean of each Gaussian component weighted by how likely it made x_t.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .process import GaussianDiffusion, output_from_x0_eps, x0_eps_from_output


class GaussianMixture:
    """sum_k pi_k N(mu_k, s_k^2 I): samples, the noisy marginal, and the exact denoiser E[x0 | x_t]."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor):
        self.pi, self.mu, self.s = weights.double(), means.double(), stds.double()  # (K,), (K, D), (K,)
        if not (self.pi.dim() == 1 and self.mu.shape[0] == len(self.pi) == len(self.s)):
            raise ValueError(f"a mixture of K components needs weights (K,), means (K, D), stds (K,); got "
                             f"{tuple(self.pi.shape)}, {tuple(self.mu.shape)}, {tuple(self.s.shape)}")
        self.pi = self.pi / self.pi.sum()

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n draws of x0, (n, D) float64."""
        k = torch.multinomial(self.pi, n, replacement=True, generator=generator)
        return self.mu[k] + self.s[k, None] * torch.randn(n, self.mu.shape[1], generator=generator, dtype=torch.float64)

    def log_prob(self, x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """log q_t(x_t), the density of x_t at noise level alpha_bar (alpha_bar = 1: the data), (B,)."""
        return torch.logsumexp(self._log_joint(x_t, alpha_bar), dim=1)

    def _log_joint(self, x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """log pi_k N(x_t; alpha mu_k, v_k I) for each component, (B, K)."""
        D = self.mu.shape[1]
        v = alpha_bar * self.s**2 + (1 - alpha_bar)  # (K,)
        diff = x_t[:, None, :] - alpha_bar**0.5 * self.mu[None]  # (B, K, D)
        return torch.log(self.pi) - 0.5 * (diff**2).sum(-1) / v - 0.5 * D * torch.log(2 * math.pi * v)

    def x0_mean(self, x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """E[x0 | x_t] = sum_k r_k(x_t) (mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k)), (B, D)."""
        r = torch.softmax(self._log_joint(x_t, alpha_bar), dim=1)  # (B, K)
        v = alpha_bar * self.s**2 + (1 - alpha_bar)  # (K,)
        diff = x_t[:, None, :] - alpha_bar**0.5 * self.mu[None]  # (B, K, D)
        x0_k = self.mu[None] + (alpha_bar**0.5 * self.s**2 / v)[None, :, None] * diff  # (B, K, D)
        return (r[:, :, None] * x0_k).sum(1)

    def denoiser(self, diffusion: GaussianDiffusion) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact model(x_t, t) for `diffusion`: E[x0 | x_t] given as its prediction type (eps, x0 or v),
        for a batch x_t (B, D) at one integer timestep t (B,)."""
        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            ab = float(diffusion.alpha_bar[int(t[0])])
            x0_hat = self.x0_mean(x_t.double(), ab).to(x_t.dtype)
            alpha, sigma = diffusion.alpha_sigma(t, x_t)
            _, eps_hat = x0_eps_from_output("x0", x0_hat, x_t, alpha, sigma)
            return output_from_x0_eps(diffusion.prediction, x0_hat, eps_hat, alpha, sigma)
        return model

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest component mean for each sample, (B,)."""
        return torch.cdist(x.double(), self.mu).argmin(1)
