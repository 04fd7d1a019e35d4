"""`dff export --format diffusers`: the ADM U-Net is diffusers' UNet2DModel layer for layer, and diffusers' own
pipelines, loaded from the exported folder, sample what `dff sample` samples from the same noise."""
import json
import os
import subprocess
import sys

import diffusers
import numpy as np
import pytest
import torch

from dff.cli import main
from dff.models.diffusion_model import DiffusionModel
from dff.models.to_diffusers import export_diffusers, refusal, to_unet
from dff.pretrained import load_pretrained
from dff.training.module import DiffusionModule


def perturbed(**kw) -> DiffusionModel:
    """A model whose every weight is random (ADM zero-initialises its output convolutions, which would hide a
    wrong mapping of them), the EMA copy equal to the network."""
    torch.manual_seed(0)
    kw = {"image_size": 16, "channels": 1, "dim": 16, "dim_mults": (1, 2), "num_res_blocks": 1, **kw}
    m = DiffusionModel(**kw)
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.ema.model.load_state_dict(m.net.state_dict())
    return m


@pytest.mark.parametrize("kw", [
    dict(dim=32, dim_mults=(1, 2, 2), attention=True, num_res_blocks=2, channels=3),
    dict(dim=20, dim_mults=(1, 2, 2), attention=False),  # the digits recipe's widths (one group count: 4)
    dict(dim=20, attention=True, num_classes=3),
], ids=["attention", "digits-widths", "classes"])
def test_the_adm_unet_is_unet2dmodel_layer_for_layer(kw):
    m = perturbed(**kw)
    assert refusal(m) is None
    unet = to_unet(m)
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in m.net.parameters())
    x, t = torch.randn(2, m.hparams.channels, 16, 16), torch.tensor([3, 700])
    y = torch.tensor([0, 3]) if kw.get("num_classes") else None  # 3: the "no label" row
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, class_labels=y).sample, m.net(x, t, None, y), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,kw,steps", [
    ("ddim", dict(prediction="v", schedule="cosine"), 10),
    ("ddim", dict(prediction="v", schedule="cosine", zero_terminal_snr=True), 10),  # trailing spacing
    ("dpmpp_2m", dict(prediction="eps", schedule="linear"), 10),
    ("ddpm", dict(prediction="x0", schedule="cosine", timesteps=40), 40),  # noise drawn at every step
], ids=["ddim", "ddim-zero-snr", "dpmpp_2m", "ddpm"])
def test_diffusers_pipelines_sample_what_dff_samples(tmp_path, kind, kw, steps):
    m = perturbed(attention=True, timesteps=kw.pop("timesteps", 100), **kw)
    export_diffusers(m, tmp_path / "pipe", kind)
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert type(pipe).__name__ == ("DDIMPipeline" if kind == "ddim" else "DDPMPipeline")
    extra = dict(eta=0.0, use_clipped_model_output=True) if kind == "ddim" else {}
    theirs = pipe(batch_size=3, generator=torch.Generator().manual_seed(5), num_inference_steps=steps,
                  output_type="np", **extra).images  # (3, H, W, C) in [0, 1]
    ours = m.sample(3, kind, steps=None if kind == "ddpm" else steps, seed=5, progress=False)
    torch.testing.assert_close(torch.from_numpy(theirs).permute(0, 3, 1, 2), ours, atol=5e-5, rtol=0)


def test_a_class_conditional_export_guides_as_dff_does(tmp_path, monkeypatch):
    """pipeline.py in the folder (classes and guidance in an interval), run by diffusers from the folder."""
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))  # where diffusers copies pipeline.py
    m = perturbed(num_classes=4, prediction="v", schedule="cosine", timesteps=100)
    export_diffusers(m, tmp_path / "pipe")
    assert (tmp_path / "pipe" / "pipeline.py").exists()
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe", custom_pipeline=str(tmp_path / "pipe"),
                                                       trust_remote_code=True)
    for scale in (1.5, 0.0):
        theirs = pipe(class_labels=[0, 2, 3], guidance_scale=scale, generator=torch.Generator().manual_seed(5),
                      num_inference_steps=10, output_type="np").images
        ours = m.sample(3, "ddim", steps=10, seed=5, labels=[0, 2, 3], guidance=scale, progress=False)
        torch.testing.assert_close(torch.from_numpy(theirs).permute(0, 3, 1, 2), ours, atol=5e-5, rtol=0)


