"""Helpers for the course notebooks (notebooks/*.py): the `learn` extra, quick mode, figures of image
batches, and the checks of the exercises.

    from dff.tools import learn
    learn.require()                      # first cell: names what to install when the learn extra is missing
    steps = learn.budget(1200, 40)       # the full budget, or the quick one when DFF_QUICK=1 (CI)
    fid = learn.record("fid_ddim_10", fid)  # a number the text quotes: kept by scripts/run_notebooks.py
    learn.show(ax, images, nrow=8)       # a batch (B, C, H, W) in [0, 1] as one grid on a matplotlib axis
    q_sample = learn.check_q_sample(q_sample)  # an exercise: AssertionError naming the case, expected and got;
                                               # not written yet: one line, and the library's version goes on

Each check compares the learner's function with the library's on a few named cases (the inputs that
catch the usual mistakes) and raises AssertionError naming the case, the expected and the got values; it
returns the function the notebook goes on with: the learner's, or, for an exercise not written yet (its stub
raises NotImplementedError), the library's, with one line saying so, so that Run All completes as shipped.
"""
from __future__ import annotations

import copy
import importlib
import math
import os
from typing import Callable, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion import GaussianDiffusion, output_from_x0_eps
from ..diffusion.analytic import GaussianMixture
from ..models.autoencoders import to_model_space
from ..models.latent_space import LatentSpace
from ..evaluation.psnr_ssim import psnr
from ..viz import make_grid

QUICK_ENV = "DFF_QUICK"  # DFF_QUICK=1 shrinks every training budget of the notebooks (CI)
RECORD_ENV = "DFF_RECORD"  # a JSON file that learn.record writes the quoted numbers to (scripts/run_notebooks.py)
LEARN_INSTALL = 'pip install "diffusion-fast-forward[learn]"'
LEARN_MODULES: tuple[str, ...] = ("IPython", "ipykernel", "jupytext")  # what opening and running the notebooks needs

T = TypeVar("T")


# ---------------------------------------------------------------------- set-up
def require(*modules: str) -> None:
    """Raise ModuleNotFoundError naming the missing modules and the install command when any of
    `modules` (default: the learn extra's IPython, ipykernel, jupytext) cannot be imported; then make
    the library's Figures draw inline (inline_figures)."""
    missing = []
    for name in modules or LEARN_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ModuleNotFoundError(f"the notebooks need {', '.join(missing)}, which are not installed: "
                                  f"{LEARN_INSTALL} (in a clone: pip install -e \".[learn]\")")
    inline_figures()


def inline_figures() -> None:
    """In a notebook, draw the matplotlib Figures that dff.viz returns (built without pyplot) inline, as
    `%matplotlib inline` does; outside IPython, nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "run_line_magic"):
        shell.run_line_magic("matplotlib", "inline")


def quick() -> bool:
    """True when the environment variable DFF_QUICK is 1 (or true, yes, on): the notebooks then shrink
    every training budget so that CI runs each in seconds (their figures are then mostly noise)."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def budget(full: T, quick_value: T) -> T:
    """`full` normally, `quick_value` in quick mode (DFF_QUICK=1)."""
    return quick_value if quick() else full


def record(name: str, value: float) -> float:
    """Keep a number that the notebook's text quotes, and return it. With DFF_RECORD=FILE in the environment
    (scripts/run_notebooks.py sets it for the full-mode runs whose results the course quotes) `name: value` is
    added to that JSON file; otherwise nothing is written."""
    value = float(value)
    path = os.environ.get(RECORD_ENV)
    if path:
        import json
        from pathlib import Path

        f = Path(path)
        kept = json.loads(f.read_text()) if f.is_file() else {}
        kept[name] = value
        f.write_text(json.dumps(kept, indent=1) + "\n")
    return value


