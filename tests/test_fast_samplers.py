"""Fast samplers (DPM-Solver++(2M) and its SDE form, EDM Euler and Heun) agree with diffusers step by step and recover
analytic data with the exact denoiser."""
import math

import numpy as np
import pytest
import torch

from analytic import MIX, MU, N, SIGMA, GaussianData, assert_recovers_mixture, gaussian_check, x_T
from reference import PRED, make_fake_model, same_tables
from dff.diffusion import GaussianDiffusion
from dff.diffusion.fast_samplers import FAST_SAMPLERS, dpm_timesteps, dpmpp_2m, dpmpp_2m_sde, edm_sigmas, euler, heun
from dff.diffusion.samplers import randn

@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: with several threads on a busy machine, thread hand-offs made the samplers
    here ~75x slower than with one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- analytic data
# Step counts: DPM-Solver++(2M) passes at 20. Euler and Heun on Karras sigmas from sigma_edm(T - 1) (157
# linear, 2e4 cosine, as diffusers) do not: with the exact denoiser Euler's covariance is 0.23 (linear)
# and 0.48 (cosine) too small at 20 steps, 0.09 / 0.21 at 50, 0.04 / 0.11 at 100; Heun's 0.10 / 0.57
# too large at 20 sigma levels, 0.03 / 0.08 at 50. Hence the counts below, which pass with margin.
# 'leading' DPM spacing never visits t > 940 at 20 steps; on cosine (sqrt(alpha_bar_940) = 0.09) that
# start from N(0, I) moves the mean by ~4 standard errors, so cosine is checked with 'trailing'.
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler,schedule,opts", [
    ("dpmpp_2m", "linear", {"steps": 20}), ("dpmpp_2m", "cosine", {"steps": 20, "spacing": "trailing"}),
    ("dpmpp_2m_sde", "linear", {"steps": 30}), ("dpmpp_2m_sde", "cosine", {"steps": 30, "spacing": "trailing"}),
    ("euler", "linear", {"steps": 200}), ("euler", "cosine", {"steps": 200}),
    ("heun", "linear", {"steps": 50}), ("heun", "cosine", {"steps": 100}),
])
def test_fast_samplers_recover_gaussian(sampler, schedule, opts, prediction):
    d = GaussianDiffusion(1000, schedule, prediction)
    x = FAST_SAMPLERS[sampler](GaussianData(MU, SIGMA).denoiser(d), d, x_T(), progress=False, **opts)
    gaussian_check(x)


@pytest.mark.parametrize("sampler,opts", [("dpmpp_2m", {"steps": 20, "spacing": "trailing"}), ("euler", {"steps": 200}),
                                          ("heun", {"steps": 50})])
def test_fast_samplers_with_zero_terminal_snr_recover_gaussian(sampler, opts):
    """alpha_bar_T = 0: DPM-Solver++ takes the limit lambda = -inf, Euler / Heun start at sigma_edm = 4096."""
    d = GaussianDiffusion(1000, "linear", "v", zero_terminal_snr=True)
    x = FAST_SAMPLERS[sampler](GaussianData(MU, SIGMA).denoiser(d), d, x_T(), progress=False, **opts)
    gaussian_check(x)


# On linear, the last DPM step jumps to sigma = 0 from t = 47 (sigma_edm = 0.17) and returns E[x0 | x_t],
# whose spread within a mode of std 0.25 is 0.25 / sqrt(0.25^2 + 0.17^2) = 0.83 of the mode's (diffusers
# does the same): the mixture is checked on cosine, as in test_samplers.py.
@pytest.mark.parametrize("sampler,opts", [("dpmpp_2m", {"steps": 20}), ("dpmpp_2m_sde", {"steps": 30}),
                                          ("euler", {"steps": 100}), ("heun", {"steps": 50})])
def test_fast_samplers_recover_mixture(sampler, opts):
    d = GaussianDiffusion(1000, "cosine")
    x = FAST_SAMPLERS[sampler](MIX.denoiser(d), d, x_T(seed=2), progress=False, **opts)
    assert_recovers_mixture(x, MIX, N)


