"""Latent diffusion: the autoencoder interface, loading a saved AutoencoderKL, the estimated latent
scale, latent caching, latent models (unconditional and image-to-image) end to end, training an
autoencoder, and the bad inputs of the issue. Every autoencoder here is a tiny AutoencoderKL built
from a config (random or briefly trained weights): nothing is downloaded."""
import json
from pathlib import Path

import pytest
import torch

from dff.autoencoder_module import AutoencoderModule, PatchDiscriminator
from dff.autoencoders import (KLAutoencoder, build_autoencoder_kl, image_channels, load_autoencoder, patchify,
                           unpatchify)
from dff.cli import fit, main
from dff.data.latents import LatentDataset, encode_dataset, flip, load_or_make_cache, sample_latents
from dff.module import DiffusionModule, LatentDiffusion, LatentDiffusionConditional
from dff.pretrained import load_pretrained

TINY = dict(latent_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            mid_attention=False)  # f = 2


def save_tiny_vae(path: Path, channels: int = 3, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    vae = build_autoencoder_kl(channels, image_size=32, **TINY)
    KLAutoencoder(vae).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "rgb", 3)


@pytest.fixture(scope="module")
def gray_vae_dir(tmp_path_factory) -> Path:
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "gray", 1)


@pytest.fixture(scope="module")
def patched_gray_vae_dir(tmp_path_factory) -> Path:
    """A grayscale autoencoder with patch_size 2 (f = 4), exported as a dff autoencoder run exports it."""
    torch.manual_seed(0)
    return AutoencoderModule(32, 1, **TINY, patch_size=2).export(tmp_path_factory.mktemp("vae") / "patched")


LATENT = dict(dim=8, dim_mults=(1, 2), attention=False, timesteps=50, schedule="cosine", prediction="v")


# ---------------------------------------------------------------------- the autoencoder interface
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_autoencoder_round_trip_shapes(channels):
    ae = KLAutoencoder(build_autoencoder_kl(channels, image_size=16, **TINY))
    x = torch.rand(2, channels, 16, 24) * 2 - 1
    z = ae.encode(x)
    assert ae.factor == 2 and z.shape == (2, 4, 8, 12)
    assert ae.decode(z).shape == (2, channels, 16, 24)
    assert not any(p.requires_grad for p in ae.parameters())  # frozen


def test_saved_autoencoder_loads_from_a_local_folder(tmp_path):
    torch.manual_seed(1)
    vae = build_autoencoder_kl(4, image_size=16, **TINY)  # 4 channels: multispectral
    KLAutoencoder(vae).save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "config.json").exists()
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()
    loaded = load_autoencoder(str(tmp_path / "vae"), channels=4)
    x = torch.rand(2, 4, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.encode(x), KLAutoencoder(vae).encode(x))
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), KLAutoencoder(vae).decode(KLAutoencoder(vae).encode(x)))


