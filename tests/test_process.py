"""The forward process and the schedules against closed forms, Bayes' rule and diffusers."""
import math

import pytest
import torch

from dff.diffusion import GaussianDiffusion, make_betas
from dff.diffusion.schedules import SCHEDULES

DIFFUSERS_NAMES = {"linear": "linear", "quadratic": "scaled_linear", "sigmoid": "sigmoid",
                   "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_alpha_bar_matches_diffusers_at_T_1000(schedule):
    diffusers = pytest.importorskip("diffusers")
    ours = GaussianDiffusion(1000, schedule).alpha_bar
    ref = diffusers.DDPMScheduler(1000, beta_schedule=DIFFUSERS_NAMES[schedule]).alphas_cumprod.double()
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-5)


def test_linear_alpha_bar_T_known_value():
    # DDPM's linear schedule leaves sqrt(alpha_bar_T) ~ 0.0064 of the signal (alpha_bar_T ~ 4.04e-5)
    ab = GaussianDiffusion(1000, "linear").alpha_bar
    assert ab[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)


def test_cosine_alpha_bar_closed_form():
    T, s = 1000, 0.008
    ab = GaussianDiffusion(T, "cosine").alpha_bar

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    # all steps before the beta clip at 0.999 (the last few) follow Eq. 17 exactly
    for t in [1, 10, 100, 500, 900, 990]:
        assert ab[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T", [50, 200, 1000, 4000])
def test_any_T_reaches_noise(schedule, T):
    ab = GaussianDiffusion(T, schedule).alpha_bar
    assert torch.all(ab[1:] < ab[:-1])
    assert ab[0] > 0.97 and ab[-1] < 1e-3


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_zero_terminal_snr(schedule):
    plain = GaussianDiffusion(1000, schedule)
    zero = GaussianDiffusion(1000, schedule, prediction="v", zero_terminal_snr=True)
    assert zero.alpha_bar[-1].item() == 0.0
    assert zero.alpha_bar[0].item() == pytest.approx(plain.alpha_bar[0].item(), rel=1e-12)
    assert torch.all(zero.alpha_bar[1:] < zero.alpha_bar[:-1])


def test_zero_terminal_snr_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(1000, rescale_betas_zero_snr=True).alphas_cumprod.double()
    ours = GaussianDiffusion(1000, "linear", "v", zero_terminal_snr=True).alpha_bar
    assert torch.allclose(ours, ref, atol=1e-6)


def test_zero_terminal_snr_with_eps_is_refused():
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        GaussianDiffusion(1000, "linear", "eps", zero_terminal_snr=True)


def test_bad_schedule_and_prediction_names():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        make_betas("cosin", 100)
    with pytest.raises(ValueError, match="unknown prediction 'epsilon'"):
        GaussianDiffusion(100, "linear", "epsilon")


def test_posterior_is_bayes_rule():
    """q(x_{t-1}|x_t, x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): product of two Gaussians in x_{t-1}."""
    d = GaussianDiffusion(1000, "cosine")
    t = torch.tensor([1, 5, 100, 500, 999])
    x0, xt = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    mean, var = d.q_posterior(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        ab_prev = d.alpha_bar[ti - 1].item() if ti > 0 else 1.0
        beta = d.betas[ti].item()
        prec = 1 / (1 - ab_prev) + (1 - beta) / beta
        m = (math.sqrt(ab_prev) * x0[i] / (1 - ab_prev) + math.sqrt(1 - beta) * xt[i] / beta) / prec
        assert var[i].item() == pytest.approx(1 / prec, rel=1e-9)
        assert torch.allclose(mean[i], m, rtol=1e-9, atol=1e-12)


def test_posterior_at_first_step_is_x0():
    d = GaussianDiffusion(1000, "linear")
    x0, xt = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    mean, var = d.q_posterior(x0, xt, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(mean, x0) and torch.all(var == 0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_conversions_round_trip(prediction):
    d = GaussianDiffusion(1000, "cosine", prediction)
    x0, eps = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randn(6, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    xt = d.q_sample(x0, t, eps)
    x0_hat, eps_hat = d.x0_eps(d.target(x0, t, eps), xt, t)
    assert torch.allclose(x0_hat, x0, atol=1e-6) and torch.allclose(eps_hat, eps, atol=1e-9)


def test_v_definition():
    d = GaussianDiffusion(1000, "linear", "v")
    x0, eps = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    t = torch.tensor([3, 300, 900])
    ab = d.alpha_bar[t][:, None]
    assert torch.allclose(d.target(x0, t, eps), ab.sqrt() * eps - (1 - ab).sqrt() * x0)


def test_forward_jump_statistics():
    """Samples of q(x_t|x_0) have mean sqrt(alpha_bar_t) x_0 and variance 1 - alpha_bar_t."""
    d = GaussianDiffusion(1000, "linear")
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for ti in [10, 300, 999]:
        x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
        t = torch.full((n,), ti)
        xt = d.q_sample(x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
        ab = d.alpha_bar[ti].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=4 * math.sqrt((1 - ab) / n))
        assert xt.var().item() == pytest.approx(1 - ab, rel=0.02)


def test_single_steps_compose_to_the_jump():
    """t single steps q(x_t|x_{t-1}) give the same distribution as one jump q(x_t|x_0)."""
    d = GaussianDiffusion(50, "linear")
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x = torch.full((n, 1), -0.5, dtype=torch.float64)
    for ti in range(30):
        x = d.q_step_sample(x, torch.full((n,), ti), torch.randn(n, 1, generator=g, dtype=torch.float64))
    ab = d.alpha_bar[29].item()
    assert x.mean().item() == pytest.approx(-0.5 * math.sqrt(ab), abs=0.01)
    assert x.var().item() == pytest.approx(1 - ab, rel=0.02)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_is_zero_for_the_exact_target_and_positive_otherwise(prediction):
    d = GaussianDiffusion(100, "linear", prediction)
    x0 = torch.randn(4, 1, 4, 4)
    eps, t = torch.randn_like(x0), torch.randint(0, 100, (4,))

    def oracle(xt, tt):
        return d.target(x0, tt, eps)
    assert d.loss(oracle, x0, t=t, eps=eps).item() == pytest.approx(0.0, abs=1e-10)
    assert d.loss(lambda xt, tt: torch.zeros_like(xt), x0, t=t, eps=eps).item() > 0.01


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_matches_closed_form(prediction):
    """Loss with min-SNR-5 = mean_b w(t_b) * mean ||target_b||^2 for a model that outputs zeros, with
    w = min(SNR, 5) for x0, min(SNR, 5) / SNR for eps, min(SNR, 5) / (SNR + 1) for v (Hang et al. 2023)."""
    d = GaussianDiffusion(1000, "cosine", prediction, loss_weighting="min_snr", min_snr_gamma=5.0)
    x0, eps = torch.randn(6, 2, 4, 4), torch.randn(6, 2, 4, 4)
    t = torch.tensor([0, 10, 100, 400, 800, 999])
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    snr = d.alpha_bar[t] / (1 - d.alpha_bar[t])
    w = {"x0": snr.clamp(max=5), "eps": snr.clamp(max=5) / snr, "v": snr.clamp(max=5) / (snr + 1)}[prediction]
    per_sample = (d.target(x0, t, eps) ** 2).flatten(1).mean(1)
    assert torch.allclose(d.loss(zero, x0, t=t, eps=eps), (w.float() * per_sample).mean(), rtol=1e-5)
    plain = GaussianDiffusion(1000, "cosine", prediction)
    assert torch.allclose(plain.loss(zero, x0, t=t, eps=eps), per_sample.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown loss_weighting 'snr'"):
        GaussianDiffusion(1000, "cosine", prediction, loss_weighting="snr")


def test_offset_noise_shifts_each_channel_mean():
    torch.manual_seed(0)
    x0 = torch.zeros(4000, 3, 8, 8)
    means = GaussianDiffusion(100, "cosine", offset_noise=0.5).noise(x0).mean((2, 3))  # (B, C)
    assert abs(means.var().item() - (1 / 64 + 0.25)) < 0.02  # per-pixel 1/HW plus offset^2
    plain = GaussianDiffusion(100, "cosine").noise(x0).mean((2, 3))
    assert abs(plain.var().item() - 1 / 64) < 0.003


def test_mixture_denoiser_is_tweedies_formula():
    """The mixture's E[x0 | x_t] (responsibilities of the components, dff.diffusion.analytic) equals Tweedie's
    formula E[x0 | x_t] = (x_t + sigma^2 grad log q_t(x_t)) / alpha, the score taken by autograd of the
    noisy marginal density: two independent routes to the same closed form."""
    from analytic import MIX

    x_t = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    for ab in (0.98, 0.5, 0.05):
        x = x_t.clone().requires_grad_(True)
        score, = torch.autograd.grad(MIX.log_prob(x, ab).sum(), x)
        tweedie = (x_t + (1 - ab) * score) / ab**0.5
        assert torch.allclose(MIX.x0_mean(x_t, ab), tweedie, atol=1e-10), ab
    d = GaussianDiffusion(100, "linear", "v")
    t = torch.full((64,), 40)
    x0_hat, _ = d.x0_eps(MIX.denoiser(d)(x_t, t), x_t, t)  # through the prediction type and back
    assert torch.allclose(x0_hat, MIX.x0_mean(x_t, float(d.alpha_bar[40])), atol=1e-10)
