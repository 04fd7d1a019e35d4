"""Diffusion math on tensors and callables: schedules, the forward process, samplers.

Imports neither Lightning nor any network."""
from .process import PREDICTIONS, GaussianDiffusion, call_model
from .samplers import SAMPLERS, ddim, ddim_timesteps, ddpm, get_sampler
from .schedules import SCHEDULES, make_betas, rescale_zero_terminal_snr

__all__ = [
    "GaussianDiffusion", "call_model", "PREDICTIONS",
    "ddpm", "ddim", "ddim_timesteps", "get_sampler", "SAMPLERS",
    "make_betas", "rescale_zero_terminal_snr", "SCHEDULES",
]