def test_encode_is_the_posterior_mean(vae_dir):
    ae = load_autoencoder(str(vae_dir), 3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(ae.encode(x), ae.vae.encode(x).latent_dist.mean)
    torch.testing.assert_close(ae.encode(x), ae.encode(x))  # deterministic


def test_identity_autoencoder_is_pixel_space():
    m = DiffusionModule(image_size=8, channels=3, **LATENT)
    assert not m.is_latent and m.latent.factor == 1 and float(m.latent.scale) == 1.0
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(m.latent.encode(x), x * 2 - 1)
    torch.testing.assert_close(m.latent.decode(m.latent.encode(x)), x)


# ---------------------------------------------------------------------- bad input
def test_autoencoder_with_other_channels_than_the_data(vae_dir):
    with pytest.raises(ValueError, match=r"takes 3-channel images but the data has 1 channels"):
        DiffusionModule(image_size=16, channels=1, autoencoder=str(vae_dir), **LATENT)


def test_image_size_not_divisible_by_the_autoencoder(vae_dir):
    # f = 2 (autoencoder) x 2 (U-Net, dim_mults 1,2) = 4
    with pytest.raises(ValueError, match=r"image_size 18 .*autoencoder's factor 2.* multiple of 4"):
        DiffusionModule(image_size=18, channels=3, autoencoder=str(vae_dir), **LATENT)
    ae = load_autoencoder(str(vae_dir), 3)
    with pytest.raises(ValueError, match=r"multiples of the autoencoder's down-sampling factor 2"):
        ae.encode(torch.zeros(1, 3, 15, 16))


def test_hub_id_without_network_gives_a_clear_message():
    with pytest.raises(ValueError) as e:
        load_autoencoder("dff-tests/no-such-vae", 3, local_files_only=True)  # as with no network: cache only
    msg = str(e.value)
    assert "dff-tests/no-such-vae" in msg and "download" in msg and "local path" in msg
    assert "Traceback" not in msg and len(msg) < 600


def test_folder_without_an_autoencoder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json of a diffusers AutoencoderKL"):
        load_autoencoder(str(tmp_path / "empty"), 3)


def test_presets_need_an_autoencoder():
    with pytest.raises(ValueError, match="needs model.autoencoder"):
        LatentDiffusion(image_size=16, channels=3, **LATENT)
    with pytest.raises(ValueError, match="needs model.autoencoder"):
        LatentDiffusionConditional(image_size=16, channels=3, **LATENT)


def test_latent_scale_must_be_set_before_sampling(vae_dir):
    m = LatentDiffusion(image_size=16, channels=3, autoencoder=str(vae_dir), **LATENT)
    with pytest.raises(RuntimeError, match="latent scale is not set"):
        m.sample(1, steps=2, progress=False)


# ---------------------------------------------------------------------- latent scale
def test_estimated_scale_makes_the_training_latents_unit_variance(vae_dir):
    from dff.data.builtin import PhotoPatches

    def crops(seed: int, n: int = 256) -> torch.Tensor:
        ds = PhotoPatches("train", 16, 3, repeat=n, seed=seed)
        return torch.stack([ds[i]["image"] for i in range(n)])

    m = LatentDiffusion(image_size=16, channels=3, autoencoder=str(vae_dir), **LATENT)
    train = crops(0)
    s = m.latent.estimate_scale(sample_latents(m.latent.encode_unscaled, [{"image": x} for x in train], num=len(train)))
    assert torch.isnan(m.latent.scale)  # estimated, not stored: fit stores rank 0's estimate on every rank
    m.latent.scale.fill_(s)
    assert abs(s - 1.0) > 0.05  # the raw latents are not unit-variance: the scale matters here
    assert m.latent.encode(train).std().item() == pytest.approx(1.0, abs=1e-3)  # the training sample
    assert m.latent.encode(crops(1)).std().item() == pytest.approx(1.0, abs=0.15)  # fresh crops: within sampling error


def test_checkpoints_of_dff_0_1_load(vae_dir):
    """dff 0.1 kept the latent scale at the state-dict key `scale`, and up to 0.2 the model's weights had no
    `model.` prefix; both load into the training shell (and load_pretrained reads them: test_model.py)."""
    m = LatentDiffusion(image_size=16, channels=3, autoencoder=str(vae_dir), latent_scale=0.7, **LATENT)
    state = m.state_dict()
    assert "model.latent.scale" in state and not any("autoencoder." in k for k in state)
    state = {k.removeprefix("model."): v for k, v in state.items()}
    state["scale"] = state.pop("latent.scale")
    again = LatentDiffusion(image_size=16, channels=3, autoencoder=str(vae_dir), **LATENT)
    assert torch.isnan(again.latent.scale)
    again.load_state_dict(state)  # strict: nothing missing (the autoencoder keeps its own weights), nothing unexpected
    assert float(again.latent.scale) == pytest.approx(0.7)


def test_given_scale_is_kept(vae_dir):
    m = LatentDiffusion(image_size=16, channels=3, autoencoder=str(vae_dir), latent_scale=0.5, **LATENT)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(m.latent.encode(x), 0.5 * m.latent.autoencoder.encode(x * 2 - 1))


# ---------------------------------------------------------------------- caching
def cache_args(m) -> dict:
    """What the data module takes from the model's latent space to cache its latents (as use_latent_cache does)."""
    return dict(encode=m.latent.encode_unscaled, condition_code=m.latent.condition_code,
                meta=m.latent.cache_meta())


def test_cached_and_uncached_training_see_the_same_latents(vae_dir, tmp_path):
    from dff.data.builtin import PhotoPatches

    m = LatentDiffusion(image_size=16, channels=3, autoencoder=str(vae_dir), latent_scale=0.7, **LATENT)
    ds = PhotoPatches("val", 16, 3)  # a fixed grid of patches
    data = load_or_make_cache(str(tmp_path / "lat.pt"), ds, **cache_args(m), hflip=True, vflip=True, batch_size=8)
    assert data["latent"].shape == (len(ds), 4, 4, 8, 8)  # 4 flip variants
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    for v, (h, vf) in enumerate([(False, False), (True, False), (False, True), (True, True)]):
        torch.testing.assert_close(data["latent"][:, v], m.latent.encode_unscaled(flip(x, h, vf)), atol=1e-5, rtol=1e-5)
    # a training step on a cached item sees exactly s * E(x) of one variant of that image
    cached = LatentDataset(data, seed=0)
    for i in range(3):
        z = cached[i]["latent"] * m.latent.s()
        fresh = [m.latent.encode(flip(x[i:i + 1], h, vf))[0]
                 for h, vf in [(False, False), (True, False), (False, True), (True, True)]]
        assert min((z - f).abs().max().item() for f in fresh) < 1e-5
    # read back rather than re-encoded
    again = load_or_make_cache(str(tmp_path / "lat.pt"), ds, **cache_args(m), hflip=True, vflip=True)
    assert torch.equal(again["latent"], data["latent"])


def test_cache_made_for_other_settings_is_an_error_not_overwritten(vae_dir, tmp_path):
    from dff.data.builtin import PhotoPatches

    m = LatentDiffusion(image_size=16, channels=3, autoencoder=str(vae_dir), latent_scale=1.0, **LATENT)
    ds = PhotoPatches("val", 16, 3)
    path = tmp_path / "lat.pt"
    load_or_make_cache(str(path), ds, **cache_args(m), hflip=True, vflip=False)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"lat.pt was made with vflip=False, this run has vflip=True"):
        load_or_make_cache(str(path), ds, **cache_args(m), hflip=True, vflip=True)
    assert path.read_bytes() == before


