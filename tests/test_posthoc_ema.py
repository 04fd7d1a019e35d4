"""Post-hoc EMA (posthoc_ema.py, EDM2 Sec. 3 / App. C.2): the sigma_rel <-> gamma map against the paper's values,
the profiles' inner product against numerical integration, and the reconstruction from snapshots against a power
EMA run directly (eq. 2's recursion) on a random walk; then the callback and `dff posthoc-ema` on a real run."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dff.posthoc_ema import (SIGMA_REL_MAX, PostHocEMA, beta, gamma_from_sigma_rel, posthoc_weights, profile_dot,
                             reconstruct, sigma_rel_from_gamma)


def test_sigma_rel_and_gamma_match_the_paper_and_invert():
    # EDM2 Sec. 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.005)
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.005)
    for s in (0.01, 0.05, 0.09, 0.2, 0.29):
        assert sigma_rel_from_gamma(gamma_from_sigma_rel(s)) == pytest.approx(s, rel=1e-9)
    # eq. 3 directly: the std of p(tau) = (gamma + 1) tau^gamma on [0, 1], by quadrature
    tau = np.linspace(0, 1, 200_001)
    for g in (0.5, 6.94, 16.97):
        p = (g + 1) * tau ** g
        mean = np.trapezoid(tau * p, tau)
        assert np.sqrt(np.trapezoid((tau - mean) ** 2 * p, tau)) == pytest.approx(sigma_rel_from_gamma(g), rel=1e-6)
    assert SIGMA_REL_MAX == pytest.approx(0.3003, abs=1e-4)
    for bad in (0.0, -0.1, 0.31):
        with pytest.raises(ValueError, match="sigma_rel"):
            gamma_from_sigma_rel(bad)


def test_profile_inner_product_against_quadrature():
    tau = np.linspace(0, 1000, 2_000_001)

    def p(t, g):
        return np.where(tau <= t, (g + 1) * tau ** g / t ** (g + 1), 0.0)

    for t_a, g_a, t_b, g_b in [(400, 6.94, 1000, 16.97), (1000, 6.94, 1000, 6.94), (700, 16.97, 300, 2.0)]:
        exact = np.trapezoid(p(t_a, g_a) * p(t_b, g_b), tau)
        assert profile_dot(t_a, g_a, t_b, g_b) == pytest.approx(exact, rel=1e-4)
        assert profile_dot(t_b, g_b, t_a, g_a) == pytest.approx(exact, rel=1e-4)  # symmetric


def test_a_snapshot_is_reconstructed_by_itself():
    t = [100, 100, 200, 200, 300, 300]
    g = [16.97, 6.94] * 3
    w = posthoc_weights(t, g, 200, 6.94)
    assert w == pytest.approx([0, 0, 0, 1, 0, 0], abs=1e-6)


class Walk(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(d))


def test_reconstruction_agrees_with_a_power_ema_run_directly(tmp_path):
    """A random walk with drift stands in for training. The callback keeps sigma_rel 0.05 and 0.10 and writes them
    every 50 steps; reconstructions of other lengths (and of an earlier step) must land on the power EMA computed
    by eq. 2's recursion, much closer than the nearest tracked average is."""
    d, T = 256, 2000
    net = Walk(d)
    cb = PostHocEMA(every_n_steps=50, sigma_rels=(0.05, 0.10))
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    module = SimpleNamespace(net=net)
    cb.on_train_start(trainer, module)
    targets = {0.03: None, 0.07: None, 0.15: None, 0.25: None}
    direct = {s: torch.zeros(d, dtype=torch.float64) for s in targets}
    at_1000 = {}
    g = torch.Generator().manual_seed(0)
    drift = torch.randn(d, generator=g)
    for t in range(1, T + 1):
        with torch.no_grad():
            net.theta += 0.02 * drift + 0.1 * torch.randn(d, generator=g)
        trainer.global_step = t
        cb.on_train_batch_end(trainer, module, None, None, t - 1)
        for s in targets:  # eq. 2 run directly, in float64
            direct[s] = (beta(t, gamma_from_sigma_rel(s)) * direct[s]
                         + (1 - beta(t, gamma_from_sigma_rel(s))) * net.theta.detach().double())
        if t == 1000:
            at_1000 = {s: v.clone() for s, v in direct.items()}
    assert len(list((tmp_path / "posthoc_ema").glob("step_*.safetensors"))) == T // 50
    with safe_open(str(tmp_path / "posthoc_ema" / "step_002000.safetensors"), "pt") as f:
        assert f.metadata()["t"] == "2000"
        tracked = [f.get_tensor("0.theta").double(), f.get_tensor("1.theta").double()]
    for step, truth in ((None, direct), (1000, at_1000)):
        for s, v in truth.items():
            state, info = reconstruct(tmp_path, s, step)
            err = (state["theta"].double() - v).norm()
            if step is None:
                nearest = min((a - v).norm() for a in tracked)
                assert err < 0.05 * nearest, (s, float(err), float(nearest))
            assert err < 0.01 * v.norm(), (s, step, float(err))
            assert info["t"] == (step or T) and info["snapshots"] == (step or T) // 50


