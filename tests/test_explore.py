"""The sandbox (dff.viz.process) and `dff explore`: the numbers behind the figures match the closed
forms of DDPM, the figures are Figures drawn without pyplot, and the command writes its files or
refuses bad input in one line."""
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from dff.cli import main
from dff.diffusion import GaussianDiffusion
from dff.explore import FIGURES, RUN_FIGURES, explore_image
from dff.module import PixelDiffusion
from dff.pretrained import save_pretrained
from dff.viz import (forward_process_figure, oracle_chain, reverse_chain_figure, schedules_figure, steps_vs_jump,
                     steps_vs_jump_figure, x0_prediction_figure)
from dff.viz.process import fit_moments, log_snr, x0_from_noise


def photo(size=16, seed=0):
    """A smooth image in [-1, 1] (C, size, size) with enough contrast for the mean fit."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, size, size, generator=g) * 1.6 - 0.8


def test_steps_reach_the_jump_in_law():
    """T single steps of q(x_t | x_{t-1}) (Eq. 2) and the jump q(x_t | x_0) (Eq. 4) have the moments
    alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) at every t: a step noise scaled by beta_t
    instead of sqrt(beta_t) (the original note's mistake) would leave sigma_T near 0.45, not 1."""
    d, x0, draws = GaussianDiffusion(200, "linear"), photo(), 32
    m = steps_vs_jump(x0, d, draws=draws, generator=torch.Generator().manual_seed(0))
    # standard errors of the fits: the slope of the mean of `draws` x_t on x0, and a standard deviation
    se = {"a": m["sigma"] / np.sqrt(draws * float((x0 ** 2).sum())), "s": m["sigma"] / np.sqrt(2 * draws * x0.numel())}
    for sym, closed in (("a", "alpha"), ("s", "sigma")):
        for how in ("steps", "jump"):
            z = np.abs(m[f"{sym}_{how}"] - m[closed]) / (se[sym] + 1e-4)
            assert z.max() < 5, (sym, how, z.max())
    assert m["sigma"][-1] > 0.99 and m["alpha"][0] == pytest.approx((1 - d.betas[0].item()) ** 0.5)


def test_fit_moments_recovers_a_known_law():
    g = torch.Generator().manual_seed(1)
    x0 = photo()
    x = 0.3 * x0 + 0.7 * torch.randn(64, *x0.shape, generator=g)
    a, s = fit_moments(x, x0)
    assert a == pytest.approx(0.3, abs=0.02) and s == pytest.approx(0.7, abs=0.02)


def test_x0_from_true_noise_inverts_q_sample():
    d = GaussianDiffusion(100, "cosine")
    x0, eps = photo(), torch.randn(3, 16, 16)
    for t in (1, 50, 99):
        x_t = d.q_sample(x0[None], torch.tensor([t - 1]), eps[None])[0]
        assert torch.allclose(x0_from_noise(x_t, eps, d, t), x0, atol=1e-3)


def test_log_snr_matches_the_diffusion():
    d = GaussianDiffusion(50, "sigmoid")
    t = torch.arange(50)
    assert torch.allclose(log_snr(d.alpha_bar), d.snr(t).log())


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_oracle_chain_ends_at_x0_and_follows_q(prediction):
    """With the model that knows x0, DDPM and DDIM end at x0 exactly, and DDPM's x_t along the way is
    distributed as q(x_t | x_0) (the posterior chain keeps the forward marginals)."""
    d = GaussianDiffusion(100, "linear", prediction)
    x0 = photo()
    g = torch.Generator().manual_seed(2)
    chain = oracle_chain(x0, d, sampler="ddpm", keep=[50, 0], draws=64, generator=g)
    assert [t for t, _ in chain] == [100, 50, 0]
    assert torch.allclose(chain[-1][1], x0.expand(64, *x0.shape), atol=1e-4)
    a, s = fit_moments(chain[1][1], x0)
    ab = d.alpha_bar[49].item()
    assert a == pytest.approx(ab ** 0.5, abs=0.03) and s == pytest.approx((1 - ab) ** 0.5, abs=0.03)
    ddim_chain = oracle_chain(x0, d, sampler="ddim", steps=10, generator=g)
    assert ddim_chain[0][0] == 100 and ddim_chain[-1][0] == 0
    assert torch.allclose(ddim_chain[-1][1][0], x0, atol=1e-4)


def test_figures_are_figures_without_pyplot():
    """Each figure function returns a Figure, leaves no pyplot figure open and no backend switched."""
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    d, x0 = GaussianDiffusion(50, "linear"), photo()
    figs = [forward_process_figure(x0, d, draws=2), steps_vs_jump_figure(x0, d, draws=4),
            schedules_figure(x0, names=["linear", "cosine"], timesteps=50), x0_prediction_figure(x0, d),
            reverse_chain_figure(x0, d, ddim_steps=5)]
    assert all(isinstance(f, Figure) for f in figs)
    assert [len(f.axes) for f in figs] == [3 * 6, 2, 3 + 2 * 5, 3 * 5, 2 * 6]
    assert plt.get_fignums() == [] and matplotlib.get_backend() == backend


def test_explore_image_default_and_given(tmp_path):
    x = explore_image(None, 32)
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.2
    a = (np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 20)  # a 16-bit ramp, not clipped at 255
    Image.fromarray(a).save(tmp_path / "ramp.png")
    g = explore_image(tmp_path / "ramp.png", 16)
    # 16-bit scaled by 65535 (the crop's brightest pixel is 47780 / 65535 = 0.73, 0.46 in [-1, 1]), a full ramp;
    # clipped at 255, as PIL's convert("L") does, it would be almost all white
    assert g.shape == (1, 16, 16) and 0.3 < g.max() < 0.6 and g.min() < -0.9 and g.std() > 0.3


def test_explore_command_writes_the_figures(tmp_path, capsys):
    main(["explore", "--out", str(tmp_path / "a"), "--timesteps", "100", "--size", "16"])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(FIGURES)
    for name in FIGURES:
        with Image.open(tmp_path / "a" / name) as im:
            assert im.width > 300 and np.asarray(im.convert("L")).std() > 10  # a drawn figure, not blank
    Image.fromarray((np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.jpg")
    main(["explore", "--image", str(tmp_path / "in.jpg"), "--schedule", "cosine", "--out", str(tmp_path / "b"),
          "--timesteps", "50", "--size", "16"])
    assert len(list((tmp_path / "b").iterdir())) == len(FIGURES)


def test_explore_with_a_run_writes_the_trajectory(tmp_path):
    save_pretrained(PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=[1, 2], timesteps=60), tmp_path / "w")
    main(["explore", "--run", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--timesteps", "60", "--size", "16"])
    assert {p.name for p in (tmp_path / "o").iterdir()} == set(FIGURES) | set(RUN_FIGURES)
    with Image.open(tmp_path / "o" / "trajectory.gif") as im:
        assert im.n_frames >= 10 and im.is_animated


def dff(*args, cwd):
    return subprocess.run([sys.executable, "-c", "from dff.cli import run; run()", *args], cwd=cwd,
                          capture_output=True, text=True)


def test_explore_bad_input_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.png").write_bytes(b"mine")
    cases = [(["--image", "notes.txt", "--out", "o1"], "notes.txt is not an image"),
             (["--run", "empty_run", "--out", "o2"], "empty_run"),
             (["--out", "full"], "full already holds files")]
    for args, expected in cases:
        r = dff("explore", *args, cwd=tmp_path)
        assert r.returncode == 2 and expected in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "full" / "keep.png").read_bytes() == b"mine"
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_library_never_switches_the_backend():
    """No module of dff imports pyplot or calls matplotlib.use: figures are Figures, so a notebook's
    inline backend and a script's choice are left alone."""
    from pathlib import Path

    import dff

    offenders = [str(p) for p in Path(dff.__file__).parent.rglob("*.py")
                 if "matplotlib.use(" in p.read_text() or "import matplotlib.pyplot" in p.read_text()]
    assert offenders == []