# ---------------------------------------------------------------------- figures
def show(ax, images: torch.Tensor, nrow: int | None = None, title: str = "") -> None:
    """Draw a batch (B, C, H, W) in [0, 1] as one grid on a matplotlib axis (gray for 1 channel)."""
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow)  # (C, H', W')
    if grid.shape[0] == 1:
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(grid[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


# ---------------------------------------------------------------------- exercise checks
def _describe(x) -> str:
    if not isinstance(x, torch.Tensor):
        return f"{type(x).__name__} {x!r}"[:80]
    flat = x.detach().flatten()[:4].tolist()
    values = ", ".join(f"{v:.4g}" for v in flat) + (", ..." if x.numel() > 4 else "")
    return f"shape {tuple(x.shape)}, values [{values}]"


def _not_written(name: str) -> None:
    print(f"{name}: not written yet, so the notebook goes on with the library's version; replace the "
          "`raise NotImplementedError` in its cell with your code and run both cells again")


def _check(fn: Callable, name: str, cases: Sequence[tuple[str, tuple]], reference: Callable, *,
           atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Compare fn(*args) with reference(*args) on each named case: True when all agree, False (with one line)
    when fn is not written yet (it raises NotImplementedError), AssertionError at the first case that differs."""
    for case, args in cases:
        expected = reference(*args)
        try:
            got = fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
        except NotImplementedError:
            _not_written(name)
            return False
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{name}, case '{case}': expected a tensor ({_describe(expected)}), "
                                 f"got {_describe(got)}")
        if got.shape != expected.shape:
            raise AssertionError(f"{name}, case '{case}': expected shape {tuple(expected.shape)}, got shape "
                                 f"{tuple(got.shape)} (check how the per-sample numbers broadcast against the images)")
        close = torch.isclose(got.detach().double().cpu(), expected.double(), atol=atol, rtol=rtol)
        if not close.all():
            diff = (got.detach().double().cpu() - expected.double()).abs()
            where = tuple(int(i) for i in torch.nonzero(~close)[0]) if diff.dim() else ()
            raise AssertionError(f"{name}, case '{case}': expected {_describe(expected)}, got {_describe(got)}; "
                                 f"largest difference {diff.max().item():.4g}"
                                 + (f", first at index {where}" if where else ""))
    print(f"{name}: correct on all {len(cases)} cases")
    return True


def _yours_or(fn: Callable, written: bool, library: Callable) -> Callable:
    """The learner's function when it passed its check, else the library's (an exercise not written yet)."""
    return fn if written else library


# ---------------------------------------------------------------------- the library's versions of the exercises
def q_sample_library(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (DDPM Eq. 4) from the (T,) table, t (B,)."""
    ab = alpha_bar.to(x0.device)[t].view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)  # (B, 1, ...)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def posterior_mean_library(x0, x_t, t, betas, alpha_bar) -> torch.Tensor:
    """mu_tilde_t (DDPM Eq. 7) from 0-indexed (T,) tables, alpha_bar before the first step = 1."""
    shape = (-1, *[1] * (x0.dim() - 1))
    ab = alpha_bar[t].view(shape).to(x0.dtype)  # in x0's precision, as GaussianDiffusion.q_posterior computes
    ab_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])[t].view(shape).to(x0.dtype)
    beta = betas[t].view(shape).to(x0.dtype)
    return ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x_t


def check_q_sample(fn: Callable) -> Callable:
    """fn(x0, t, eps, alpha_bar) -> x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps (DDPM Eq. 4),
    t a (B,) tensor of timesteps, alpha_bar the (T,) table; checked against GaussianDiffusion.q_sample."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for case, schedule, T, t, shape in [
        ("t = 0 for every sample (almost clean)", "linear", 1000, [0, 0, 0, 0], (4, 1, 8, 8)),
        ("t = T - 1 for every sample (almost pure noise)", "linear", 1000, [999] * 4, (4, 1, 8, 8)),
        ("a different t for each sample of the batch", "cosine", 1000, [0, 250, 500, 999], (4, 3, 8, 8)),
        ("vectors (B, D) instead of images", "cosine", 50, [3, 17, 49], (3, 5)),
    ]:
        d = GaussianDiffusion(timesteps=T, schedule=schedule)
        x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        cases.append((case, (x0, torch.tensor(t), eps, d.alpha_bar.clone(), d)))

    def reference(x0, t, eps, alpha_bar, d):
        return d.q_sample(x0, t, eps)

    written = _check(lambda x0, t, eps, alpha_bar, d: fn(x0, t, eps, alpha_bar), "q_sample", cases, reference)
    return _yours_or(fn, written, q_sample_library)


def check_v_target(fn: Callable) -> Callable:
    """fn(x0, eps, alpha, sigma) -> v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4), alpha and sigma
    shaped (B, 1, 1, 1); checked against the library's output_from_x0_eps("v", ...)."""
    g = torch.Generator().manual_seed(1)
    cases = []
    for case, alpha_bar in [
        ("nearly clean (alpha ~ 1, sigma ~ 0): v ~ eps", [0.999, 0.99]),
        ("nearly noise (alpha ~ 0, sigma ~ 1): v ~ -x0", [0.001, 0.01]),
        ("alpha != sigma, different per sample", [0.2, 0.5, 0.9]),
    ]:
        ab = torch.tensor(alpha_bar).view(-1, 1, 1, 1)
        shape = (len(alpha_bar), 1, 4, 4)
        cases.append((case, (torch.randn(shape, generator=g), torch.randn(shape, generator=g), ab.sqrt(),
                             (1 - ab).sqrt())))
    library = lambda x0, eps, alpha, sigma: output_from_x0_eps("v", x0, eps, alpha, sigma)  # noqa: E731
    return _yours_or(fn, _check(fn, "v_target", cases, library), library)


