"""Exponential moving average of network weights (Polyak averaging), with a decay warm-up.

    theta_ema <- d_n theta_ema + (1 - d_n) theta,   d_n = min(decay, (1 + n) / (10 + n))

n counts the updates made so far. Without the warm-up (d_n = decay from the start), a decay of
0.9999 keeps the average within e^-1 of the random initial weights for 10,000 steps; with it,
the average follows training early and settles to `decay` later (the warm-up of TensorFlow's
ExponentialMovingAverage with num_updates, as used by DDPM's and latent-diffusion's code).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _count_from_buffer(module: "EMA", incompatible_keys) -> None:
    """After load_state_dict: the Python count follows the loaded buffer."""
    module.n = int(module.num_updates)


class EMA(nn.Module):
    """A frozen copy of `net` whose weights track an exponential moving average of net's."""

    def __init__(self, net: nn.Module, decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(net).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))  # saved in checkpoints
        self.n = 0  # the same count as a Python int, so an update never reads the device back
        self.register_load_state_dict_post_hook(_count_from_buffer)

    def decay_at(self, n: int) -> float:
        """d_n, the decay used by the (n+1)-th update."""
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