def latent_model(tmp_path, patch_size: int = 1) -> DiffusionModel:
    from dff.autoencoders import build_autoencoder_kl

    torch.manual_seed(0)
    build_autoencoder_kl(1, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4, image_size=16,
                         mid_attention=False, patch_size=patch_size).save_pretrained(tmp_path / f"ae{patch_size}")
    return perturbed(autoencoder=str(tmp_path / f"ae{patch_size}"), latent_scale=0.7, prediction="v",
                     schedule="cosine", timesteps=100)


def test_a_latent_export_decodes_with_its_autoencoder_at_the_run_s_scale(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    m = latent_model(tmp_path)
    export_diffusers(m, tmp_path / "pipe")
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe", custom_pipeline=str(tmp_path / "pipe"),
                                                       trust_remote_code=True)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.7) and pipe.unet.config.sample_size == 8
    theirs = pipe(batch_size=3, generator=torch.Generator().manual_seed(5), num_inference_steps=10,
                  output_type="np").images
    ours = m.sample(3, "ddim", steps=10, seed=5, progress=False)  # (3, 1, 16, 16): decoded
    torch.testing.assert_close(torch.from_numpy(theirs).permute(0, 3, 1, 2), ours, atol=5e-5, rtol=0)


def test_what_diffusers_cannot_hold_is_refused_with_the_reason(tmp_path):
    convnext = DiffusionModel(image_size=16, backbone="convnext", dim=8, dim_mults=(1, 2))
    assert "convnext backbone has no diffusers counterpart" in refusal(convnext)
    v1 = DiffusionModel(image_size=16, dim=16, dim_mults=(1, 2), adm_layout="v1")  # attention: GroupNorm(1), 4 x 32
    assert "v1 layout of earlier checkpoints" in refusal(v1)
    translate = DiffusionModel(image_size=16, dim=16, dim_mults=(1, 2), condition="sr2", cond_channels=3)
    assert "conditioned on an image" in refusal(translate)
    assert "folds pixel patches into channels" in refusal(latent_model(tmp_path, patch_size=2))
    # the command says it in one line, and writes nothing
    from dff.pretrained import save_pretrained

    save_pretrained(v1, tmp_path / "v1")
    with pytest.raises(SystemExit, match="dff export: cannot export to diffusers: the U-Net has the v1 layout"):
        main(["export", str(tmp_path / "v1"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_v1_checkpoint_resumed_into_a_diffusers_layout_run_says_how(tmp_path):
    shell = DiffusionModule(image_size=16, dim=16, dim_mults=(1, 2))
    with pytest.raises(ValueError, match="layout 'v1', the run's model 'diffusers': resume with --model.adm_layout v1"):
        shell.on_load_checkpoint({"hyper_parameters": {"backbone": "adm", "dim": 16}})  # written before adm_layout


def test_a_trained_digits_model_samples_in_diffusers_alone(tmp_path):
    """`dff fit` on the digits, `dff export`, then a fresh Python process that imports diffusers and not dff draws
    the images `dff sample` draws from the same seed."""
    main(["fit", "--config", "configs/pixel_digits.yaml", "--model.dim", "8", "--trainer.max_steps", "3",
          "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "0",
          "--trainer.default_root_dir", str(tmp_path / "runs")])
    main(["export", str(tmp_path / "runs"), str(tmp_path / "pipe")])
    with pytest.raises(SystemExit, match="already holds files"):
        main(["export", str(tmp_path / "runs"), str(tmp_path / "pipe")])
    code = (
        "import sys, numpy, torch\n"
        "from diffusers import DiffusionPipeline\n"
        "pipe = DiffusionPipeline.from_pretrained(sys.argv[1])\n"
        "out = pipe(batch_size=4, generator=torch.Generator().manual_seed(7), num_inference_steps=10, eta=0.0,\n"
        "           use_clipped_model_output=True, output_type='np').images\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'dff'], 'dff was imported'\n"
        "numpy.save(sys.argv[2], out)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "pipe"), str(tmp_path / "theirs.npy")], check=True,
                   cwd=tmp_path, env=env, capture_output=True)
    theirs = torch.from_numpy(np.load(tmp_path / "theirs.npy")).permute(0, 3, 1, 2)
    ours = load_pretrained(tmp_path / "runs").sample(4, "ddim", steps=10, seed=7, progress=False)
    torch.testing.assert_close(theirs, ours, atol=5e-5, rtol=0)
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"
