"""Samplers: turn noise x_T into data with any model callable and the schedule it was trained with.

Every sampler has the same signature:

    sampler(model, diffusion, x_T, *, cond=None, generator=None, clip_x0=False,
            progress=True, callback=None, **options) -> x_0

    model       callable model(x_t, t) -> prediction, or model(x_t, t, cond) when cond is given;
                t is a (B,) long tensor of 0-indexed timesteps
    diffusion   the GaussianDiffusion the model was trained with (schedule and prediction type)
    x_T         a starting tensor (B, ...) or a shape, drawn from N(0, I) with `generator`
    callback    called after every step with dict(i, t, x_t, x0_hat) (for figures)

Notation as in process.py; in DDIM, alpha_bar_prev is alpha_bar at the next (smaller) timestep of
the sampling sequence, and 1 after the last one.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .process import GaussianDiffusion, Model, call_model

Shape = Union[torch.Tensor, Sequence[int]]
Callback = Optional[Callable[[dict], None]]


def randn(shape: Sequence[int], generator: Optional[torch.Generator], device, dtype=torch.float32) -> torch.Tensor:
    """N(0, I) noise drawn on the generator's device (CPU by default) and moved to `device`, so a
    seed gives the same numbers on every device."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def initial_noise(x_T: Shape, generator: Optional[torch.Generator], device=None) -> torch.Tensor:
    """x_T itself if a tensor is given, else N(0, I) of that shape."""
    if isinstance(x_T, torch.Tensor):
        return x_T if device is None else x_T.to(device)
    return randn(x_T, generator, device or "cpu")


def t_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    """The timestep t as a (B,) long tensor for a batch x (B, ...): the model's t argument."""
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


# ---------------------------------------------------------------------- timestep grids
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")


def check_steps(T: int, steps: int, name: str) -> None:
    """A sampler takes between 1 and T steps."""
    if not 1 <= steps <= T:
        raise ValueError(f"{name} steps must be between 1 and the training timesteps T={T}, got {steps}")


def step_options(name: str, T: int, steps: Optional[int], what: str = "steps") -> dict:
    """The step count to pass to sampler `name` for a model of T timesteps: {} for the sampler's own default,
    {"steps": steps} checked against 1..T; DDPM's ancestral chain always runs all T steps, so any other count is
    an error."""
    if name == "ddpm":
        if steps not in (None, T):
            raise ValueError(f"{what}={steps}: the ddpm sampler always takes all T={T} steps; use ddim for fewer")
        return {}
    check_steps(T, steps if steps is not None else default_steps(name),
                f"{what} ({name}, default {default_steps(name)})")
    return {} if steps is None else {"steps": steps}


def check_spacing(spacing: str, name: str, allowed: tuple[str, ...] = SPACINGS) -> None:
    if spacing not in allowed:
        raise ValueError(f"unknown {name} spacing {spacing!r}: expected one of {', '.join(allowed)}")


