"""Fast samplers: DPM-Solver++(2M), its stochastic form DPM-Solver++(2M) SDE, and the Euler / Heun solvers of EDM.

Same signature as samplers.py:

    sampler(model, diffusion, x_T, *, steps=20, cond=None, generator=None, clip_x0=False,
            progress=True, callback=None, device=None, **options) -> x_0

x_T is N(0, I) in model space (a tensor, or a shape drawn with `generator`); the result is x_0 in
model space; `generator` draws x_T and, for dpmpp_2m_sde, the noise of each step (the others are
deterministic); clip_x0 clamps every
predicted x0 to [-1, 1]; callback gets dict(i, t, x_t, x0_hat) after step i, with t the timestep the
model saw first in that step and x_t the model-space sample after it.

Notation as in process.py, plus, for a noise level with ab = alpha_bar:
    alpha, sigma   sqrt(ab), sqrt(1 - ab)                   x_t = alpha x0 + sigma eps (VP, DDPM Eq. 4)
    lambda         log(alpha / sigma), half the log-SNR     (Lu et al. 2022, Sec. 2)
    sigma_edm      sigma / alpha = sqrt((1 - ab) / ab)      x = x_t / alpha = x0 + sigma_edm eps
                                                            (VE form, Karras et al. 2022, Eq. 1 with s(t) = 1)

Each sampler follows one diffusers scheduler step for step (tests/test_fast_samplers.py):
    dpmpp_2m  DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
              solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero", timestep_spacing=spacing)
              (all defaults but timestep_spacing; clip_x0 is thresholding=True, sample_max_value=1)
    dpmpp_2m_sde  the same with algorithm_type="sde-dpmsolver++" (its noise passed as variance_noise)
    euler     EulerDiscreteScheduler(use_karras_sigmas=karras, timestep_spacing=spacing), s_churn = 0
    heun      HeunDiscreteScheduler(use_karras_sigmas=karras, timestep_spacing=spacing, clip_sample=clip_x0)
Differences from diffusers, none of which changes a step given the same model output:
    - tables and sigmas stay float64 (diffusers rounds sigmas, and Euler / DPM the sample, to float32);
    - euler / heun call the model at the nearest integer timestep to diffusers' fractional one
      (the project's models take integer t), as DPMSolverMultistepScheduler(use_karras_sigmas=True)
      itself does; the prediction is converted to x0 at the exact sigma, as diffusers does;
    - euler / heun start from x = sqrt(sigma_max^2 + 1) x_T for every spacing (the exact VP -> VE map;
      diffusers' init_noise_sigma is sigma_max for "linspace" and "trailing").
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .process import GaussianDiffusion, Model, call_model, x0_eps_from_output
from .samplers import Callback, Shape, check_spacing, check_steps, initial_noise, randn, spaced_timesteps, t_batch

# ============================================================================ DPM-Solver++(2M)
def dpm_timesteps(T: int, steps: int, spacing: str = "leading") -> np.ndarray:
    """Decreasing integer timesteps t_0 > ... > t_{S-1} of a DPM-Solver run, after which one last step
    goes to sigma = 0; as DPMSolverMultistepScheduler.set_timesteps (steps_offset = 0, no lambda clipping):
        'leading'   k * (T // (S + 1)) for k = S, ..., 1          (never t = 0; needs S < T)
        'trailing'  round(T - k T / S) - 1 for k = 0, ..., S - 1  (as ddim_timesteps; starts at T - 1)
        'linspace'  round(linspace(0, T - 1, S + 1))[S:0:-1]      (starts at T - 1, never t = 0)
    A timestep that rounding repeats (only for S close to T) is kept once, as in ddim_timesteps."""
    check_steps(T, steps, "DPM-Solver++")
    check_spacing(spacing, "DPM-Solver++")
    if spacing == "leading":
        if T // (steps + 1) == 0:
            raise ValueError(f"DPM-Solver++ 'leading' spacing needs steps < T={T} (step ratio T // (steps + 1) is 0), "
                             f"got {steps}; use 'trailing' or 'linspace'")
        ts = spaced_timesteps(T, steps + 1, "leading")[:-1]  # drop t = 0
    elif spacing == "trailing":
        ts = spaced_timesteps(T, steps, "trailing")
    else:
        ts = spaced_timesteps(T, steps + 1, "linspace").round()[:-1]  # drop t = 0
    return np.unique(ts.astype(np.int64))[::-1].copy()


def dpmpp_2m_update(x, D, *, h: float, alpha_next: float, sigma_next: float, sigma: float, z=None):
    """One DPM-Solver++ ODE step from x_{t_{i-1}} to x_{t_i} with the data estimate D (Lu et al. 2022, Algorithm 2):
        x_{t_i} = sigma_{t_i} / sigma_{t_{i-1}} x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i."""
    return (sigma_next / sigma) * x - alpha_next * math.expm1(-h) * D


def dpmpp_2m_sde_update(x, D, *, h: float, alpha_next: float, sigma_next: float, sigma: float, z=None):
    """One SDE-DPM-Solver++ step (Lu et al. 2022, Sec. 4 and Appendix; diffusers' sde-dpmsolver++, midpoint):
        x_{t_i} = sigma_{t_i} / sigma_{t_{i-1}} e^{-h_i} x_{t_{i-1}} + alpha_{t_i} (1 - e^{-2 h_i}) D_i
                  + sigma_{t_i} sqrt(1 - e^{-2 h_i}) z_i."""
    return (sigma_next / sigma * math.exp(-h)) * x - alpha_next * math.expm1(-2 * h) * D \
        + sigma_next * math.sqrt(-math.expm1(-2 * h)) * z


def _dpm_solver(model, diffusion, x_T, update, *, steps, cond, generator, clip_x0, progress, callback, device,
                spacing, noise: bool, desc: str) -> torch.Tensor:
    """The multistep loop both DPM-Solver++(2M) forms share. With h_i = lambda_{t_i} - lambda_{t_{i-1}} and
    x0_i = x_theta(x_{t_i}, t_i): D = x0_0 on the first step (first order), then the midpoint combination
        r_i = h_{i-1} / h_i,   D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2};
    the last step goes to sigma = 0 (lambda = inf, alpha = 1): x_0 = x0_{S-1}. `update` is the step's equation;
    noise: draw z_i ~ N(0, I) with `generator` for it."""
    x = initial_noise(x_T, generator, device)  # (B, C, H, W)
    ts = dpm_timesteps(diffusion.T, steps, spacing)
    ab = diffusion.alpha_bar.tolist()
    # lambda_t = log(alpha_t / sigma_t); -inf at a zero terminal SNR, where the step's limit is DDIM's:
    # e^{-h} = 0, r = inf, so D = x0_hat and x_{t_1} = alpha_{t_1} x0_hat + sigma_{t_1} x_{t_0} (ODE)
    lam = lambda t: 0.5 * math.log(ab[t] / (1 - ab[t])) if ab[t] > 0 else -math.inf  # noqa: E731
    x0_prev, h_prev = None, None  # x0 and step size of the previous step (the multistep history)
    for i, t in enumerate(tqdm(ts, desc=desc, disable=not progress, leave=False)):
        t = int(t)
        tt = t_batch(t, x)
        x0_hat, _ = diffusion.x0_eps(call_model(model, x, tt, cond), x, tt, clip_x0=clip_x0)
        if i + 1 == len(ts):  # to sigma = 0: e^{-h} = 0, alpha = 1
            x = x0_hat
        else:
            t_next = int(ts[i + 1])
            h = lam(t_next) - lam(t)
            r = None if x0_prev is None else h_prev / h
            D = x0_hat if r is None else (1 + 1 / (2 * r)) * x0_hat - 1 / (2 * r) * x0_prev
            z = randn(x.shape, generator, x.device, x.dtype) if noise else None
            x = update(x, D, h=h, alpha_next=ab[t_next] ** 0.5, sigma_next=(1 - ab[t_next]) ** 0.5,
                       sigma=(1 - ab[t]) ** 0.5, z=z)
            x0_prev, h_prev = x0_hat, h
        if callback is not None:
            callback(dict(i=i, t=t, x_t=x, x0_hat=x0_hat))
    return x


@torch.no_grad()
def dpmpp_2m(
    model: Model,
    diffusion: GaussianDiffusion,
    x_T: Shape,
    *,
    steps: int = 20,  # S, number of model evaluations (<= T)
    cond: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    clip_x0: bool = False,
    progress: bool = True,
    callback: Callback = None,
    device=None,
    spacing: str = "trailing",  # trailing (starts at t = T) | leading | linspace, as diffusers (see dpm_timesteps)
) -> torch.Tensor:
    """DPM-Solver++(2M): the multistep second-order solver of the diffusion ODE in data-prediction form,
    in lambda (Lu et al. 2022, "DPM-Solver++", Algorithm 2; diffusers calls this form "midpoint"): the loop of
    _dpm_solver with the step dpmpp_2m_update (the first step, with D = x0_0, is DDIM)."""
    return _dpm_solver(model, diffusion, x_T, dpmpp_2m_update, steps=steps, cond=cond, generator=generator,
                       clip_x0=clip_x0, progress=progress, callback=callback, device=device, spacing=spacing,
                       noise=False, desc="DPM-Solver++(2M)")


@torch.no_grad()
def dpmpp_2m_sde(
    model: Model,
    diffusion: GaussianDiffusion,
    x_T: Shape,
    *,
    steps: int = 20,  # S, number of model evaluations (<= T)
    cond: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,  # draws x_T (if a shape) and the noise z_i of every step
    clip_x0: bool = False,
    progress: bool = True,
    callback: Callback = None,
    device=None,
    spacing: str = "trailing",  # trailing (starts at t = T) | leading | linspace, as dpmpp_2m
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE: the second-order multistep solver of the reverse diffusion SDE in data-prediction
    form (Lu et al. 2022, "DPM-Solver++", Sec. 4 and Appendix: SDE-DPM-Solver++; the "midpoint" form of diffusers'
    sde-dpmsolver++ and k-diffusion's sample_dpmpp_2m_sde): the loop of _dpm_solver with the step
    dpmpp_2m_sde_update and fresh noise z_i at every step but the last. The noise forgets part of each step's
    error, as in DDPM, at the cost of a few more steps than the ODE solver."""
    return _dpm_solver(model, diffusion, x_T, dpmpp_2m_sde_update, steps=steps, cond=cond, generator=generator,
                       clip_x0=clip_x0, progress=progress, callback=callback, device=device, spacing=spacing,
                       noise=True, desc="DPM-Solver++(2M) SDE")


# ============================================================================ EDM (Karras et al. 2022)
def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """sigma_i = (sigma_max^{1/rho} + i / (n - 1) (sigma_min^{1/rho} - sigma_max^{1/rho}))^rho,
    i = 0, ..., n - 1   (Karras et al. 2022, Eq. 5)."""
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timestep of each sigma_edm, by linear interpolation of log sigma_edm between the two
    training timesteps around it (diffusers' _sigma_to_t, clipped to [0, T - 1])."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]  # (T, n)
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)  # last table sigma <= sigma
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def edm_sigmas(diffusion: GaussianDiffusion, steps: int, *, karras: bool = True,
               spacing: str = "linspace") -> tuple[np.ndarray, np.ndarray]:
    """(sigma_edm_0 > ... > sigma_edm_{S-1} > sigma_edm_S = 0 (S + 1,), fractional model timesteps (S,)),
    as EulerDiscreteScheduler / HeunDiscreteScheduler.set_timesteps with use_karras_sigmas=karras.

    The spacing picks timesteps as for DDIM ('leading', 'trailing') or linspace(0, T - 1, S)
    (float32, as diffusers); sigma_edm is interpolated linearly in t there. With karras, only the
    first and last of them are kept, as sigma_max and sigma_min of Eq. 5, and each Karras sigma is
    mapped back to a fractional timestep with sigma_to_t. alpha_bar = 0 (zero terminal SNR) is read
    as 2^-24, as diffusers' schedulers do with rescale_betas_zero_snr."""
    T = diffusion.T
    check_steps(T, steps, "Euler/Heun")
    check_spacing(spacing, "Euler/Heun")
    ts = spaced_timesteps(T, steps, spacing).astype(np.float32)
    ab = diffusion.alpha_bar.clone()
    ab[ab == 0] = 2.0**-24  # a zero terminal SNR gets sigma_max = 4096, not inf, as in diffusers
    table = ((1 - ab) / ab).sqrt().numpy()  # sigma_edm(t), t = 0..T-1
    sigmas = np.interp(ts, np.arange(T), table)
    if karras:
        sigmas = karras_sigmas(sigmas[-1], sigmas[0], steps)
        ts = sigma_to_t(sigmas, np.log(table))
    return np.concatenate([sigmas, [0.0]]), ts.astype(np.float64)


def _denoise(model, diffusion, x, *, sigma: float, t: float, cond, clip_x0) -> tuple[torch.Tensor, int]:
    """D(x; sigma_edm): the model sees x_t = x / sqrt(sigma^2 + 1) at the nearest integer timestep to t;
    returns (x0_hat, that timestep)."""
    t_int = int(np.round(t))
    alpha = 1 / math.sqrt(sigma**2 + 1)  # sqrt(ab) of this sigma_edm
    x_t = alpha * x  # (B, ...)
    out = call_model(model, x_t, t_batch(t_int, x), cond)
    x0_hat, _ = x0_eps_from_output(diffusion.prediction, out, x_t, alpha, sigma * alpha, clip_x0=clip_x0)
    return x0_hat, t_int


def _edm(model, diffusion, x_T, *, second_order: bool, steps, karras, spacing, cond, generator, clip_x0,
         progress, callback, device) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 1 (deterministic sampler, S_churn = 0, s(t) = 1, sigma(t) = t), in
    x = x_t / alpha: dx / dsigma = (x - D(x; sigma)) / sigma   (Eq. 1 with Eq. 3)."""
    sigmas, ts = edm_sigmas(diffusion, steps, karras=karras, spacing=spacing)
    x = initial_noise(x_T, generator, device)  # (B, C, H, W), N(0, I) at sigma_max in model space
    x = x * math.sqrt(sigmas[0] ** 2 + 1)  # x = x_T / alpha_T  ~  N(0, (sigma_max^2 + 1) I)
    name = "Heun" if second_order else "Euler"
    for i in tqdm(range(steps), desc=name, disable=not progress, leave=False):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0_hat, t = _denoise(model, diffusion, x, sigma=sigma, t=ts[i], cond=cond, clip_x0=clip_x0)
        d = (x - x0_hat) / sigma  # dx / dsigma
        x_next = x + (sigma_next - sigma) * d  # Euler step
        if second_order and sigma_next > 0:  # trapezoidal correction, unless sigma_next = 0
            x0_next, _ = _denoise(model, diffusion, x_next, sigma=sigma_next, t=ts[i + 1], cond=cond, clip_x0=clip_x0)
            d_next = (x_next - x0_next) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback(dict(i=i, t=t, x_t=x / math.sqrt(sigma_next**2 + 1), x0_hat=x0_hat, sigma=sigma_next))
    return x  # sigma_S = 0: x = x_t = x_0


@torch.no_grad()
def euler(
    model: Model,
    diffusion: GaussianDiffusion,
    x_T: Shape,
    *,
    steps: int = 20,  # S, number of model evaluations (<= T)
    cond: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    clip_x0: bool = False,
    progress: bool = True,
    callback: Callback = None,
    device=None,
    karras: bool = True,  # Karras sigmas (Eq. 5, rho = 7) between the spacing's sigma_min and sigma_max
    spacing: str = "linspace",  # linspace | leading | trailing, as diffusers (see edm_sigmas)
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE in sigma_edm (Karras et al. 2022, Algorithm 1 without
    the correction): x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (x_i - D(x_i; sigma_i)) / sigma_i.
    Callback dicts also carry sigma, the sigma_edm of x_t."""
    return _edm(model, diffusion, x_T, second_order=False, steps=steps, karras=karras, spacing=spacing, cond=cond,
                generator=generator, clip_x0=clip_x0, progress=progress, callback=callback, device=device)


@torch.no_grad()
def heun(
    model: Model,
    diffusion: GaussianDiffusion,
    x_T: Shape,
    *,
    steps: int = 20,  # S sigma levels: 2 S - 1 model evaluations (the last step is Euler's)
    cond: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    clip_x0: bool = False,
    progress: bool = True,
    callback: Callback = None,
    device=None,
    karras: bool = True,  # Karras sigmas (Eq. 5, rho = 7) between the spacing's sigma_min and sigma_max
    spacing: str = "linspace",  # linspace | leading | trailing, as diffusers (see edm_sigmas)
) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1, deterministic): an Euler step to
    sigma_{i+1}, then the average of the slopes at both ends; Euler alone for the last step to sigma = 0.
    Callback dicts (one per sigma level) carry the x0_hat of the first evaluation, and sigma, the sigma_edm of x_t."""
    return _edm(model, diffusion, x_T, second_order=True, steps=steps, karras=karras, spacing=spacing, cond=cond,
                generator=generator, clip_x0=clip_x0, progress=progress, callback=callback, device=device)


FAST_SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"dpmpp_2m": dpmpp_2m, "dpmpp_2m_sde": dpmpp_2m_sde,
                                                         "euler": euler, "heun": heun}