# ----------------------------------------------------------------------------- signature, errors
@pytest.mark.parametrize("sampler", list(FAST_SAMPLERS))
def test_fast_sampler_signature_shape_generator_callback(sampler):
    d = GaussianDiffusion(100, "linear")
    fn, seen = FAST_SAMPLERS[sampler], []
    a = fn(MIX.denoiser(d), d, (8, 2), steps=5, generator=torch.Generator().manual_seed(5), progress=False,
           callback=lambda s: seen.append((s["i"], s["t"], s["x_t"].shape, s["x0_hat"].shape)))
    b = fn(MIX.denoiser(d), d, (8, 2), steps=5, generator=torch.Generator().manual_seed(5), progress=False)
    assert a.shape == (8, 2) and torch.equal(a, b)  # the same generator: the same samples (also the SDE's noise)
    assert [s[0] for s in seen] == list(range(5))
    assert all(isinstance(s[1], int) and s[2] == s[3] == (8, 2) for s in seen)

    def cond_model(x, t, c):  # model(x_t, t, cond) when cond is given
        return MIX.denoiser(d)(x, t) + 0 * c
    c = fn(cond_model, d, (8, 2), steps=5, cond=torch.ones(8, 2), generator=torch.Generator().manual_seed(5),
           progress=False)
    assert torch.equal(a, c)
    clipped = fn(MIX.denoiser(d), d, x_T(50), steps=5, clip_x0=True, progress=False)
    assert clipped.abs().max() <= 1


@pytest.mark.parametrize("sampler", list(FAST_SAMPLERS))
def test_fast_sampler_bad_steps(sampler):
    d = GaussianDiffusion(100, "linear")
    for steps in (0, 101):
        with pytest.raises(ValueError, match=f"steps must be between 1 and the training timesteps T=100, got {steps}"):
            FAST_SAMPLERS[sampler](MIX.denoiser(d), d, x_T(2), steps=steps, progress=False)
    with pytest.raises(ValueError, match="unknown .* spacing 'uniform'"):
        FAST_SAMPLERS[sampler](MIX.denoiser(d), d, x_T(2), steps=5, spacing="uniform", progress=False)


def test_dpm_timesteps():
    assert dpm_timesteps(1000, 4).tolist() == [800, 600, 400, 200]  # k * (1000 // 5)
    assert dpm_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert dpm_timesteps(1000, 4, "linspace").tolist() == [999, 749, 500, 250]
    assert dpm_timesteps(10, 10, "trailing").tolist() == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="'leading' spacing needs steps < T=10"):
        dpm_timesteps(10, 10)


# ----------------------------------------------------------------------------- diffusers reference
SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
STEPS = 20


def xT_image():
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def close(ours, theirs, i, t, x_in=None):
    """|ours - theirs| <= 1e-5 (1 + |theirs|), plus, where diffusers rounds its input sample x_in to float32
    (DPMSolverMultistep and EulerDiscrete do), that rounding: 2^-23 |x_in|. It matters on cosine, where
    x = x_t sqrt(sigma^2 + 1) starts at ~2e4 and Euler's first step cancels it down to ~10."""
    tol = 1e-5 * (1 + theirs.abs()) + (0 if x_in is None else 2.0**-23 * x_in.abs())
    assert torch.all((ours - theirs).abs() <= tol), (i, float(t), (ours - theirs).abs().max())


def sigma_table(d):
    """sigma_edm(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t), float64, t = 0..T-1."""
    return ((1 - d.alpha_bar) / d.alpha_bar).sqrt()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spacing,clip", [("leading", False), ("trailing", False), ("linspace", True)])
