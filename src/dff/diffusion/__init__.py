"""Diffusion math on tensors and callables: schedules, the forward process, samplers.

Imports neither Lightning nor any network."""
from .process import PREDICTIONS, GaussianDiffusion, call_model, output_from_x0_eps, x0_eps_from_output
from .samplers import SAMPLERS, SPACINGS, ddim, ddim_timesteps, ddpm, default_steps, get_sampler, spaced_timesteps
from .fast_samplers import FAST_SAMPLERS, dpmpp_2m, dpmpp_2m_sde, euler, heun  # isort: skip (after .samplers: it imports it)
from .schedules import SCHEDULES, make_betas, rescale_zero_terminal_snr

SAMPLERS.update(FAST_SAMPLERS)  # one registry: ddpm, ddim, dpmpp_2m, dpmpp_2m_sde, euler, heun

__all__ = [
    "GaussianDiffusion", "call_model", "PREDICTIONS", "x0_eps_from_output", "output_from_x0_eps",
    "ddpm", "ddim", "ddim_timesteps", "spaced_timesteps", "SPACINGS", "dpmpp_2m", "dpmpp_2m_sde", "euler", "heun",
    "get_sampler", "default_steps", "SAMPLERS",
    "make_betas", "rescale_zero_terminal_snr", "SCHEDULES",
]
