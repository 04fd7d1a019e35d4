"""Data distributions whose exact denoiser E[x_0 | x_t] is known in closed form, as model callables."""
from __future__ import annotations

import pytest
import torch

from dff.diffusion import GaussianDiffusion, output_from_x0_eps, x0_eps_from_output
from dff.diffusion.analytic import GaussianMixture


def as_prediction(d: GaussianDiffusion, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Turn the exact x0 estimate into the network output type d.prediction, through the project's one
    conversion (tests/test_process.py checks it against the closed forms)."""
    alpha, sigma = d.alpha_sigma(t, x_t)
    _, eps_hat = x0_eps_from_output("x0", x0_hat, x_t, alpha, sigma)
    return output_from_x0_eps(d.prediction, x0_hat, eps_hat, alpha, sigma)


N = 4000  # samples per check: standard error of a mean ~ 0.016 per unit of std
MU = torch.tensor([1.0, -2.0])
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 0.5]])


def x_T(n: int = N, D: int = 2, seed: int = 0) -> torch.Tensor:
    """Starting noise (n, D), float64, from a seeded generator."""
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gaussian_check(x: torch.Tensor) -> None:
    """Samples x (n, 2) of N(MU, SIGMA): mean within 5 standard errors, covariance within 10% of its scale."""
    se = (SIGMA.diagonal().double() / len(x)).sqrt()
    assert torch.all((x.mean(0) - MU.double()).abs() < 5 * se), x.mean(0)
    assert torch.allclose(torch.cov(x.T), SIGMA.double(), atol=0.1 * SIGMA.abs().max().item()), torch.cov(x.T)


class GaussianData:
    """x_0 ~ N(mu, Sigma): E[x0|x_t] = mu + sqrt(ab) Sigma (ab Sigma + (1-ab) I)^{-1} (x_t - sqrt(ab) mu)."""

    def __init__(self, mu: torch.Tensor, Sigma: torch.Tensor):
        self.mu, self.Sigma = mu.double(), Sigma.double()

    def denoiser(self, d: GaussianDiffusion):
        D = len(self.mu)
        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # x_t (B, D)
            ab = d.alpha_bar[t[0]].item()
            S_t = ab * self.Sigma + (1 - ab) * torch.eye(D, dtype=torch.float64)
            K = ab**0.5 * self.Sigma @ torch.linalg.inv(S_t)  # (D, D)
            x0_hat = self.mu + (x_t - ab**0.5 * self.mu) @ K.T
            return as_prediction(d, x0_hat, x_t, t)
        return model


MixtureData = GaussianMixture  # the library's exact mixture denoiser; tests/test_process.py checks it by Tweedie


def assert_recovers_mixture(x: torch.Tensor, mix: "MixtureData", n: int) -> None:
    """Samples x (n, d) have the mixture's weights (+-0.04), and each component's mean (+-0.08)
    and spread (15%), the components assigned by the nearest mean."""
    k = mix.assign(x)
    weights = torch.bincount(k, minlength=len(mix.pi)).double() / len(x)
    assert torch.allclose(weights, mix.pi, atol=0.04), weights
    ref = mix.sample(n, torch.Generator().manual_seed(4))
    for j in range(len(mix.pi)):  # each component's mean and spread
        assert torch.allclose(x[k == j].mean(0), ref[mix.assign(ref) == j].mean(0), atol=0.08)
        assert x[k == j].std(0).mean().item() == pytest.approx(mix.s[j].item(), rel=0.15)


# a three-component mixture in 2-D: the samplers' test of mode coverage
MIX = MixtureData(torch.tensor([0.2, 0.5, 0.3]), torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]),
                  torch.tensor([0.3, 0.4, 0.25]))