def test_dpmpp_2m_steps_match_diffusers(prediction, schedule, spacing, clip):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(  # algorithm dpmsolver++, order 2, midpoint, lower_order_final, zero
        1000, beta_schedule=SCHEDULE[schedule], prediction_type=PRED[prediction], timestep_spacing=spacing,
        thresholding=clip, sample_max_value=1.0)  # thresholding with max 1 = clamp x0 to [-1, 1]
    d = same_tables(sched, prediction)
    sched.set_timesteps(STEPS)
    assert sched.timesteps.tolist() == dpm_timesteps(1000, STEPS, spacing).tolist()
    sigmas = torch.cat([sigma_table(d)[sched.timesteps], torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(sched.sigmas.double(), sigmas, rtol=1e-6, atol=0)
    sched.sigmas = sigmas  # diffusers' are float32: compare the update rule on the same float64 sigmas
    xT, fake_model, ours = xT_image(), make_fake_model(d, 1.5 if clip else 0.9), []
    dpmpp_2m(fake_model, d, xT, steps=STEPS, spacing=spacing, clip_x0=clip, progress=False,
             callback=lambda s: ours.append(s["x_t"].clone()))
    for i, t in enumerate(sched.timesteps):
        x_in = ours[i - 1] if i > 0 else xT  # feed our x_t: each step is compared on its own
        x = sched.step(fake_model(x_in, t.repeat(2)), t, x_in).prev_sample  # history: x0 of our x_t's
        close(ours[i], x, i, t, x_in)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spacing,clip", [("leading", False), ("trailing", False), ("linspace", True)])
def test_dpmpp_2m_sde_steps_match_diffusers(prediction, schedule, spacing, clip):
    """diffusers' sde-dpmsolver++ (midpoint, order 2) given, as variance_noise, the noise our sampler drew."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(
        1000, beta_schedule=SCHEDULE[schedule], prediction_type=PRED[prediction], timestep_spacing=spacing,
        algorithm_type="sde-dpmsolver++", thresholding=clip, sample_max_value=1.0)
    d = same_tables(sched, prediction)
    sched.set_timesteps(STEPS)
    assert sched.timesteps.tolist() == dpm_timesteps(1000, STEPS, spacing).tolist()
    sched.sigmas = torch.cat([sigma_table(d)[sched.timesteps], torch.zeros(1, dtype=torch.float64)])
    xT, fake_model, ours = xT_image(), make_fake_model(d, 1.5 if clip else 0.9), []
    dpmpp_2m_sde(fake_model, d, xT, steps=STEPS, spacing=spacing, clip_x0=clip, progress=False,
                 generator=torch.Generator().manual_seed(3), callback=lambda s: ours.append(s["x_t"].clone()))
    g = torch.Generator().manual_seed(3)  # the same stream: one z per step but the last
    zs = [randn(xT.shape, g, "cpu", torch.float64) for _ in range(STEPS - 1)] + [torch.zeros_like(xT)]
    for i, t in enumerate(sched.timesteps):
        x_in = ours[i - 1] if i > 0 else xT
        x = sched.step(fake_model(x_in, t.repeat(2)), t, x_in, variance_noise=zs[i]).prev_sample
        close(ours[i], x, i, t, x_in)
    # and the noise matters: without it the step is not diffusers' SDE step
    quiet = dpmpp_2m(fake_model, d, xT, steps=STEPS, spacing=spacing, clip_x0=clip, progress=False)
    assert not torch.allclose(quiet, ours[-1], atol=1e-3)


def run_edm(fn, d, xT, fake_model, **kw):
    """Our states in diffusers' variable x = x_t sqrt(sigma^2 + 1), and the model timesteps."""
    xs, ts = [], []
    fn(fake_model, d, xT, steps=STEPS, progress=False, **kw,
       callback=lambda s: (xs.append(s["x_t"] * math.sqrt(s["sigma"] ** 2 + 1)), ts.append(s["t"])))
    return xs, ts


def check_edm_tables(d, karras, spacing, sigmas_theirs):
    """Our sigmas equal diffusers' up to their float32 rounding; returned in float64 for both to use."""
    sigmas, _ = edm_sigmas(d, STEPS, karras=karras, spacing=spacing)
    assert np.allclose(sigmas_theirs, sigmas, rtol=1e-6, atol=0)
    return torch.from_numpy(sigmas)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("karras,spacing", [(True, "linspace"), (True, "leading"), (False, "trailing")])
def test_euler_steps_match_diffusers(prediction, schedule, karras, spacing):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EulerDiscreteScheduler(1000, beta_schedule=SCHEDULE[schedule], prediction_type=PRED[prediction],
                                             use_karras_sigmas=karras, timestep_spacing=spacing)
    d = same_tables(sched, prediction)
    sched.set_timesteps(STEPS)
    euler_steps_match(sched, d, karras, spacing)


def test_euler_zero_terminal_snr_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EulerDiscreteScheduler(1000, prediction_type="v_prediction", use_karras_sigmas=True,
                                             rescale_betas_zero_snr=True)
    d = same_tables(sched, "v")
    assert d.alpha_bar[-1] == 0
    sched.alphas_cumprod[-1] = 2.0**-24  # as diffusers' __init__ does (and edm_sigmas)
    sched.set_timesteps(STEPS)
    euler_steps_match(sched, d, True, "linspace")


def euler_steps_match(sched, d, karras, spacing):
    sched.sigmas = sigmas = check_edm_tables(d, karras, spacing, sched.sigmas.numpy())
    xT, fake_model = xT_image(), make_fake_model(d)
    ours, ours_t = run_edm(euler, d, xT, fake_model, karras=karras, spacing=spacing)
    assert ours_t == np.round(sched.timesteps.numpy()).astype(int).tolist()  # nearest integer timestep
    x_start = xT * math.sqrt(float(sigmas[0]) ** 2 + 1)
    for i, t in enumerate(sched.timesteps):
        x_in = ours[i - 1] if i > 0 else x_start
        out = fake_model(sched.scale_model_input(x_in, t), t.round().long().repeat(2))
        close(ours[i], sched.step(out, t, x_in).prev_sample, i, t, x_in)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("karras,spacing,clip",
                         [(True, "linspace", False), (True, "leading", True), (False, "trailing", False)])
def test_heun_steps_match_diffusers(prediction, schedule, karras, spacing, clip):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.HeunDiscreteScheduler(1000, beta_start=1e-4, beta_end=0.02, beta_schedule=SCHEDULE[schedule],
                                            prediction_type=PRED[prediction], use_karras_sigmas=karras,
                                            timestep_spacing=spacing, clip_sample=clip)
    d = same_tables(sched, prediction)
    sched.set_timesteps(STEPS)
    # diffusers repeats each inner sigma and timestep: [s0, s1, s1, ..., s_{S-1}, s_{S-1}, 0], [t0, t1, t1, ...]
    sigmas = check_edm_tables(d, karras, spacing, np.r_[sched.sigmas.numpy()[::2], 0.0])
    sched.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
    xT, fake_model = xT_image(), make_fake_model(d, 1.5 if clip else 0.9)
    ours, ours_t = run_edm(heun, d, xT, fake_model, karras=karras, spacing=spacing, clip_x0=clip)
    assert ours_t == np.round(sched.timesteps.numpy()[::2]).astype(int).tolist()
    x_start = xT * math.sqrt(float(sigmas[0]) ** 2 + 1)
    for i in range(STEPS):
        x_in = ours[i - 1] if i > 0 else x_start
        t = sched.timesteps[2 * i]  # Euler predictor at sigma_i ...
        x = sched.step(fake_model(sched.scale_model_input(x_in, t), t.round().long().repeat(2)), t, x_in).prev_sample
        if i + 1 < STEPS:  # ... and trapezoidal corrector at sigma_{i+1}, evaluated at diffusers' predictor
            t = sched.timesteps[2 * i + 1]
            x = sched.step(fake_model(sched.scale_model_input(x, t), t.round().long().repeat(2)), t, x).prev_sample
        close(ours[i], x, i, t)