def test_cache_made_by_other_weights_at_the_same_path_is_an_error(tmp_path):
    """A retrained autoencoder written where the old one was (a run folder's newest export) must not reuse the old
    latents: the cache records a hash of the weights, not only the path."""
    from dff.data.builtin import PhotoPatches

    vae, ds, path = tmp_path / "vae", PhotoPatches("val", 16, 3), tmp_path / "lat.pt"
    save_tiny_vae(vae, 3, seed=0)
    m = LatentDiffusion(image_size=16, channels=3, autoencoder=str(vae), latent_scale=1.0, **LATENT)
    load_or_make_cache(str(path), ds, **cache_args(m), hflip=False, vflip=False)
    again = LatentDiffusion(image_size=16, channels=3, autoencoder=str(vae), latent_scale=1.0, **LATENT)
    assert again.latent.cache_meta() == m.latent.cache_meta()  # the same weights: the cache is reused
    load_or_make_cache(str(path), ds, **cache_args(again), hflip=False, vflip=False)
    save_tiny_vae(vae, 3, seed=1)  # retrained in place
    before = path.read_bytes()
    other = LatentDiffusion(image_size=16, channels=3, autoencoder=str(vae), latent_scale=1.0, **LATENT)
    with pytest.raises(ValueError, match=r"lat.pt was made with autoencoder_weights='[0-9a-f]{16}', this run has"):
        load_or_make_cache(str(path), ds, **cache_args(other), hflip=False, vflip=False)
    assert path.read_bytes() == before


def test_cached_conditions_match_fresh_ones(vae_dir):
    from dff.data.builtin import PhotoPatches
    from dff.data.paired import TaskDataset

    ds = TaskDataset(PhotoPatches("val", 16, 3), "sr2", seed=0)
    for mode in ("encode", "resize"):
        m = LatentDiffusionConditional(image_size=16, channels=3, condition="sr2", autoencoder=str(vae_dir),
                                       latent_condition=mode, latent_scale=0.8, **LATENT)
        data = encode_dataset(ds, encode=m.latent.encode_unscaled, condition_code=m.latent.condition_code, hflip=True,
                              vflip=False, progress=False)
        c = torch.stack([ds[i]["cond"] for i in range(len(ds))])
        torch.testing.assert_close(data["cond_code"][:, 1], m.latent.condition_code(flip(c, True, False)),
                                   atol=1e-5, rtol=1e-5)
        assert data["cond_code"].shape[-3:] == ((4 if mode == "encode" else 3), 8, 8)


# ---------------------------------------------------------------------- end to end
def fit_latent(tmp_path, vae, extra=(), name="run"):
    return fit(["--data.dataset", "textures", "--data.image_size", "64", "--data.channels", "1", "--data.repeat", "4",
                "--data.batch_size", "4", "--model.autoencoder", str(vae), "--model.dim", "8",
                "--model.dim_mults", "[1, 2]", "--model.attention", "false", "--model.timesteps", "50",
                "--model.latent_scale_samples", "8", "--trainer.max_steps", "2", "--trainer.enable_progress_bar",
                "false", "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path / name),
                "--samples.every_n_steps", "0", *extra])


