"""Class-conditional generation with classifier-free guidance: the guided prediction, labels from
data, and the bad inputs (unknown class, labels for a model trained without them)."""
import pytest
import torch

from conftest import write_images
from dff.cli import fit, main
from dff.data.folder import ImageFolder
from dff.diffusion import GaussianDiffusion
from dff.diffusion.guidance import DEFAULT_INTERVAL, ClassifierFreeGuidance, guidance_interval
from dff.module import PixelDiffusion
from dff.pretrained import save_pretrained


def fake_net(x, t, cond=None, y=None):
    return x * (y.float() + 1).view(-1, 1)  # labels change the prediction linearly


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_guidance_scale_interpolates_unconditional_and_conditional(scale):
    x, t, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 1])
    null = 5
    uncond, cond = fake_net(x, t, None, torch.full_like(y, null)), fake_net(x, t, None, y)
    out = ClassifierFreeGuidance(fake_net, y, scale=scale, null=null)(x, t)
    assert torch.allclose(out, uncond + scale * (cond - uncond))
    if scale == 0.0:
        assert torch.equal(out, uncond)
    if scale == 1.0:
        assert torch.equal(out, cond)


def test_guidance_in_an_interval_guides_there_and_conditions_elsewhere():
    x, y, null, T = torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), 5, 10
    active = torch.zeros(T, dtype=torch.bool)
    active[3:7] = True
    t = torch.tensor([2, 3, 6, 7])  # outside, inside, inside, outside
    out = ClassifierFreeGuidance(fake_net, y, scale=3.0, null=null, active=active)(x, t)
    uncond, cond = fake_net(x, t, None, torch.full_like(y, null)), fake_net(x, t, None, y)
    guided = uncond + 3.0 * (cond - uncond)
    assert torch.equal(out[[0, 3]], cond[[0, 3]]) and torch.allclose(out[[1, 2]], guided[[1, 2]])
    # scale 0 in the interval: the unconditional prediction there only
    out0 = ClassifierFreeGuidance(fake_net, y, scale=0.0, null=null, active=active)(x, t)
    assert torch.equal(out0[[1, 2]], uncond[[1, 2]]) and torch.equal(out0[[0, 3]], cond[[0, 3]])


def test_guidance_interval_is_a_range_of_noise_levels():
    d = GaussianDiffusion(timesteps=1000, schedule="linear")
    sigma = ((1 - d.alpha_bar) / d.alpha_bar).sqrt()  # increasing in t
    on = guidance_interval(d.alpha_bar, 0.28, 5.42)  # EDM2-S's interval (Kynkaanniemi et al. 2024, Table 1)
    idx = on.nonzero().flatten()
    assert on.any() and torch.equal(idx, torch.arange(idx[0], idx[-1] + 1))  # one contiguous run of timesteps
    assert sigma[idx[0]] > 0.28 >= sigma[idx[0] - 1] and sigma[idx[-1]] <= 5.42 < sigma[idx[-1] + 1]
    with pytest.raises(ValueError, match="lo < hi"):
        guidance_interval(d.alpha_bar, 2.0, 1.0)


TINY = dict(image_size=8, channels=1, dim=8, dim_mults=[1, 2], timesteps=20, schedule="cosine")


def test_module_guidance_interval_ends():
    m = PixelDiffusion(num_classes=3, **TINY)
    torch.nn.init.normal_(m.ema.model.class_emb.weight)
    for p in m.ema.model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    s = lambda **kw: m.sample(4, "ddim", steps=3, seed=0, progress=False, labels=1, **kw)  # noqa: E731
    everywhere, conditional = s(guidance=3.0, guidance_interval=None), s(guidance=1.0)
    assert torch.allclose(s(guidance=3.0, guidance_interval=(0.0, float("inf"))), everywhere, atol=1e-6)
    default = s(guidance=3.0)  # the interval (0.28, 5.42]: guided at some of the 3 DDIM steps, not at all
    assert torch.allclose(default, s(guidance=3.0, guidance_interval=DEFAULT_INTERVAL), atol=1e-6)
    assert not torch.allclose(default, everywhere, atol=1e-4) and not torch.allclose(default, conditional, atol=1e-4)
    assert torch.allclose(s(guidance=3.0, guidance_interval=(1e6, 1e7)), conditional, atol=1e-6)  # no step in it
    assert not torch.allclose(everywhere, conditional, atol=1e-4)


