"""The Gaussian diffusion process of DDPM: forward noising, posterior, prediction targets, loss.

Notation (Ho et al. 2020; Salimans & Ho 2022 for v):
    t            integer timestep, 0-indexed: t = 0 is the paper's t = 1, t = T - 1 is t = T
    x0           clean data x_0                                         (B, C, H, W) or any (B, ...)
    x_t          noisy data at step t
    eps          standard Gaussian noise epsilon
    beta         beta_t;   alpha = 1 - beta_t;   alpha_bar = prod_{s<=t} alpha_s
    alpha_bar_prev  alpha_bar_{t-1}, with alpha_bar_0 := 1 (the paper's t = 0 is clean data)
    beta_tilde   posterior variance (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t   (Eq. 7)
    alpha, sigma sqrt(alpha_bar), sqrt(1 - alpha_bar): x_t = alpha x0 + sigma eps   (Eq. 4)
    v            alpha eps - sigma x0                                       (Salimans & Ho 2022, Sec. 4)
    prediction   what the network outputs: "eps", "x0" or "v"

The model is any callable `model(x_t, t) -> prediction` (or `model(x_t, t, cond)`); this module
knows nothing of networks or training loops.
"""
from __future__ import annotations

from typing import Callable, Literal, Optional

import torch

from .schedules import make_betas

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v")
WEIGHTINGS: tuple[str, ...] = ("none", "min_snr")
TABLES: tuple[str, ...] = ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "beta_tilde")  # per-timestep, float64
Model = Callable[..., torch.Tensor]