def check_psnr(fn: Callable) -> Callable:
    """fn(x, y) -> the mean over the batch of each image's PSNR in dB, images (B, C, H, W) in [0, 1]
    (data range 1); checked against dff.evaluation.psnr_ssim.psnr."""
    g = torch.Generator().manual_seed(2)
    y = torch.rand(3, 3, 8, 8, generator=g)
    noise = torch.randn(3, 3, 8, 8, generator=g)
    cases = [
        ("one grayscale image", (y[:1, :1], (y[:1, :1] + 0.1 * noise[:1, :1]).clamp(0, 1))),
        ("a batch whose images have different errors (average the PSNRs, not the errors)",
         (y, (y + torch.tensor([0.01, 0.1, 0.3]).view(3, 1, 1, 1) * noise).clamp(0, 1))),
    ]
    return _yours_or(fn, _check(fn, "psnr", cases, lambda x, target: psnr(x, target), atol=1e-3), psnr)


def check_latent_scale(fn: Callable) -> Callable:
    """fn(z) -> the latent scale s = 1 / std of all elements of the latents z (Rombach et al. 2022,
    Sec. 4.3.2); checked against LatentSpace.estimate_scale."""
    g = torch.Generator().manual_seed(3)
    cases = [
        ("centred latents of std 4", (4 * torch.randn(64, 4, 8, 8, generator=g),)),
        ("latents with a mean of 3 (the std is about the spread around the mean)",
         (3 + torch.randn(64, 4, 8, 8, generator=g),)),
        ("channels of different spreads (one scale for all of them)",
         (torch.randn(64, 4, 8, 8, generator=g) * torch.tensor([0.5, 1.0, 2.0, 8.0]).view(1, 4, 1, 1),)),
    ]

    def reference(z):
        return torch.tensor(LatentSpace(None, z.shape[1]).estimate_scale(z))

    written = _check(lambda z: torch.as_tensor(fn(z), dtype=torch.float64).reshape(()), "latent_scale", cases,
                     reference)
    return _yours_or(fn, written, lambda z: LatentSpace(None, z.shape[1]).estimate_scale(z))


def check_posterior_mean(fn: Callable) -> Callable:
    """fn(x0, x_t, t, betas, alpha_bar) -> mu_tilde_t(x_t, x0), the mean of q(x_{t-1} | x_t, x0)
    (DDPM Eq. 7) with 0-indexed tables and alpha_bar before the first step = 1; checked against
    GaussianDiffusion.q_posterior."""
    g = torch.Generator().manual_seed(4)
    cases = []
    for case, schedule, t, shape in [
        ("the first step, t = 0 (alpha_bar of the step before is 1: the mean is x0)", "linear", [0, 0], (2, 1, 4, 4)),
        ("the last step, t = T - 1", "linear", [999, 999], (2, 1, 4, 4)),
        ("a different t for each sample of the batch", "cosine", [1, 10, 500, 998], (4, 3, 4, 4)),
    ]:
        d = GaussianDiffusion(timesteps=1000, schedule=schedule)
        x0, x_t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        cases.append((case, (x0, x_t, torch.tensor(t), d.betas.clone(), d.alpha_bar.clone(), d)))

    def reference(x0, x_t, t, betas, alpha_bar, d):
        return d.q_posterior(x0, x_t, t)[0]

    written = _check(lambda x0, x_t, t, betas, alpha_bar, d: fn(x0, x_t, t, betas, alpha_bar), "posterior_mean",
                     cases, reference)
    return _yours_or(fn, written, posterior_mean_library)