@pytest.mark.parametrize("vae", ["gray_vae_dir", "patched_gray_vae_dir"])
def test_latent_model_fits_caches_exports_and_samples_at_64(tmp_path, vae, request):
    cli = fit_latent(tmp_path, request.getfixturevalue(vae), ["--data.latent_cache", str(tmp_path / "lat.pt")])
    model = cli.model
    assert model.is_latent and (tmp_path / "lat.pt").exists()
    assert model.latent.factor == (4 if vae.startswith("patched") else 2)  # 2 levels (f = 2), times p = 2
    assert torch.load(tmp_path / "lat.pt", weights_only=True)["latent"].shape[-2:] == (64 // model.latent.factor,) * 2
    assert 0 < float(model.latent.scale) < 100 and not torch.isnan(model.latent.scale)
    x = model.sample(3, "ddim", steps=3, seed=0, progress=False)
    assert x.shape == (3, 1, 64, 64) and 0 <= x.min() and x.max() <= 1
    for sampler in ("ddpm", "dpmpp_2m"):
        assert model.sample(2, sampler, steps=None if sampler == "ddpm" else 3, seed=0,
                            progress=False).shape == (2, 1, 64, 64)
    # the checkpoint holds the network and the scale, not the autoencoder
    ckpt = torch.load(next(Path(cli.trainer.log_dir, "checkpoints").glob("*.ckpt")), weights_only=True)
    assert "model.latent.scale" in ckpt["state_dict"] and not any("autoencoder." in k for k in ckpt["state_dict"])
    # the export is self-contained and samples the same images
    export = Path(cli.trainer.log_dir) / "export"
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["hparams"]["autoencoder"] == "autoencoder" and (export / "autoencoder" / "config.json").exists()
    assert cfg["hparams"]["latent_scale"] == pytest.approx(float(model.latent.scale))
    for source in (export, next(Path(cli.trainer.log_dir, "checkpoints").glob("last.ckpt"))):
        again = load_pretrained(source)
        torch.testing.assert_close(again.sample(3, "ddim", steps=3, seed=0, progress=False), x)


def test_dff_sample_and_eval_autoencoder_on_a_latent_run(tmp_path, gray_vae_dir, capsys):
    cli = fit_latent(tmp_path, gray_vae_dir)
    run = Path(cli.trainer.log_dir)
    main(["sample", str(run), "--num", "2", "--steps", "2", "--out", str(tmp_path / "s"), "--no-progress"])
    assert len(list((tmp_path / "s").glob("sample_*.png"))) == 2
    main(["eval", str(run), "--autoencoder", "--data", "textures", "--json", str(tmp_path / "ae.json")])
    res = json.loads((tmp_path / "ae.json").read_text())
    # the same numbers computed here: D(E(x)) of the held-out texture patches
    from dff.data.builtin import PhotoPatches
    from dff.metrics import psnr

    ds = PhotoPatches("val", 64, 1, source="textures")
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    ae = cli.model.latent.autoencoder
    x_hat = ((ae.decode(ae.encode(x * 2 - 1)) + 1) / 2).clamp(0, 1)
    assert res["n"] == len(ds) and res["psnr"] == pytest.approx(float(psnr(x_hat, x)), rel=1e-4)


@pytest.mark.parametrize("mode", ["encode", "resize"])
def test_latent_image_to_image_fits_samples_and_translates(tmp_path, vae_dir, mode):
    from PIL import Image

    cli = fit(["--data.dataset", "photos", "--data.pairs", "sr2", "--data.image_size", "16", "--data.channels", "3",
               "--data.repeat", "4", "--data.batch_size", "4", "--data.val_batch_size", "4", "--model.autoencoder",
               str(vae_dir), "--model.latent_condition", mode, "--model.dim", "8", "--model.dim_mults", "[1, 2]",
               "--model.attention", "false", "--model.timesteps", "50", "--model.val_steps", "2",
               "--model.latent_scale_samples", "8", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
               "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
               "--samples.every_n_steps", "0"])
    model = cli.model
    assert model.hparams.condition == "sr2" and model.net.cond_channels == (4 if mode == "encode" else 3)
    cond = torch.rand(2, 3, 16, 16)
    out = model.sample(cond=cond, num_samples=2, steps=2, seed=0, progress=False)
    assert out.shape == (4, 3, 16, 16)
    # dff translate: x2 super-resolution of an 18x22 input, padded to the whole factor (autoencoder x U-Net = 4),
    # cropped back
    Image.fromarray((torch.rand(18, 22, 3) * 255).byte().numpy()).save(tmp_path / "in.png")
    main(["translate", str(Path(cli.trainer.log_dir)), "--input", str(tmp_path / "in.png"), "--out",
          str(tmp_path / "out"), "--steps", "2", "--no-progress"])
    assert Image.open(tmp_path / "out" / "in.png").size == (44, 36)


def test_latent_cache_needs_a_latent_model(tmp_path):
    with pytest.raises(ValueError, match="data.latent_cache is for latent models"):
        fit(["--data.dataset", "digits", "--data.image_size", "8", "--data.channels", "1", "--data.latent_cache",
             str(tmp_path / "x.pt"), "--model.dim", "8", "--model.dim_mults", "[1]", "--model.attention", "false",
             "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "r"),
             "--trainer.enable_progress_bar", "false"])


# ---------------------------------------------------------------------- training an autoencoder
def train_briefly(m: AutoencoderModule, steps: int = 60) -> list[float]:
    """`steps` optimiser steps on one fixed batch of 4 random images; the losses."""
    opt = m.configure_optimizers()
    x = {"image": torch.rand(4, m.hparams.channels, 16, 16)}
    losses = []
    for _ in range(steps):
        loss = m.training_step(x, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_autoencoder_training_reduces_the_reconstruction_loss():
    torch.manual_seed(0)
    losses = train_briefly(AutoencoderModule(16, 3, **TINY, lr=3e-3))
    assert losses[-1] < 0.6 * losses[0]


def test_discriminator_loss_reaches_only_its_own_parameters():
    torch.manual_seed(0)
    m = AutoencoderModule(16, 1, **TINY, discriminator=True, disc_start=0, disc_dim=8, disc_layers=2)
    loss = m.training_step({"image": torch.rand(2, 1, 16, 16)}, 0)
    loss.backward()
    # non-zero gradients, not merely computed ones; the output bias is the exception: while every logit lies
    # inside the hinge's margin its gradient is mean(-1) over the real patches + mean(+1) over the fakes = 0
    grads = {n: p.grad.abs().sum().item() for n, p in m.disc.named_parameters()}
    assert grads.pop("net.8.bias") == 0 and all(g > 0 for g in grads.values()), grads
    assert m.vae.decoder.conv_out.weight.grad.abs().sum() > 0
    # L_D alone: x_hat is detached, so it moves D only; L_G alone with D frozen moves the autoencoder only
    m.zero_grad()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    x_hat = m.vae(x).sample
    d = torch.relu(1 - m.disc(x)).mean() + torch.relu(1 + m.disc(x_hat.detach())).mean()
    d.backward()
    assert all(p.grad is None for p in m.vae.parameters())
    assert PatchDiscriminator(3, 8, 2)(torch.rand(1, 3, 32, 32)).shape[1] == 1


def test_fit_an_autoencoder_from_a_config_and_use_it(tmp_path):
    cfg = tmp_path / "ae.yaml"
    cfg.write_text(
        "model:\n  class_path: dff.autoencoder_module.AutoencoderModule\n  init_args:\n"
        "    latent_channels: 4\n    block_out_channels: [8, 16]\n    norm_num_groups: 4\n    mid_attention: false\n"
        "data:\n  dataset: textures\n  image_size: 32\n  channels: 1\n  repeat: 2\n  batch_size: 4\n"
    )
    cli = fit(["--config", str(cfg), "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "ae"),
               "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1",
               "--model.init_args.lr_decay", "linear", "--model.init_args.lr", "1e-3"])
    lam = cli.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert [lam(s) for s in range(3)] == [1.0, 0.5, 0.0]  # linear to 0 at trainer.max_steps
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == 0.0
    assert isinstance(cli.model, AutoencoderModule) and cli.model.hparams.channels == 1  # linked from the data
    run = Path(cli.trainer.log_dir)
    assert (run / "export" / "autoencoder" / "diffusion_pytorch_model.safetensors").exists()
    assert (run / "reconstructions.png").exists()
    ae = load_autoencoder(str(tmp_path / "ae"), 1)  # the run folder is enough: its newest export is found
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(ae.encode(x), cli.model.vae.encode(x).latent_dist.mean)


def test_patchify_folds_each_block_of_pixels_into_channels():
    x = torch.randn(2, 3, 8, 12)
    y = patchify(x, 2)
    assert y.shape == (2, 12, 4, 6)
    # channel c p^2 + i p + j at (h, w) holds pixel (h p + i, w p + j) of channel c
    for c, i, j in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (2, 1, 1)]:
        torch.testing.assert_close(y[:, c * 4 + i * 2 + j], x[:, c, i::2, j::2], rtol=0, atol=0)
    torch.testing.assert_close(unpatchify(y, 2), x, rtol=0, atol=0)
    assert patchify(x, 1) is x and unpatchify(x, 1) is x


def test_a_patched_autoencoder_trains_exports_and_loads(tmp_path):
    torch.manual_seed(0)
    m = AutoencoderModule(16, 3, **TINY, patch_size=2, lr=3e-3)
    assert m.factor == 4 and m.vae.config.in_channels == 12  # p = 2 times the 2 of two levels
    losses = train_briefly(m)
    assert losses[-1] < 0.6 * losses[0]
    folder = m.export(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["_dff_patch_size"] == 2 and cfg["in_channels"] == 12 and image_channels(cfg) == 3
    ae = load_autoencoder(str(folder), 3)
    assert (ae.in_channels, ae.factor, ae.patch) == (3, 4, 2)
    images = torch.rand(2, 3, 16, 24)
    z = ae.encode(images * 2 - 1)
    assert z.shape == (2, 4, 4, 6)
    torch.testing.assert_close(((ae.decode(z) + 1) / 2).clamp(0, 1), m.reconstruct(images))
    with pytest.raises(ValueError, match="takes 3-channel images but the data has 12 channels"):
        load_autoencoder(str(folder), 12)
    with pytest.raises(ValueError, match="multiples of the autoencoder's down-sampling factor 4"):
        ae.encode(torch.rand(1, 3, 16, 18))
    with pytest.raises(ValueError,
                       match="image_size 18 must be a multiple of the autoencoder's down-sampling factor 4"):
        AutoencoderModule(18, 3, **TINY, patch_size=2)
    with pytest.raises(ValueError, match="patch_size=0: expected a whole number >= 1"):
        AutoencoderModule(16, 3, **TINY, patch_size=0)


def test_dff_eval_scores_a_patched_grayscale_autoencoder_folder(tmp_path):
    torch.manual_seed(0)
    folder = AutoencoderModule(16, 1, **TINY, patch_size=2).export(tmp_path)  # in_channels 4 in its config.json
    main(["eval", str(folder), "--data", "textures", "--image-size", "16", "--num", "6", "--json",
          str(tmp_path / "ae.json")])
    res = json.loads((tmp_path / "ae.json").read_text())
    from dff.data.builtin import PhotoPatches
    from dff.metrics import psnr

    ds = PhotoPatches("val", 16, 1, source="textures")
    x = torch.stack([ds[i]["image"] for i in range(6)])
    ae = load_autoencoder(str(folder), 1)
    x_hat = ((ae.decode(ae.encode(x * 2 - 1)) + 1) / 2).clamp(0, 1)
    assert res["n"] == 6 and res["psnr"] == pytest.approx(float(psnr(x_hat, x)), rel=1e-4)


def test_autoencoder_channels_must_match_the_data():
    m = AutoencoderModule(16, 4, **TINY)
    with pytest.raises(ValueError, match="images with 3 channels, but the autoencoder was built for model.channels=4"):
        m.training_step({"image": torch.rand(2, 3, 16, 16)}, 0)
    with pytest.raises(ValueError,
                       match="image_size 17 must be a multiple of the autoencoder's down-sampling factor 2"):
        AutoencoderModule(17, 3, **TINY)
    with pytest.raises(ValueError, match="model.lr_decay='exp': expected one of none, linear, cosine"):
        AutoencoderModule(16, 3, **TINY, lr_decay="exp")


# ---------------------------------------------------------------------- data for the 256 configs and the demo
def test_half_of_side_by_side_files_for_unpaired_data(tmp_path):
    import numpy as np
    from PIL import Image

    from dff.data.datamodule import ImageDataModule
    from dff.data.folder import ImageFolder

    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    (tmp_path / "maps").mkdir()
    Image.fromarray(np.concatenate([a, b], axis=1)).save(tmp_path / "maps" / "1.png")
    for half, value in (("A", 0.0), ("B", 1.0)):
        ds = ImageFolder(tmp_path / "maps", 8, 3, crop="random", hflip=True, vflip=True, half=half)
        assert ds[0]["image"].shape == (3, 8, 8) and torch.all(ds[0]["image"] == value)
    with pytest.raises(ValueError, match="data.half='A' takes one half .* leave it unset"):
        ImageDataModule("folder", str(tmp_path / "maps"), image_size=8, pairs="side_by_side", half="A")


def test_builtin_textures_are_split_into_train_and_held_out_parts():
    from dff.data.builtin import PhotoPatches

    train = PhotoPatches("train", 128, 1, repeat=2, seed=0, source="textures")
    val = PhotoPatches("val", 128, 1, source="textures")
    assert [im.size for im in train.photos] == [(512, 384)] * 3 and [im.size for im in val.photos] == [(512, 128)] * 3
    assert len(val) == 12 and train[0]["image"].shape == (1, 128, 128)


# ---------------------------------------------------------------------- the shipped texture autoencoder
def test_the_shipped_texture_autoencoder_loads_by_name_and_scores_what_its_record_says():
    """`dff:textures` is the package's own AutoencoderKL (f = 4, 4 latent channels, 1 channel); its source stays the
    name (so checkpoints and caches hold no machine path), and its held-out PSNR/SSIM are the ones its JSON records."""
    from dff.autoencoders import BUILTIN_AUTOENCODERS, WEIGHTS_DIR
    from dff.evaluation.reconstruction import evaluate_autoencoder, reconstruction_images

    ae = load_autoencoder("dff:textures", 1)
    assert ae.source == "dff:textures" and ae.factor == 4 and ae.latent_channels == 4 and ae.in_channels == 1
    record = json.loads((WEIGHTS_DIR / f"{BUILTIN_AUTOENCODERS['dff:textures']}.json").read_text())
    scores = evaluate_autoencoder(ae, reconstruction_images("textures", 1, 64))
    assert scores["n"] == record["heldout"]["n"] == 48
    assert scores["psnr"] == pytest.approx(record["heldout"]["psnr"], abs=0.01)
    assert scores["ssim"] == pytest.approx(record["heldout"]["ssim"], abs=1e-3)
    assert record["heldout"]["psnr"] > 27  # a real autoencoder, not noise: the demo's f = 4 scores ~28-29 dB


def test_package_data_ships_the_autoencoder_weights():
    """pyproject's package-data patterns cover every file of models/weights (else a wheel would lose them)."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dff"]
    weights = [f.relative_to(root / "src" / "dff").as_posix()
               for f in (root / "src" / "dff" / "models" / "weights").rglob("*") if f.is_file()]
    assert len(weights) >= 3
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in weights), weights


def test_dff_eval_scores_the_shipped_autoencoder_by_name(capsys):
    from dff.autoencoders import WEIGHTS_DIR

    main(["eval", "dff:textures", "--data", "textures", "--image-size", "64"])
    out = capsys.readouterr().out
    psnr = float(next(line.split()[1] for line in out.splitlines() if line.startswith("psnr")))
    record = json.loads((WEIGHTS_DIR / "textures_autoencoder.json").read_text())
    assert psnr == pytest.approx(record["heldout"]["psnr"], abs=0.01) and "dff:textures" in out


def test_an_unknown_dff_name_and_a_wrong_channel_count_are_one_line_each():
    with pytest.raises(ValueError, match=r"autoencoder 'dff:satellite': dff ships dff:textures"):
        load_autoencoder("dff:satellite", 1)
    with pytest.raises(ValueError, match=r"'dff:textures' takes 1-channel images but the data has 3 channels"):
        load_autoencoder("dff:textures", 3)


def test_latent_demo_trains_only_the_latent_model_by_default(tmp_path, capsys):
    """`dff demo latent`: the shipped autoencoder, no stage 1; the reconstructions of the held-out patches are
    written beside the samples, and the export carries its own copy of the autoencoder."""
    from dff.demo import latent_demo

    run = latent_demo(str(tmp_path / "demo"), max_steps=3)
    out = capsys.readouterr().out
    assert not (tmp_path / "demo" / "autoencoder").exists() and "autoencoder trained" not in out
    for name in ("samples.png", "real.png", "reconstructions.png", "export/autoencoder/config.json"):
        assert (run / name).exists(), name
    assert (tmp_path / "demo" / "latents_textures.pt").exists()
    assert "PSNR 28." in out or "PSNR 29." in out  # the shipped autoencoder's, not an untrained one's
    hparams = (run / "hparams.yaml").read_text()
    assert "autoencoder: dff:textures" in hparams
    assert load_pretrained(run / "export").latent.autoencoder.fingerprint() == \
        load_autoencoder("dff:textures", 1).fingerprint()


def test_latent_demo_end_to_end_at_a_few_steps(tmp_path, capsys):
    """`dff demo latent --autoencoder-steps N` (or --train-autoencoder): both stages, as before the autoencoder
    was shipped."""
    from dff.demo import latent_demo

    run = latent_demo(str(tmp_path / "demo"), max_steps=4, autoencoder_steps=4)
    out = capsys.readouterr().out
    for name in ("samples.png", "real.png", "report.html", "export/model.safetensors"):
        assert (run / name).exists(), name
    assert list((tmp_path / "demo" / "autoencoder").glob("version_*/reconstructions.png"))
    assert "PSNR" in out and "latent scale" in out
    judged = next(line for line in out.splitlines() if line.startswith("texture judge:"))
    counts = [int(w) for w in judged.replace(",", " ").replace(")", " ").split() if w.isdigit()]
    assert counts[1] == 16 and counts[0] == sum(counts[2:5])  # "N of 16 (brick b, grass g, gravel v)"
    model = load_pretrained(run / "export")
    assert model.hparams.image_size == 64 and model.latent.autoencoder is not None


def test_an_unreachable_hub_fails_at_once_without_the_download_retries(monkeypatch):
    """A hub id that is not in the cache, with no network: one clear error, and no download attempted (the hub
    client would retry for ~25 s); HF_HUB_OFFLINE=1 says offline without opening a connection."""
    import socket

    from diffusers import AutoencoderKL

    from dff.models.autoencoders import hub_reachable, load_autoencoder

    calls = []

    def from_pretrained(spec, local_files_only=False, **kw):
        calls.append(local_files_only)
        raise OSError("not cached")

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", from_pretrained)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ValueError, match="is not a local folder and could not be loaded from the Hugging Face hub"):
        load_autoencoder("someone/some-vae", 3)
    assert calls == [True]  # the cache was asked; no download
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("connected while offline"))
    assert not hub_reachable()


def test_dff_demo_latent_passes_train_autoencoder(monkeypatch):
    """`dff demo latent` uses the shipped autoencoder; `--train-autoencoder` asks for stage 1 first."""
    import dff.tools.demo as demo

    calls = []
    monkeypatch.setattr(demo, "latent_demo", lambda **kw: calls.append(kw))
    main(["demo", "latent"])
    main(["demo", "latent", "--train-autoencoder", "--max-steps", "5"])
    assert calls[0]["train_autoencoder"] is False and calls[0]["autoencoder_steps"] is None
    assert calls[1]["train_autoencoder"] is True and calls[1]["max_steps"] == 5


def test_the_latent_demo_trains_fewer_steps_in_float32_on_a_cpu_without_bf16(monkeypatch, capsys):
    """The config's 4500 steps in bf16-mixed where the device has bf16; a float32 CPU gets 3000 (about the same
    time, x1.45 per step) with one line naming the recipe it skips; an explicit --max-steps is kept."""
    import dff.speed
    import dff.tools.demo as demo

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dff.speed, "cpu_has_bf16", lambda: True)
    assert demo.latent_demo_steps(None) is None and demo.latent_demo_steps(7) == 7
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(dff.speed, "cpu_has_bf16", lambda: False)
    assert demo.latent_demo_steps(None) == demo.LATENT_FLOAT32_CPU_STEPS == 3000
    assert "trains in float32 for 3000 steps instead of the config's 4500" in capsys.readouterr().out
    assert demo.latent_demo_steps(7) == 7


@pytest.mark.parametrize("kwargs", [{"max_steps": 0}, {"max_steps": -1}, {"max_steps": 2.5},
                                    {"autoencoder_steps": 0}])
def test_the_demos_refuse_step_counts_below_one_from_python(kwargs, tmp_path):
    """The Python entry points check what the CLI's argparse type checks, before anything is written."""
    from dff.demo import digits_demo, latent_demo

    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"dff demo: {name}=.*: expected a whole number of steps >= 1"):
        latent_demo(str(tmp_path / "latent"), **kwargs)
    if name == "max_steps":
        with pytest.raises(ValueError, match="expected a whole number of steps >= 1"):
            digits_demo(str(tmp_path / "digits"), **kwargs)
    assert not any(tmp_path.iterdir())