def call_model(model: Model, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
    """Evaluate model(x_t, t) or model(x_t, t, cond): the one model interface of the project."""
    return model(x_t, t) if cond is None else model(x_t, t, cond)


# ==================================================================== the one parameterisation
# x_t = alpha x0 + sigma eps with alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)   (DDPM Eq. 4),
# v = alpha eps - sigma x0   (Salimans & Ho 2022, Sec. 4). The loss and every sampler convert between
# what the network predicts and (x0, eps) here and nowhere else, at a table timestep (GaussianDiffusion)
# or at any noise level (the EDM samplers). alpha, sigma: floats or tensors broadcasting against x_t.
def x0_eps_from_output(prediction: str, out: torch.Tensor, x_t: torch.Tensor, alpha, sigma, *,
                       clip_x0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from a network output of type `prediction` at the noise level (alpha, sigma):
        eps   x0 = (x_t - sigma eps) / alpha                            (DDPM Eq. 4 solved for x0)
        x0    eps = (x_t - alpha x0) / sigma                            (DDPM Eq. 4 solved for eps)
        v     x0 = alpha x_t - sigma v,  eps = sigma x_t + alpha v      (Salimans & Ho 2022, App. D)
    clip_x0 clamps x0 to [-1, 1] and re-derives eps from it, so both stay consistent with x_t."""
    if prediction == "eps":
        x0, eps = (x_t - sigma * out) / alpha, out
    elif prediction == "x0":
        x0, eps = out, (x_t - alpha * out) / sigma
    elif prediction == "v":
        x0, eps = alpha * x_t - sigma * out, sigma * x_t + alpha * out
    else:
        raise ValueError(f"unknown prediction {prediction!r}: expected one of {', '.join(PREDICTIONS)}")
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - alpha * x0) / sigma
    return x0, eps


def output_from_x0_eps(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """What a network of type `prediction` should output for (x0, eps) at (alpha, sigma): the regression
    target eps, x0, or v = alpha eps - sigma x0   (Salimans & Ho 2022, Sec. 4)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown prediction {prediction!r}: expected one of {', '.join(PREDICTIONS)}")


class GaussianDiffusion:
    """DDPM forward process q and the quantities every sampler and loss needs."""

    def __init__(
        self,
        timesteps: int = 1000,  # T, number of diffusion steps
        schedule: str = "linear",  # linear | quadratic | sigmoid | cosine
        prediction: str = "eps",  # what the network predicts: eps | x0 | v
        *,
        zero_terminal_snr: bool = False,  # rescale so alpha_bar_T = 0 (Lin et al. 2024)
        betas: Optional[torch.Tensor] = None,  # explicit beta_1..beta_T, overrides schedule
        loss_weighting: str = "none",  # none (L_simple) | min_snr (Hang et al. 2023)
        min_snr_gamma: float = 5.0,  # gamma of min-SNR-gamma weighting
        offset_noise: float = 0.0,  # training noise eps + offset * N(0, 1) per (sample, channel)
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}: expected one of {', '.join(PREDICTIONS)}")
        if loss_weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss_weighting {loss_weighting!r}: expected one of {', '.join(WEIGHTINGS)}")
        if min_snr_gamma <= 0 or offset_noise < 0:
            raise ValueError(f"min_snr_gamma must be > 0 and offset_noise >= 0, got {min_snr_gamma} and {offset_noise}")
        if zero_terminal_snr and prediction == "eps":
            raise ValueError(
                "zero_terminal_snr=True makes x0 unrecoverable from an eps prediction at t = T "
                "(alpha_bar_T = 0); use prediction 'v' or 'x0' (Lin et al. 2024, Sec. 3.2)"
            )
        self.betas = betas.double() if betas is not None else make_betas(schedule, timesteps, zero_terminal_snr)
        self.T = len(self.betas)
        self.schedule, self.prediction = schedule, prediction
        self.loss_weighting, self.min_snr_gamma, self.offset_noise = loss_weighting, min_snr_gamma, offset_noise
        self.alphas = 1 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.beta_tilde = self.betas * (1 - self.alpha_bar_prev) / (1 - self.alpha_bar)

    # ---------------------------------------------------------------- helpers
    def on_device(self, a: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The table a copied to `device` once and kept: a training step indexes tables already there,
        instead of copying them from the host (which waits for the GPU) at every call."""
        if a.device == device:
            return a
        name = next((n for n in TABLES if getattr(self, n) is a), None)
        if name is None:  # not one of this process's tables: copied, not kept
            return a.to(device)
        cache = self.__dict__.setdefault("_device_tables", {})
        if (name, device) not in cache:
            cache[name, device] = a.to(device)
        return cache[name, device]

    def gather(self, a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """a[t] (float64 table, (B,) long index) reshaped to broadcast against x: (B, 1, 1, ...)."""
        out = self.on_device(a, t.device)[t].to(x.dtype)
        return out.reshape(-1, *([1] * (x.dim() - 1)))

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t), float64, shape of t."""
        ab = self.on_device(self.alpha_bar, t.device)[t]
        return ab / (1 - ab)

    # ---------------------------------------------------------------- forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)   (DDPM Eq. 4)."""
        ab = self.gather(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def q_step_sample(self, x_prev: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)   (DDPM Eq. 2)."""
        beta = self.gather(self.betas, t, x_prev)
        return (1 - beta).sqrt() * x_prev + beta.sqrt() * eps

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean mu_tilde_t(x_t, x_0) and variance beta_tilde_t of q(x_{t-1} | x_t, x_0)   (DDPM Eqs. 6-7)."""
        beta, ab, ab_prev = (self.gather(a, t, x_t) for a in (self.betas, self.alpha_bar, self.alpha_bar_prev))
        coef_x0 = ab_prev.sqrt() * beta / (1 - ab)
        coef_xt = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)
        return coef_x0 * x0 + coef_xt * x_t, self.gather(self.beta_tilde, t, x_t)

    # ---------------------------------------------------------------- prediction conversions
    def alpha_sigma(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at timesteps t (B,), shaped (B, 1, ...)
        like x."""
        ab = self.gather(self.alpha_bar, t, x)
        return ab.sqrt(), (1 - ab).sqrt()

    def x0_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *,
               clip_x0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from a network output of type self.prediction at timesteps t (see x0_eps_from_output)."""
        return x0_eps_from_output(self.prediction, out, x_t, *self.alpha_sigma(t, x_t), clip_x0=clip_x0)

    def target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The regression target of the network for the configured prediction type (see output_from_x0_eps)."""
        return output_from_x0_eps(self.prediction, x0, eps, *self.alpha_sigma(t, x0))

    # ---------------------------------------------------------------- training
    def sample_t(self, batch: int, device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """t ~ Uniform{0, ..., T-1}, shape (B,)."""
        return torch.randint(0, self.T, (batch,), device=device, generator=generator)

    def min_snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weight of min-SNR-gamma (Hang et al. 2023, Eq. 8 and Sec. 3.4), shape of t.

        The weight min(SNR, gamma) is stated for an x0 loss; an eps loss is SNR times an x0 loss
        and a v loss (SNR + 1) times one, so their weights are divided by SNR and SNR + 1.
        """
        snr = self.snr(t)
        w = snr.clamp(max=self.min_snr_gamma)
        if self.prediction == "eps":
            w = w / snr
        elif self.prediction == "v":
            w = w / (snr + 1)
        return w.float()

    def noise(self, x0: torch.Tensor) -> torch.Tensor:
        """Training noise: N(0, I), plus offset_noise * N(0, 1) shared over each (sample, channel)
        ("offset noise", Guttenberg 2023) so that the model can shift an image's mean brightness."""
        eps = torch.randn_like(x0)
        if self.offset_noise > 0:
            eps = eps + self.offset_noise * torch.randn(*x0.shape[:2], *([1] * (x0.dim() - 2)), device=x0.device,
                                                        dtype=x0.dtype)
        return eps

    def loss(
        self,
        model: Model,
        x0: torch.Tensor,
        cond: Optional[torch.Tensor] = None,
        t: Optional[torch.Tensor] = None,
        eps: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """L_simple = E_{t, x0, eps} || target - model(x_t, t) ||^2   (DDPM Eq. 14, any prediction type),
        each sample weighted by min-SNR-gamma when loss_weighting = "min_snr"."""
        t = self.sample_t(x0.shape[0], x0.device) if t is None else t
        eps = self.noise(x0) if eps is None else eps
        x_t = self.q_sample(x0, t, eps)  # (B, C, H, W)
        out = call_model(model, x_t, t, cond)
        err = ((out.float() - self.target(x0, t, eps).float()) ** 2).flatten(1).mean(1)  # (B,)
        if self.loss_weighting == "min_snr":
            err = err * self.min_snr_weight(t)
        return err.mean()