# ---------------------------------------------------------------------- notebook 01b: why it works
def ring_mixture() -> GaussianMixture:
    """The 2-D data of notebooks 01 and 01b: eight modes on a circle of radius 2, std 0.12, weights 3:1:2:1:3:1:2:1."""
    angle = torch.arange(8) * 2 * math.pi / 8
    return GaussianMixture(torch.tensor([3.0, 1, 2, 1, 3, 1, 2, 1]), torch.stack([2 * angle.cos(), 2 * angle.sin()], 1),
                           torch.full((8,), 0.12))


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) for points x_t (B, D): an MLP of x_t and a sinusoidal embedding of t (the Transformer's,
    as DDPM, Sec. 4); float32 inside, the output in x_t's dtype."""

    def __init__(self, dim: int = 2, width: int = 128, t_features: int = 32):
        super().__init__()
        half = t_features // 2
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(half) / half))  # (F/2,)
        self.net = nn.Sequential(nn.Linear(dim + t_features, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angle = t.reshape(-1, 1).float() * self.freqs  # (B, F/2)
        return self.net(torch.cat([x_t.float(), angle.sin(), angle.cos()], 1)).to(x_t.dtype)  # (B, D)


def ddpm_step_eps_library(x_t, t: int, eps_hat, betas, alpha_bar, noise) -> torch.Tensor:
    """x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) + sigma_t z (DDPM Algorithm 2,
    line 4) with sigma_t^2 = beta_tilde_t (Eq. 7), as dff's ddpm; 0-indexed tables, no noise at t = 0."""
    beta, ab = float(betas[t]), float(alpha_bar[t])
    ab_prev = float(alpha_bar[t - 1]) if t > 0 else 1.0  # alpha_bar before the first step is 1
    mean = (x_t - beta / (1 - ab) ** 0.5 * eps_hat) / (1 - beta) ** 0.5  # Eq. 11
    if t == 0:
        return mean
    return mean + ((1 - ab_prev) / (1 - ab) * beta) ** 0.5 * noise  # sigma_t = sqrt(beta_tilde_t)


def ddim_step_library(x_t, t: int, t_prev: int, eps_hat, alpha_bar) -> torch.Tensor:
    """x_{t_prev} = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev) eps_hat (Song et al. 2021, Eq. 12 with
    eta = 0), x0_hat from Eq. 4; t_prev = -1: alpha_bar_prev = 1, the step returns x0_hat."""
    ab = float(alpha_bar[t])
    ab_prev = float(alpha_bar[t_prev]) if t_prev >= 0 else 1.0
    x0_hat = (x_t - (1 - ab) ** 0.5 * eps_hat) / ab**0.5
    return ab_prev**0.5 * x0_hat + (1 - ab_prev) ** 0.5 * eps_hat


def train_denoiser_library(net: nn.Module, data_sampler: Callable[[], torch.Tensor], diffusion: GaussianDiffusion,
                           steps: int, ema_decay: float, lr: float = 2e-3, *, t_min: int = 0) -> nn.Module:
    """Train net = eps_theta(x_t, t) on L_simple (DDPM Algorithm 1, Eq. 14) with Adam and return its EMA copy,
    theta_ema <- decay theta_ema + (1 - decay) theta after every step; data_sampler() gives a batch x0 (B, D).
    t_min > 0 draws t from t_min, ..., T - 1 only (a question of notebook 01b)."""
    ema = copy.deepcopy(net).requires_grad_(False)  # theta_ema starts at theta
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        x0 = data_sampler()  # (B, D)
        t = torch.randint(t_min, diffusion.T, (x0.shape[0],))  # (B,): one t per sample, uniform
        eps = torch.randn_like(x0)
        loss = ((net(diffusion.q_sample(x0, t, eps), t) - eps) ** 2).mean()  # Eq. 14
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1 - ema_decay)
    return ema


def x0_distance(model: Callable, mixture: GaussianMixture, diffusion: GaussianDiffusion, t: int, n: int = 1000,
                generator: torch.Generator | None = None) -> float:
    """RMS distance between the x0 that an eps-model implies, (x_t - sigma eps_hat) / alpha, and the exact
    E[x0 | x_t] of the mixture, over n points x_t ~ q(x_t) at timestep t."""
    x0 = mixture.sample(n, generator)  # (n, D) float64
    tt = torch.full((n,), t)
    x_t = diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=generator, dtype=x0.dtype))
    alpha, sigma = diffusion.alpha_sigma(tt, x_t)
    with torch.no_grad():
        x0_hat = (x_t - sigma * model(x_t, tt).double()) / alpha
    return float((x0_hat - mixture.x0_mean(x_t, float(diffusion.alpha_bar[t]))).pow(2).sum(1).mean().sqrt())