def test_module_guidance_ends():
    m = PixelDiffusion(num_classes=3, **TINY)
    torch.nn.init.normal_(m.ema.model.class_emb.weight)  # make the labels matter
    for p in m.ema.model.parameters():  # as after training: no zero-initialised output layer
        p.data.add_(0.05 * torch.randn_like(p))
    s = lambda **kw: m.sample(4, "ddim", steps=3, seed=0, progress=False, **kw)  # noqa: E731
    unconditional = s()
    assert torch.allclose(s(labels=1, guidance=0.0), unconditional, atol=1e-6)
    assert torch.allclose(s(labels=2, guidance=0.0), unconditional, atol=1e-6)
    assert not torch.allclose(s(labels=1, guidance=1.0), unconditional, atol=1e-4)
    assert not torch.allclose(s(labels=1, guidance=1.0), s(labels=2, guidance=1.0), atol=1e-4)


def test_unknown_class_and_unlabelled_model(tmp_path):
    m = PixelDiffusion(num_classes=3, **TINY)
    with pytest.raises(ValueError, match=r"class 3 unknown: this model was trained with classes 0..2"):
        m.sample(2, "ddim", steps=2, labels=3, progress=False)
    with pytest.raises(ValueError, match="trained without class labels"):
        PixelDiffusion(**TINY).sample(2, "ddim", steps=2, labels=0, progress=False)
    save_pretrained(m, tmp_path / "w")
    with pytest.raises(SystemExit, match="class 7 unknown"):
        main(["sample", str(tmp_path / "w"), "--class", "7", "--num", "2", "--steps", "2", "--out",
              str(tmp_path / "o")])
    main(["sample", str(tmp_path / "w"), "--class", "2", "--num", "2", "--steps", "2", "--out", str(tmp_path / "o"),
          "--no-progress"])
    assert (tmp_path / "o" / "sample_0001.png").exists()
    with pytest.raises(SystemExit, match=r"guidance interval \(2.0, 1.0\]: expected 0 <= lo < hi"):
        main(["sample", str(tmp_path / "w"), "--class", "2", "--num", "2", "--steps", "2", "--out", str(tmp_path / "p"),
              "--guidance-interval", "2", "1"])
    main(["sample", str(tmp_path / "w"), "--class", "2", "--num", "2", "--steps", "2", "--out", str(tmp_path / "q"),
          "--guidance-interval", "0.3", "5", "--no-progress"])
    assert (tmp_path / "q" / "sample_0001.png").exists()


def test_labels_from_subfolders(tmp_path):
    write_images(tmp_path / "cats", 2, 8)
    write_images(tmp_path / "dogs", 3, 8)
    ds = ImageFolder(tmp_path, 8, 3, labels=True)
    assert ds.classes == ["cats", "dogs"] and sorted(ds[i]["label"] for i in range(5)) == [0, 0, 1, 1, 1]
    write_images(tmp_path, 1, 8)  # a loose image in the root has no class
    with pytest.raises(ValueError, match="directly in it"):
        ImageFolder(tmp_path, 8, 3, labels=True)


def test_fit_class_conditional_digits(tmp_path):
    cli = fit(["--data.dataset", "digits", "--data.image_size", "8", "--data.channels", "1", "--data.batch_size", "8",
               "--model.num_classes", "10", "--model.dim", "8", "--model.dim_mults", "[1, 2]",
               "--model.timesteps", "20", "--model.schedule", "cosine",
               "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(tmp_path), "--samples.every_n_steps", "0"])
    assert cli.trainer.global_step == 2
    with pytest.raises(ValueError, match="num_classes=3"):
        fit(["--data.dataset", "digits", "--data.image_size", "8", "--data.channels", "1", "--data.batch_size", "64",
             "--model.num_classes", "3", "--model.dim", "8", "--model.dim_mults", "[1, 2]", "--model.timesteps", "20",
             "--model.schedule", "cosine", "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false",
             "--trainer.default_root_dir", str(tmp_path), "--samples.every_n_steps", "0"])
