"""Diffusion math on tensors and callables: schedules, the forward process, samplers.

Imports neither Lightning nor any network."""
from .process import PREDICTIONS, GaussianDiffusion, call_model
from .samplers import SAMPLERS, ddim, ddim_timesteps, ddpm, get_sampler
from .fast_samplers import FAST_SAMPLERS, dpmpp_2m, euler, heun  # isort: skip (after .samplers: it imports it)
from .schedules import SCHEDULES, make_betas, rescale_zero_terminal_snr

SAMPLERS.update(FAST_SAMPLERS)  # one registry: ddpm, ddim, dpmpp_2m, euler, heun

__all__ = [
    "GaussianDiffusion", "call_model", "PREDICTIONS",
    "ddpm", "ddim", "ddim_timesteps", "dpmpp_2m", "euler", "heun", "get_sampler", "SAMPLERS",
    "make_betas", "rescale_zero_terminal_snr", "SCHEDULES",
]