def check_ddpm_step_eps(fn: Callable) -> Callable:
    """fn(x_t, t, eps_hat, betas, alpha_bar, noise) -> x_{t-1}: one step of DDPM's sampler written with eps
    (Algorithm 2, line 4) and sigma_t^2 = beta_tilde_t, t an int, 0-indexed; checked against
    ddpm_step_eps_library, whose chain the tests check against dff's ddpm."""
    g = torch.Generator().manual_seed(5)
    cases = []
    for case, schedule, t, shape in [
        ("the first step, t = T - 1", "linear", 999, (4, 2)),
        ("t = 1, where beta_tilde_t (the posterior variance, dff's choice) is about half of beta_t",
         "linear", 1, (4, 2)),
        ("the last step, t = 0 (no noise; the tables have nothing before it)", "linear", 0, (4, 2)),
        ("images (B, C, H, W) at t = 500, cosine schedule", "cosine", 500, (2, 1, 4, 4)),
    ]:
        d = GaussianDiffusion(1000, schedule)
        x_t, eps_hat, z = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
        cases.append((case, (x_t, t, eps_hat, d.betas.clone(), d.alpha_bar.clone(), z)))
    return _yours_or(fn, _check(fn, "ddpm_step_eps", cases, ddpm_step_eps_library), ddpm_step_eps_library)


def check_ddim_step(fn: Callable) -> Callable:
    """fn(x_t, t, t_prev, eps_hat, alpha_bar) -> x_{t_prev}: one deterministic DDIM step (Song et al. 2021,
    Eq. 12, eta = 0), t_prev = -1 after the last timestep; checked against ddim_step_library, whose chain the
    tests check against dff's ddim."""
    g = torch.Generator().manual_seed(6)
    cases = []
    for case, schedule, t, t_prev, shape in [
        ("a jump of 20 steps, t = 999 -> t_prev = 979", "linear", 999, 979, (4, 2)),
        ("consecutive steps, t = 500 -> t_prev = 499", "linear", 500, 499, (4, 2)),
        ("the last step, t = 19 -> t_prev = -1 (alpha_bar before the first step is 1: the result is x0_hat)",
         "linear", 19, -1, (4, 2)),
        ("images (B, C, H, W), cosine schedule, t = 600 -> t_prev = 400", "cosine", 600, 400, (2, 1, 4, 4)),
    ]:
        d = GaussianDiffusion(1000, schedule)
        x_t, eps_hat = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
        cases.append((case, (x_t, t, t_prev, eps_hat, d.alpha_bar.clone())))
    return _yours_or(fn, _check(fn, "ddim_step", cases, ddim_step_library), ddim_step_library)


TRAIN_CHECK = dict(steps=1500, batch=256, ema_decay=0.99, lr=2e-3, seed=0)  # a few seconds on one CPU thread
TRAIN_CHECK_LEVELS = ((100, 0.24), (250, 0.14), (400, 0.14), (550, 0.4))  # (t, allowed RMS distance to E[x0 | x_t])


