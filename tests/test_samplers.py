"""Samplers recover analytic data with the exact denoiser, agree with diffusers step by step,
and DDIM(eta=1, all steps) is DDPM with the posterior variance."""
import pytest
import torch

from analytic import MIX, MU, N, SIGMA, GaussianData, assert_recovers_mixture, gaussian_check, x_T
from reference import PRED, make_fake_model, same_tables
from dff.diffusion import GaussianDiffusion, ddim, ddim_timesteps, ddpm, get_sampler

@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ddpm_recovers_gaussian(variance):
    d = GaussianDiffusion(1000, "linear")
    x = ddpm(GaussianData(MU, SIGMA).denoiser(d), d, x_T(), generator=torch.Generator().manual_seed(1),
             progress=False, variance=variance)
    gaussian_check(x)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_50_steps_recovers_gaussian(prediction, schedule):
    d = GaussianDiffusion(1000, schedule, prediction)
    x = ddim(GaussianData(MU, SIGMA).denoiser(d), d, x_T(), steps=50, eta=0.0, progress=False)
    gaussian_check(x)


def test_ddim_trailing_with_zero_terminal_snr_recovers_gaussian():
    d = GaussianDiffusion(1000, "linear", "v", zero_terminal_snr=True)
    x = ddim(GaussianData(MU, SIGMA).denoiser(d), d, x_T(), steps=50, spacing="trailing", progress=False)
    gaussian_check(x)


@pytest.mark.parametrize("sampler,opts", [("ddpm", {}), ("ddim", {"steps": 50}), ("ddim", {"steps": 100, "eta": 1.0})])
def test_samplers_recover_mixture(sampler, opts):
    d = GaussianDiffusion(1000, "cosine")
    x = get_sampler(sampler)(MIX.denoiser(d), d, x_T(seed=2), generator=torch.Generator().manual_seed(3),
                             progress=False, **opts)
    assert_recovers_mixture(x, MIX, N)


def test_ddim_eta_1_all_steps_is_ddpm_posterior():
    d = GaussianDiffusion(1000, "linear")
    model = MIX.denoiser(d)
    a = ddpm(model, d, x_T(500), generator=torch.Generator().manual_seed(7), progress=False)
    b = ddim(model, d, x_T(500), steps=1000, eta=1.0, generator=torch.Generator().manual_seed(7), progress=False)
    assert torch.allclose(a, b, atol=1e-5)


def test_ddim_eta_0_is_deterministic_and_eta_changes_it():
    d = GaussianDiffusion(1000, "linear")
    model = MIX.denoiser(d)
    a = ddim(model, d, x_T(50), steps=20, generator=torch.Generator().manual_seed(1), progress=False)
    b = ddim(model, d, x_T(50), steps=20, generator=torch.Generator().manual_seed(2), progress=False)
    c = ddim(model, d, x_T(50), steps=20, eta=0.5, generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_sampler_draws_x_T_from_a_shape_with_the_generator():
    d = GaussianDiffusion(100, "linear")
    model = MIX.denoiser(d)
    a = ddim(model, d, (8, 2), steps=10, generator=torch.Generator().manual_seed(5), progress=False)
    b = ddim(model, d, (8, 2), steps=10, generator=torch.Generator().manual_seed(5), progress=False)
    assert a.shape == (8, 2) and torch.equal(a, b)


def test_callback_sees_every_step():
    d = GaussianDiffusion(100, "linear")
    seen = []
    ddim(MIX.denoiser(d), d, x_T(4), steps=10, progress=False, callback=lambda s: seen.append((s["i"], s["t"])))
    assert seen == list(enumerate(ddim_timesteps(100, 10).tolist()))


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 4).tolist() == [750, 500, 250, 0]
    assert ddim_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert ddim_timesteps(10, 10).tolist() == list(range(9, -1, -1))


def test_sampler_bad_input():
    d = GaussianDiffusion(100, "linear")
    model = MIX.denoiser(d)
    with pytest.raises(ValueError, match="between 1 and the training timesteps T=100, got 101"):
        ddim(model, d, x_T(2), steps=101, progress=False)
    with pytest.raises(ValueError, match="eta must be in"):
        ddim(model, d, x_T(2), eta=1.5, progress=False)
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        get_sampler("plms")
    with pytest.raises(ValueError, match="unknown DDIM spacing"):
        ddim(model, d, x_T(2), spacing="linspace", progress=False)


# ----------------------------------------------------------------------------- diffusers reference
def run_ours(sampler, d, xT, seed, **kw):
    states, fake_model = [], make_fake_model(d)
    sampler(fake_model, d, xT, generator=torch.Generator().manual_seed(seed), progress=False,
            callback=lambda s: states.append(s["x_t"].clone()), **kw)
    return states


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance,clip", [("posterior", False), ("beta", False), ("posterior", True)])
def test_ddpm_steps_match_diffusers(prediction, variance, clip):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(1000, beta_schedule="linear", prediction_type=PRED[prediction], clip_sample=clip,
                                    variance_type="fixed_small" if variance == "posterior" else "fixed_large")
    d = same_tables(sched, prediction)
    sched.set_timesteps(1000)
    xT = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = run_ours(ddpm, d, xT, 11, variance=variance, clip_x0=clip)
    g, x, fake_model = torch.Generator().manual_seed(11), xT, make_fake_model(d)
    for i, t in enumerate(sched.timesteps):
        x_in = ours[i - 1] if i > 0 else xT  # feed our x_t: each step is compared on its own
        x = sched.step(fake_model(x_in, t.repeat(2)), t, x_in, generator=g).prev_sample
        assert torch.allclose(ours[i], x, atol=1e-5, rtol=1e-5), (i, int(t), (ours[i] - x).abs().max())


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("eta,spacing,clip,zero_snr", [
    (0.0, "leading", False, False), (0.5, "leading", False, False), (1.0, "trailing", True, False),
    (0.0, "trailing", False, True),
])
def test_ddim_steps_match_diffusers(prediction, eta, spacing, clip, zero_snr):
    diffusers = pytest.importorskip("diffusers")
    if zero_snr and prediction == "eps":
        pytest.skip("zero terminal SNR needs v or x0 prediction")
    sched = diffusers.DDIMScheduler(1000, beta_schedule="squaredcos_cap_v2", prediction_type=PRED[prediction],
                                    clip_sample=clip, timestep_spacing=spacing, rescale_betas_zero_snr=zero_snr,
                                    set_alpha_to_one=True)
    d = same_tables(sched, prediction)
    sched.set_timesteps(50)
    assert sched.timesteps.tolist() == ddim_timesteps(1000, 50, spacing).tolist()
    xT = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = run_ours(ddim, d, xT, 5, steps=50, eta=eta, spacing=spacing, clip_x0=clip)
    g, fake_model = torch.Generator().manual_seed(5), make_fake_model(d)
    for i, t in enumerate(sched.timesteps):
        x_in = ours[i - 1] if i > 0 else xT
        x = sched.step(fake_model(x_in, t.repeat(2)), t, x_in, eta=eta, generator=g,
                       use_clipped_model_output=True).prev_sample
        assert torch.allclose(ours[i], x, atol=1e-5, rtol=1e-5), (i, int(t), (ours[i] - x).abs().max())
