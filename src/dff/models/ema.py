"""Exponential moving average of network weights (Polyak averaging), with a decay warm-up or a power-function
profile.

    theta_ema <- d_n theta_ema + (1 - d_n) theta,   d_n = min(decay, (1 + n) / (10 + n))

n counts the updates made so far. Without the warm-up (d_n = decay from the start), a decay of
0.9999 keeps the average within e^-1 of the random initial weights for 10,000 steps; with it,
the average follows training early and settles to `decay` later (the warm-up of TensorFlow's
ExponentialMovingAverage with num_updates, as used by DDPM's and latent-diffusion's code).

With `sigma_rel` set, d_n = beta(n + 1) of EDM2's power-function EMA instead (Karras et al. 2024, eq. 2): an
average whose length stays the same fraction of the run at every step. The profile's math is below; its
post-hoc use (snapshots, reconstruction) is posthoc_ema.py.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import numpy as np

import torch
from torch import nn


def _count_from_buffer(module: "EMA", incompatible_keys) -> None:
    """After load_state_dict: the Python count follows the loaded buffer."""
    module.n = int(module.num_updates)


class EMA(nn.Module):
    """A frozen copy of `net` whose weights track an exponential moving average of net's."""

    def __init__(self, net: nn.Module, decay: float = 0.9999, warmup: bool = True, sigma_rel: Optional[float] = None):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.gamma = gamma_from_sigma_rel(sigma_rel) if sigma_rel is not None else None  # power profile
        self.model = copy.deepcopy(net).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))  # saved in checkpoints
        self.n = 0  # the same count as a Python int, so an update never reads the device back
        self.register_load_state_dict_post_hook(_count_from_buffer)

    def decay_at(self, n: int) -> float:
        """d_n, the decay used by the (n+1)-th update."""
        if self.gamma is not None:
            return beta(n + 1, self.gamma)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """theta_ema <- d theta_ema + (1 - d) theta for every parameter; buffers are copied."""
        d = self.decay_at(self.n)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in net.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - d)
        for b_ema, b in zip(self.model.buffers(), net.buffers()):
            b_ema.copy_(b)
        self.num_updates += 1
        self.n += 1

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True) -> "EMA":
        """The averaged copy always stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self


# ---------------------------------------------------------------- the profile (EDM2 eqs. 2-3)
def sigma_rel_from_gamma(gamma: float) -> float:
    """EDM2 eq. 3: the relative standard deviation of the profile p(tau) proportional to tau^gamma on [0, t]."""
    return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))


# eq. 3 rises from 0 at gamma = -1 to its maximum at gamma = (sqrt(5) - 3) / 2 and falls to 0 as gamma grows
SIGMA_REL_MAX = sigma_rel_from_gamma((math.sqrt(5) - 3) / 2)  # 0.3003


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The inverse of eq. 3 on its falling branch: with s = sigma_rel^-2, (gamma + 2)^2 (gamma + 3) = s (gamma + 1),
    i.e. the largest real root of gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s)."""
    if not 0.0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel={sigma_rel}: expected 0 < sigma_rel < {SIGMA_REL_MAX:.4f}")
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots.real[np.abs(roots.imag) < 1e-9].max())


def beta(t: int, gamma: float) -> float:
    """EDM2 eq. 2: the decay of update t = 1, 2, ... (beta(1) = 0: the average starts at theta(1))."""
    return (1.0 - 1.0 / t) ** (gamma + 1)


def profile_dot(t_a, gamma_a, t_b, gamma_b):
    """<p_{t_a,gamma_a}, p_{t_b,gamma_b}> = integral over tau of the product of the two profiles
    (gamma_a + 1) tau^gamma_a / t_a^(gamma_a + 1) and (gamma_b + 1) tau^gamma_b / t_b^(gamma_b + 1), both zero
    beyond their t: (gamma_a + 1)(gamma_b + 1) m^(gamma_a + gamma_b + 1) / ((gamma_a + gamma_b + 1)
    t_a^(gamma_a + 1) t_b^(gamma_b + 1)) with m = min(t_a, t_b). Broadcasts over numpy arrays (float64)."""
    t_a, g_a, t_b, g_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    m = np.minimum(t_a, t_b)
    # written as ratios (m / t)^(gamma + 1), each <= 1, so that large gammas do not overflow
    return (g_a + 1) * (g_b + 1) / ((g_a + g_b + 1) * m) * (m / t_a) ** (g_a + 1) * (m / t_b) ** (g_b + 1)


def posthoc_weights(t: Sequence[float], gammas: Sequence[float], t_r: float, gamma_r: float) -> np.ndarray:
    """Appendix C.2: the weights x of the snapshots (t_i, gamma_i) whose combination sum_i x_i p_i is closest in L2
    to the profile p_r of (t_r, gamma_r): A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_r>."""
    t, g = np.asarray(t, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    A = profile_dot(t[:, None], g[:, None], t[None, :], g[None, :])  # (N, N)
    b = profile_dot(t, g, t_r, gamma_r)  # (N,)
    return np.linalg.solve(A, b)
