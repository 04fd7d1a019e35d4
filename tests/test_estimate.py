"""`dff estimate` and the cost lines of `dff fit`: counted FLOPs against closed forms, memory as counted, measured
steps, the projection, every config, and nothing touched (no run folder, the random stream unchanged)."""
from pathlib import Path

import pytest
import torch
from torch import nn

from dff.cli import estimate_command, main
from dff.estimate import count_flops, estimate, state_bytes
from dff.module import PixelDiffusion

from test_latent import save_tiny_vae

ROOT = Path(__file__).resolve().parents[1]


def test_flops_of_a_single_convolution_match_the_closed_form():
    """A network of one 3x3 convolution: forward 2 * C_in * C_out * 9 * H * W FLOPs; backward as much again for the
    weight's gradient (x_t needs none)."""
    model = PixelDiffusion(image_size=8, channels=2, dim=8, dim_mults=[1], timesteps=100)
    conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
    model.model.net = type("Net", (nn.Module,), {"forward": lambda self, x, t, c=None: self.conv(x)})()
    model.model.net.conv = conv
    forward = 2 * 2 * 2 * 9 * 8 * 8
    assert count_flops(model, from_cache=False) == 2 * forward


def test_counting_leaves_the_model_and_the_random_stream_alone():
    torch.manual_seed(0)
    model = PixelDiffusion(image_size=16, channels=1, dim=8, dim_mults=[1, 2], timesteps=100)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    est = estimate(model, 32, steps=0)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    n = sum(p.numel() for p in model.net.parameters())
    assert est.parameters == n and state_bytes(model) == 20 * n  # weights, gradients, 2 AdamW moments, EMA: float32
    assert est.seconds_per_step is None and len(est.lines()) == 2


def test_measured_steps_and_the_projection(tmp_path, capsys):
    est = estimate_command(["--config", str(ROOT / "configs" / "pixel_digits.yaml"), "--steps", "2",
                            "--trainer.default_root_dir", str(tmp_path / "runs"), "--model.dim", "8"])
    out = capsys.readouterr().out
    assert est.seconds_per_step > 0 and est.activations_gb > 0 and est.max_steps == 1600 and est.batch == 32
    projected = 1600 * est.seconds_per_step
    shown = next(line for line in out.splitlines() if "the configured run" in line)
    number, unit = shown.split("about ")[1].split(" of training")[0].split()
    scale = {"s": 1, "min": 60, "h": 3600}[unit]
    assert float(number) * scale == pytest.approx(projected, abs=0.051 * scale)  # shown to 0.1 of its unit
    assert "1,600 steps x 32" in shown and "GFLOP per training image" in out
    assert not (tmp_path / "runs").exists()  # nothing trained, no run folder


def test_a_compiled_run_is_measured_uncompiled_and_says_so():
    """speed.compile is left out of the measured steps (compiling takes minutes); the report says the run's steps
    will differ. On the CPU only an explicit backend compiles, so aot_eager stands in for inductor on CUDA."""
    from dff.speed import Speed

    model = PixelDiffusion(image_size=16, channels=1, dim=8, dim_mults=[1, 2], timesteps=100)
    est = estimate(model, 4, steps=1, speed=Speed(compile=True, compile_backend="aot_eager", verbose=False))
    assert est.uncompiled and "measured without torch.compile" in est.lines()[-1]
    assert getattr(model.net, "_compiled_call_impl", None) is None  # the network was not compiled
    plain = estimate(model, 4, steps=1, speed=Speed(compile=False, verbose=False))
    assert not plain.uncompiled and not any("torch.compile" in line for line in plain.lines())


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_estimate_every_config(tmp_path, config, capsys):
    args = ["--config", str(ROOT / "configs" / config), "--steps", "1", "--data.batch_size", "2",
            "--trainer.default_root_dir", str(tmp_path / "runs")]
    text = (ROOT / "configs" / config).read_text()
    if "class_path" in text:  # the autoencoder config trains an AutoencoderModule: refused with one line
        with pytest.raises(SystemExit, match="estimate is for diffusion models"):
            estimate_command(args)
        return
    args += ["--model.dim", "8"]
    if "autoencoder:" in text:
        channels = 1 if "channels: 1" in text else 3
        # latent scale unset: as at fit start
        args += ["--model.autoencoder", str(save_tiny_vae(tmp_path / "vae", channels))]
    est = estimate_command(args)
    assert est.flops_per_image > 0 and est.seconds_per_step > 0
    assert "M trained parameters" in capsys.readouterr().out


def test_fit_prints_the_counted_cost_first(tmp_path, capsys):
    main(["fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"), "--trainer.max_steps", "1",
          "--samples.every_n_steps", "0", "--model.dim", "8", "--trainer.default_root_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "cost: " in out and out.index("cost: ") < out.index("speed: ")
    main(["estimate", "--help"])
    assert "usage: dff estimate --config FILE" in capsys.readouterr().out


def test_estimate_offline_uses_a_stand_in_of_the_known_latent_shape(tmp_path, capsys, monkeypatch):
    """latent_maps_256 names a hub autoencoder: offline (and not cached) the U-Net is estimated on a stand-in of its
    latent shape, at once, with no connection tried; an unknown id asks for --latent-shape."""
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("connected while offline"))
    args = ["--config", str(ROOT / "configs" / "latent_maps_256.yaml"), "--steps", "1", "--data.batch_size", "1",
            "--model.dim", "8", "--trainer.default_root_dir", str(tmp_path / "runs")]
    est = estimate_command(args)
    out = capsys.readouterr().out
    assert "cannot be reached: the U-Net is estimated on a stand-in of its latent shape (4 channels, factor 8)" in out
    assert est.flops_per_image > 0
    with pytest.raises(SystemExit, match="give its latent shape, channels and down-sampling factor: --latent-shape"):
        estimate_command([*args, "--model.autoencoder", "someone/unknown-vae"])
    estimate_command([*args, "--model.autoencoder", "someone/unknown-vae", "--latent-shape", "16,8"])
    assert "(16 channels, factor 8)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--latent-shape '16,6': expected C,F"):
        estimate_command([*args, "--model.autoencoder", "someone/unknown-vae", "--latent-shape", "16,6"])


def test_estimate_says_when_a_config_does_not_fit_without_running_its_batch(tmp_path, capsys):
    """A probe of 2 images measures the activations per image; a batch that would need more than the memory to plan
    for is not run: the estimate says so and names the largest batch that fits (which then runs)."""
    def args(batch):
        return ["--config", str(ROOT / "configs" / "pixel_digits.yaml"), "--steps", "1", "--data.batch_size",
                str(batch), "--model.dim", "8", "--trainer.default_root_dir", str(tmp_path / "runs")]

    est = estimate_command([*args(4096), "--memory-gb", "0.05"])
    out = capsys.readouterr().out
    assert est.fits is False and est.seconds_per_step is None  # the 4096 batch never ran
    assert f"does not fit: batch 4096 needs about {est.needed_gb:.1f} GB, 0.1 GB available" in out
    assert 0 < est.fits_batch < 4096 and f"try --data.batch_size {est.fits_batch}" in out
    ok = estimate_command([*args(est.fits_batch), "--memory-gb", "0.05"])
    assert ok.fits and ok.seconds_per_step > 0 and ok.needed_gb <= 0.9 * 0.05
    with pytest.raises(SystemExit, match="dff estimate: --memory-gb takes a number of GB"):
        estimate_command([*args(4), "--memory-gb", "lots"])
