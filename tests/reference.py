"""Helpers for comparing the samplers with diffusers' schedulers step by step."""
from __future__ import annotations

import torch

from analytic import as_prediction
from dff.diffusion import GaussianDiffusion

PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}  # our prediction names -> diffusers'


def make_fake_model(d: GaussianDiffusion, scale: float = 0.9):
    """A deterministic stand-in network, any function of (x_t, t), run in float64 so that the comparison
    sees the update rules rather than float32 rounding; it outputs the prediction type of d for
    x0_hat = scale tanh(x_t) + small t term, so the trajectory stays bounded like a real one
    (scale > 1 makes clip_x0 act)."""
    def model(x, t):
        x0_hat = scale * torch.tanh(x) + 0.05 * torch.sin(t.float()[:, None, None, None] / 50)
        return as_prediction(d, x0_hat, x, t)
    return model


def same_tables(sched, prediction: str) -> GaussianDiffusion:
    """Our process on diffusers' betas, with both alpha_bar tables in float64: the comparison then
    tests the update rules alone (schedules are compared in test_process.py); diffusers keeps its
    tables in float32, whose rounding near t = 0 (1 - alpha_bar ~ 1e-4) would swamp a 1e-5 check."""
    betas = sched.betas.double()
    sched.alphas_cumprod = torch.cumprod(1 - betas, 0)
    return GaussianDiffusion(prediction=prediction, betas=betas)