def test_fit_writes_snapshots_and_the_command_exports_them(tmp_path, capsys):
    from dff.cli import main
    from dff.pretrained import load_pretrained

    main(["fit", "--config", "configs/pixel_digits.yaml", "--trainer.default_root_dir", str(tmp_path),
          "--model.dim", "8", "--samples.every_n_steps", "0", "--trainer.accelerator", "cpu",
          "--trainer.max_steps", "6", "--posthoc_ema.every_n_steps", "3", "--trainer.enable_progress_bar", "false"])
    run = tmp_path / "version_0"
    assert sorted(p.name for p in (run / "posthoc_ema").iterdir()) == ["step_000003.safetensors",
                                                                       "step_000006.safetensors"]
    ckpt = torch.load(next((run / "checkpoints").glob("last*.ckpt")), weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if "PostHocEMA" in k)
    assert state["t"] == 6 and len(state["averages"]) == 2
    main(["posthoc-ema", str(run), "--sigma-rel", "0.05", "0.2"])
    assert "sigma_rel 0.200 (gamma 1.83) at step 6, from 2 snapshots" in capsys.readouterr().out
    a, b = (load_pretrained(run / "posthoc_ema" / f"sigma_{s}") for s in ("0.050", "0.200"))
    w_a, w_b = (next(m.ema.model.parameters()) for m in (a, b))
    assert not torch.allclose(w_a, w_b)  # two lengths, two averages
    with safe_open(str(run / "posthoc_ema" / "step_000006.safetensors"), "pt") as f:
        first = next(k for k in f.keys() if k.startswith("0."))
        assert torch.allclose(a.ema.model.state_dict()[first[2:]], f.get_tensor(first), atol=1e-6)  # 0.05 is tracked
    x = b.sample(2, "ddim", steps=5, seed=0, progress=False)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()
    with pytest.raises(SystemExit, match="no post-hoc EMA snapshots"):
        main(["posthoc-ema", str(tmp_path / "version_0" / "export"), "--sigma-rel", "0.1"])
    with pytest.raises(SystemExit, match="sigma_rel=0.4: expected 0 < sigma_rel < 0.3003"):
        main(["posthoc-ema", str(run), "--sigma-rel", "0.4"])


def test_a_resumed_run_continues_the_averages(tmp_path):
    """Resuming is bit for bit on a CPU (tests/test_resume.py), so a run resumed from the step-4 checkpoint of an
    8-step run must write the same snapshots at steps 6 and 8: the averages travel in the checkpoint."""
    import shutil

    from dff.cli import fit

    args = ["--data.dataset", "digits", "--data.channels", "1", "--data.image_size", "8", "--data.batch_size", "4",
            "--model.dim", "8", "--model.dim_mults", "[1, 2]", "--model.timesteps", "50",
            "--samples.every_n_steps", "0", "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "8",
            "--checkpoint.every_n_train_steps", "4", "--posthoc_ema.every_n_steps", "2"]
    whole = fit(["--trainer.default_root_dir", str(tmp_path / "whole"), *args])
    shutil.copy(Path(whole.trainer.log_dir) / "checkpoints" / "step_000004.ckpt", tmp_path / "four.ckpt")
    resumed = fit(["--trainer.default_root_dir", str(tmp_path / "resumed"), *args, "--ckpt_path",
                   str(tmp_path / "four.ckpt")])
    assert sorted(p.name for p in (Path(resumed.trainer.log_dir) / "posthoc_ema").iterdir()) == [
        "step_000006.safetensors", "step_000008.safetensors"]
    for step in (6, 8):
        a, b = (load_file(Path(r.trainer.log_dir) / "posthoc_ema" / f"step_{step:06d}.safetensors")
                for r in (whole, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="differ from the checkpoint's averages"):
        fit(["--trainer.default_root_dir", str(tmp_path / "other"), *args, "--posthoc_ema.sigma_rels", "[0.2]",
             "--ckpt_path", str(tmp_path / "four.ckpt")])


def test_the_model_ema_with_sigma_rel_is_the_power_ema():
    """model.ema_sigma_rel: dff.ema.EMA follows eq. 2 (its first update copies the weights), equal to the callback's
    average of the same length; the doctor's closed-form weights of that profile rise as tau^gamma."""
    from dff.doctor import ema_weights
    from dff.ema import EMA
    from dff.module import PixelDiffusion

    net = Walk(16)
    ema = EMA(net, sigma_rel=0.05)
    g = gamma_from_sigma_rel(0.05)
    assert ema.decay_at(0) == 0.0 and ema.decay_at(9) == pytest.approx(0.9 ** (g + 1))
    cb = PostHocEMA(every_n_steps=1000, sigma_rels=(0.05,))
    trainer, module = SimpleNamespace(global_step=0), SimpleNamespace(net=net)
    cb.on_train_start(trainer, module)
    gen = torch.Generator().manual_seed(0)
    for t in range(1, 51):
        with torch.no_grad():
            net.theta += torch.randn(16, generator=gen)
        ema.update(net)
        trainer.global_step = t
        cb.on_train_batch_end(trainer, module, None, None, t - 1)
    torch.testing.assert_close(ema.model.theta, cb.averages[0][0])
    w, w_init = ema_weights(0.9999, True, 1000, g)
    assert w_init == 0.0 and w.sum() == pytest.approx(1.0)
    k = np.arange(1, 1001)
    assert w[499] / w[999] == pytest.approx((k[499] / k[999]) ** g, rel=0.02)  # p(tau) ~ tau^gamma
    with pytest.raises(ValueError, match="model.ema_sigma_rel=0.5: expected 0 < sigma_rel < 0.3003"):
        PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=(1,), ema_sigma_rel=0.5)
