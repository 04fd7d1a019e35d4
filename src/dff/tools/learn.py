"""Helpers for the course notebooks (notebooks/*.py): the `learn` extra, quick mode, figures of image
batches, and the checks of the exercises.

    from dff.tools import learn
    learn.require()                      # first cell: names what to install when the learn extra is missing
    steps = learn.budget(1200, 40)       # the full budget, or the quick one when DFF_QUICK=1 (CI)
    learn.show(ax, images, nrow=8)       # a batch (B, C, H, W) in [0, 1] as one grid on a matplotlib axis
    q_sample = learn.check_q_sample(q_sample)  # an exercise: AssertionError naming the case, expected and got;
                                               # not written yet: one line, and the library's version goes on

Each check compares the learner's function with the library's on a few named cases (the inputs that
catch the usual mistakes) and raises AssertionError naming the case, the expected and the got values; it
returns the function the notebook goes on with: the learner's, or, for an exercise not written yet (its stub
raises NotImplementedError), the library's, with one line saying so, so that Run All completes as shipped.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable, Sequence, TypeVar

import torch

from ..diffusion import GaussianDiffusion, output_from_x0_eps
from ..models.latent_space import LatentSpace
from ..evaluation.psnr_ssim import psnr
from ..viz import make_grid

QUICK_ENV = "DFF_QUICK"  # DFF_QUICK=1 shrinks every training budget of the notebooks (CI)
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


def _check(fn: Callable, name: str, cases: Sequence[tuple[str, tuple]], reference: Callable, *,
           atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Compare fn(*args) with reference(*args) on each named case: True when all agree, False (with one line)
    when fn is not written yet (it raises NotImplementedError), AssertionError at the first case that differs."""
    for case, args in cases:
        expected = reference(*args)
        try:
            got = fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
        except NotImplementedError:
            print(f"{name}: not written yet, so the notebook goes on with the library's version; replace the "
                  "`raise NotImplementedError` in its cell with your code and run both cells again")
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