def check_train_denoiser(fn: Callable) -> Callable:
    """fn(net, data_sampler, diffusion, steps, ema_decay, lr) -> the EMA copy of net after `steps` Adam steps on
    L_simple (DDPM Algorithm 1, eps target). The check trains MLPDenoiser with it on ring_mixture() (a fixed seed,
    TRAIN_CHECK) and measures how far the x0 its EMA network implies is from the exact E[x0 | x_t] at four noise
    levels (x0_distance), against the allowed distances of TRAIN_CHECK_LEVELS."""
    c, name = TRAIN_CHECK, "train_denoiser"
    mixture, diffusion = ring_mixture(), GaussianDiffusion(1000, "linear")
    threads = torch.get_num_threads()
    with torch.random.fork_rng():  # the notebook's own random numbers stay as they were
        torch.manual_seed(c["seed"])
        g = torch.Generator().manual_seed(c["seed"])
        net = MLPDenoiser()
        theta_0 = [p.detach().clone() for p in net.parameters()]
        torch.set_num_threads(1)  # a network this small trains fastest on one thread
        try:
            got = fn(net, lambda: mixture.sample(c["batch"], g).float(), diffusion, c["steps"], c["ema_decay"], c["lr"])
        except NotImplementedError:
            _not_written(name)
            return train_denoiser_library
        finally:
            torch.set_num_threads(threads)
        if not isinstance(got, nn.Module):
            raise AssertionError(f"{name}: expected the EMA network (an nn.Module), got {_describe(got)}")

        def same(params) -> bool:
            return all(torch.equal(a, b) for a, b in zip(got.parameters(), params))

        problem = ("it is `net` itself, whose weights are the last step's theta: return the EMA copy" if got is net
                   else "its weights are still the initial ones: the EMA copy was never moved towards theta"
                   if same(theta_0) else "its weights are the last step's theta, not their moving average"
                   if same(net.parameters()) else "")
        if problem:
            raise AssertionError(f"{name}, case 'the returned network': {problem}")
        gen = torch.Generator().manual_seed(c["seed"] + 1)
        measured = [(t, x0_distance(got, mixture, diffusion, t, generator=gen), allowed)
                    for t, allowed in TRAIN_CHECK_LEVELS]
    table = ", ".join(f"t = {t}: {m:.3f} (allowed {a})" for t, m, a in measured)
    for t, m, allowed in measured:
        if not m <= allowed:
            raise AssertionError(
                f"{name}, case 't = {t}, alpha_bar = {float(diffusion.alpha_bar[t]):.3f}': the EMA network's x0 is "
                f"{m:.3f} from E[x0 | x_t] (RMS over 1000 points), allowed {allowed}; at every level: {table}. Usual "
                "causes: t not drawn from all of 0, ..., T - 1 for each sample, a target other than eps, an EMA "
                "copy that is not updated after every step")
    print(f"{name}: correct on all {len(measured)} cases (distance of the EMA network's x0 to E[x0 | x_t]: {table})")
    return fn


# ---------------------------------------------------------------------- notebook 05: the resize condition code
def resize_code_library(cond: torch.Tensor, f: int) -> torch.Tensor:
    """The 'resize' condition code of LatentSpace.condition_code: the condition (B, C, H, W) in [0, 1] brought to
    [-1, 1] and area-averaged over each f x f block, (B, C, H/f, W/f) (note 05, "Condition codes")."""
    c = to_model_space(cond)
    return F.interpolate(c, size=(c.shape[-2] // f, c.shape[-1] // f), mode="area")


def check_resize_code(fn: Callable) -> Callable:
    """fn(cond, f) -> the 'resize' condition code of a latent model whose autoencoder has the factor f; checked
    against resize_code_library, which the tests check against LatentSpace.condition_code."""
    g = torch.Generator().manual_seed(7)
    cases = [
        ("a constant gray condition (0.5 everywhere), f = 4: the code is in the model's range",
         (torch.full((1, 1, 8, 8), 0.5), 4)),
        ("fine detail, f = 4: each code pixel is the mean of its 4 x 4 block, not a sample of it",
         (torch.rand(2, 1, 16, 16, generator=g), 4)),
        ("3 channels and a non-square 8 x 12 condition, f = 2", (torch.rand(1, 3, 8, 12, generator=g), 2)),
    ]
    return _yours_or(fn, _check(fn, "resize_code", cases, resize_code_library), resize_code_library)
