"""`dff doctor` on runs broken on purpose, one per finding, and on a healthy model and data."""
from pathlib import Path

import pytest
import torch
from torch import nn

from dff.cli import fit, main
from dff.doctor import (check_autoencoder, check_condition_used, check_data, check_ema, check_loss, check_samples,
                        diagnose, ema_weights)
from dff.ema import EMA
from dff.module import DiffusionModule, PixelDiffusionConditional

DIGITS = ["--data.dataset", "digits", "--data.image_size", "16", "--data.channels", "1", "--data.batch_size", "16",
          "--model.dim", "8", "--model.dim_mults", "[1, 2]", "--model.timesteps", "50", "--trainer.log_every_n_steps",
          "1", "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "0"]


def bad(findings) -> list[str]:
    return [f.what for f in findings if not f.ok]


@pytest.mark.parametrize("decay,warmup,n", [(0.9, False, 30), (0.999, True, 500), (0.5, True, 7)])
def test_ema_weights_are_those_of_the_ema_itself(decay, warmup, n):
    """The closed form against EMA.update on a scalar weight that is 1 at one step and 0 at the others."""
    w, w_init = ema_weights(decay, warmup, n)
    assert w.sum() + w_init == pytest.approx(1.0)
    for k in (0, n // 2, n - 1):
        net = nn.Linear(1, 1, bias=False)
        ema = EMA(net, decay, warmup)
        with torch.no_grad():
            ema.model.weight.zero_()
            for step in range(n):
                net.weight.fill_(1.0 if step == k else 0.0)
                ema.update(net)
        assert ema.model.weight.item() == pytest.approx(w[k], rel=1e-6, abs=1e-12)


def test_ema_findings():
    assert not check_ema(0, 100, 0.999, True)[0].ok and "never updated" in check_ema(0, 100, 0.999, True)[0].what
    assert not check_ema(200, 200, 0.9999, False)[0].ok  # 98% of the EMA is still the random initial weights
    assert check_ema(20000, 20000, 0.999, True)[0].ok


def test_loss_findings(tmp_path):
    def curve(values):
        path = tmp_path / "metrics.csv"
        path.write_text("epoch,step,train/loss\n" + "".join(f"0,{i},{v}\n" for i, v in enumerate(values)))
        return check_loss(path)[0]

    assert not curve([0.5, 0.4, float("nan"), 0.3]).ok
    assert not curve([0.3] * 40).ok and "does not go down" in curve([0.3] * 40).what
    assert curve([1.0 / (1 + i) for i in range(40)]).ok
    assert not check_loss(tmp_path / "none.csv")[0].ok


def test_data_and_sample_findings():
    g = torch.Generator().manual_seed(0)
    data = torch.zeros(32, 1, 16, 16)
    data[:, :, 4:12, 6:10] = 1.0  # bars: smooth images
    data += 0.02 * torch.rand(data.shape, generator=g)
    assert check_data(data)[0].ok
    assert not check_data(data * 0.05)[0].ok and "nearly black" in check_data(data * 0.05)[0].what
    assert not check_data(torch.full((8, 1, 4, 4), 0.5))[0].ok
    assert check_samples(data.flip(0), data)[0].ok
    noise = torch.rand(32, 1, 16, 16, generator=g)
    assert not check_samples(noise, data)[0].ok and "like noise" in check_samples(noise, data)[0].what
    assert "differ" in check_samples((data + 0.4).clamp(0, 1), data)[0].what


def test_condition_finding():
    torch.manual_seed(0)
    m = PixelDiffusionConditional(image_size=8, channels=3, cond_channels=3, dim=8, dim_mults=[1, 2], timesteps=50,
                                  prediction="x0").eval()
    cond = torch.rand(2, 3, 8, 8)
    # the zero-initialised output layer: the same output whatever the condition
    assert not check_condition_used(m, cond, steps=3)[0].ok
    with torch.no_grad():
        for p in m.ema.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert check_condition_used(m, cond, steps=3)[0].ok


def test_autoencoder_finding(tmp_path):
    from dff.autoencoders import build_autoencoder_kl

    vae = build_autoencoder_kl(1, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4, image_size=16)
    vae.save_pretrained(str(tmp_path / "vae"))
    m = DiffusionModule(image_size=16, channels=1, autoencoder=str(tmp_path / "vae"), latent_scale=1.0, dim=8,
                        dim_mults=[1, 2], timesteps=50)
    x = torch.rand(4, 1, 16, 16)
    finding = check_autoencoder(m, x)[0]  # random weights: it reconstructs nothing
    assert not finding.ok and "PSNR" in finding.what


def test_doctor_on_a_run_whose_ema_never_updated(tmp_path, monkeypatch):
    monkeypatch.setattr(DiffusionModule, "on_before_zero_grad", lambda self, optimizer: None)  # the original's bug
    cli = fit([*DIGITS, "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path)])
    findings = diagnose(cli.trainer.log_dir, num=16)
    assert any("never updated" in w for w in bad(findings))


def test_doctor_on_an_untrained_run_and_its_command(tmp_path, capsys):
    """ConvNeXt U-Net (no zero-initialised output), lr 0, EMA 0.9999 without warm-up: noise, and an EMA of the
    initial weights; the command prints both with their fixes and exits with 1."""
    cli = fit([*DIGITS, "--model.backbone", "convnext", "--model.lr", "0", "--model.ema_decay", "0.9999",
               "--model.ema_warmup", "false", "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path)])
    run = Path(cli.trainer.log_dir)
    problems = bad(diagnose(run, num=16))
    assert any("initial weights" in w for w in problems) and any("like noise" in w for w in problems)
    with pytest.raises(SystemExit) as e:
        main(["doctor", str(run), "--num", "16"])
    out = capsys.readouterr().out
    assert e.value.code == 1 and "fix:" in out and "problem(s) found" in out