def spaced_timesteps(T: int, n: int, spacing: str) -> np.ndarray:
    """n of the T training timesteps, decreasing, float64: diffusers' `timestep_spacing`
    (Lin et al. 2024, Table 2). Every sampler builds its grid from this one function:
        leading   k (T // n),            k = n - 1, ..., 0   (ends at t = 0)
        trailing  round(T - k T / n) - 1, k = 0, ..., n - 1   (starts at t = T - 1)
        linspace  linspace(0, T - 1, n), reversed              (fractional; from T - 1 to 0)"""
    if spacing == "leading":
        ts = np.arange(n, dtype=np.float64) * (T // n)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, n)
    else:
        raise ValueError(f"unknown spacing {spacing!r}: expected one of {', '.join(SPACINGS)}")
    return np.sort(ts)[::-1].copy()


@torch.no_grad()
def ddpm(
    model: Model,
    diffusion: GaussianDiffusion,
    x_T: Shape,
    *,
    cond: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    clip_x0: bool = False,
    progress: bool = True,
    callback: Callback = None,
    variance: str = "posterior",  # "posterior": beta_tilde_t, "beta": beta_t (DDPM Sec. 3.2)
    device=None,
) -> torch.Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2), via the posterior mean (Eq. 7)."""
    if variance not in ("posterior", "beta"):
        raise ValueError(f"unknown DDPM variance {variance!r}: expected 'posterior' or 'beta'")
    x = initial_noise(x_T, generator, device)  # (B, C, H, W)
    sigma2_table = diffusion.beta_tilde if variance == "posterior" else diffusion.betas
    for i, t in enumerate(tqdm(range(diffusion.T - 1, -1, -1), desc="DDPM", disable=not progress, leave=False)):
        tt = t_batch(t, x)
        # 1. predict x0 (and eps) from the network output
        x0_hat, _ = diffusion.x0_eps(call_model(model, x, tt, cond), x, tt, clip_x0=clip_x0)
        # 2. posterior mean mu_tilde(x_t, x0_hat) (Eq. 7)
        mean, _ = diffusion.q_posterior(x0_hat, x, tt)
        # 3. add noise sigma_t z, except at the last step
        if t > 0:
            sigma = diffusion.gather(sigma2_table, tt, x).sqrt()
            x = mean + sigma * randn(x.shape, generator, x.device, x.dtype)
        else:
            x = mean
        if callback is not None:
            callback(dict(i=i, t=t, x_t=x, x0_hat=x0_hat))
    return x


def ddim_timesteps(T: int, steps: int, spacing: str = "leading") -> np.ndarray:
    """Decreasing integer timesteps tau_S > ... > tau_1 of a DDIM run (Song et al. 2021, Sec. 4.2):
    spaced_timesteps' 'leading' (0, T//S, 2T//S, ...) or 'trailing' (ends at T - 1); a timestep that
    rounding repeats is kept once."""
    check_steps(T, steps, "DDIM")
    check_spacing(spacing, "DDIM", ("leading", "trailing"))
    ts = spaced_timesteps(T, steps, spacing).astype(np.int64)
    return np.unique(ts)[::-1].copy()


@torch.no_grad()
def ddim(
    model: Model,
    diffusion: GaussianDiffusion,
    x_T: Shape,
    *,
    cond: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    clip_x0: bool = False,
    progress: bool = True,
    callback: Callback = None,
    steps: int = 50,  # S, number of model evaluations (<= T)
    eta: float = 0.0,  # 0: deterministic DDIM, 1: DDPM-like ancestral noise
    spacing: Optional[str] = None,  # leading | trailing; None: trailing when alpha_bar_T = 0 (zero terminal SNR:
                                    # the first step must be at t = T, Lin et al. 2024, Sec. 3.3), else leading
    device=None,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, Eq. 12, with sigma_t(eta) of Eq. 16)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must be in [0, 1], got {eta}")
    if spacing is None:
        spacing = "trailing" if float(diffusion.alpha_bar[-1]) == 0.0 else "leading"
    x = initial_noise(x_T, generator, device)  # (B, C, H, W)
    ts = ddim_timesteps(diffusion.T, steps, spacing)
    for i, t in enumerate(tqdm(ts, desc="DDIM", disable=not progress, leave=False)):
        t = int(t)
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
        tt = t_batch(t, x)
        ab = float(diffusion.alpha_bar[t])
        ab_prev = float(diffusion.alpha_bar[t_prev]) if t_prev >= 0 else 1.0
        # 1. predict x0 and eps
        x0_hat, eps_hat = diffusion.x0_eps(call_model(model, x, tt, cond), x, tt, clip_x0=clip_x0)
        # 2. sigma_t(eta) = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev)   (Eq. 16)
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        # 3. x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z   (Eq. 12)
        x = ab_prev**0.5 * x0_hat + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps_hat
        if sigma > 0:
            x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback(dict(i=i, t=t, x_t=x, x0_hat=x0_hat))
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function registered under `name`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def default_steps(name: str) -> Optional[int]:
    """The steps the sampler `name` takes when not told (stated once, in its signature); None for DDPM (all T)."""
    p = inspect.signature(get_sampler(name)).parameters.get("steps")
    return None if p is None else p.default
