"""data.on_device: a folder decoded once into a uint8 tensor, crops and flips per batch on the device. The device
path gives the PIL path's images for the same windows and flips, and falls back with one line where it cannot."""
import random

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from dff.data.datamodule import ImageDataModule
from dff.data.device import DeviceImages, crop_flip
from dff.data.folder import ImageFolder, to_tensor, transform_same
from dff.module import PixelDiffusion


def make_folder(root, n=6, size=(48, 40), mode="RGB", seed=0, sizes=None):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = sizes[i % len(sizes)] if sizes else size
        shape = (h, w) if mode == "L" else (h, w, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"{i}.png")
    return root


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_device_windows_and_flips_equal_the_pil_path(tmp_path, mode):
    folder = ImageFolder(make_folder(tmp_path / "f", mode=mode), 16, 1 if mode == "L" else 3, crop="random")
    dev = DeviceImages(folder)
    rng = random.Random(0)
    for _ in range(20):
        i, top, left = rng.randrange(len(folder.files)), rng.randint(0, 40 - 16), rng.randint(0, 48 - 16)
        hf, vf = rng.random() < 0.5, rng.random() < 0.5
        im = Image.open(folder.files[i]).convert(mode).crop((left, top, left + 16, top + 16))
        if hf:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if vf:
            im = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        out = crop_flip(dev.images, torch.tensor([i]), torch.tensor([top]), torch.tensor([left]),
                        torch.tensor([hf]), torch.tensor([vf]), 16)
        assert torch.equal(out[0], to_tensor(im))  # bit for bit


def test_resize_crop_is_done_once_as_the_pil_path_does(tmp_path):
    root = make_folder(tmp_path / "f", sizes=[(40, 30), (50, 60), (33, 33)])
    folder = ImageFolder(root, 16, 3, crop="resize", hflip=False)
    dev = DeviceImages(folder)
    assert dev.images.shape == (6, 3, 16, 16) and dev.images.dtype == torch.uint8
    for i, f in enumerate(folder.files):
        pil = transform_same([Image.open(f).convert("RGB")], 16, "resize", hflip=False, vflip=False, rng=None)[0]
        assert torch.equal(dev[i]["image"], to_tensor(pil))


def test_random_windows_cover_the_image_and_flips_are_fair(tmp_path):
    dev = DeviceImages(ImageFolder(make_folder(tmp_path / "f"), 16, 3, crop="random", hflip=True))
    g = torch.Generator().manual_seed(0)
    batch = dev.batch(torch.zeros(4000, dtype=torch.long), generator=g)["image"]
    # which window was cut: find each output in the (unflipped or flipped) image by its first row
    img = dev.images[0].float() / 255
    tops = set()
    for x in batch[:300]:
        for cand in (x, x.flip(-1)):
            hits = [(t, left) for t in range(40 - 15) for left in range(48 - 15)
                    if torch.equal(img[:, t:t + 16, left:left + 16], cand)]
            tops.update(t for t, _ in hits)
    assert min(tops) == 0 and max(tops) == 40 - 16
    flipped = sum(not any(torch.equal(img[:, t:t + 16, left:left + 16], x) for t in range(25) for left in range(33))
                  for x in batch[:200])
    assert 70 < flipped < 130  # about half


def test_unsuitable_folders_keep_the_pil_path_with_one_line(tmp_path, capsys):
    root = make_folder(tmp_path / "f", sizes=[(40, 30), (50, 60)])
    dm = ImageDataModule(root=str(root), image_size=16, channels=3, crop="random", on_device=True, num_workers=0)
    dm.setup()
    assert isinstance(dm.train_set, ImageFolder)
    assert "data.on_device: the images have 2 different sizes" in capsys.readouterr().out
    Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 100).save(root / "deep.png")  # 16-bit
    dm = ImageDataModule(root=str(root), image_size=16, channels=1, crop="resize", on_device=True, num_workers=0)
    dm.setup()
    assert isinstance(dm.train_set, ImageFolder) and "not 8-bit" in capsys.readouterr().out


def test_training_on_device_data(tmp_path, capsys):
    root = make_folder(tmp_path / "f", n=10, mode="L")
    dm = ImageDataModule(root=str(root), image_size=16, channels=1, batch_size=4, vflip=True, on_device=True)
    model = PixelDiffusion(image_size=16, channels=1, dim=8, dim_mults=[1, 2], timesteps=100)
    seen = []

    class Look(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch)

    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False, callbacks=[Look()])
    trainer.fit(model, datamodule=dm)
    assert "data.on_device: 10 images decoded once" in capsys.readouterr().out
    assert len(seen) == 3 and all(b["image"].shape == (4, 1, 16, 16) for b in seen)
    x = torch.cat([b["image"] for b in seen])
    assert x.min() >= 0 and x.max() <= 1 and x.std() > 0.2  # uniform noise images
    assert trainer.callback_metrics == {} or all(torch.isfinite(v) for v in trainer.callback_metrics.values())


def test_cached_latents_are_gathered_by_index_with_a_flip_variant_each():
    from dff.data.latents import LatentDataset

    z = torch.randn(5, 2, 4, 2, 2)  # 5 items, 2 flip variants
    ds = LatentDataset({"latent": z, "label": torch.arange(5)})
    torch.manual_seed(0)
    index = torch.tensor([3, 3, 1, 0] * 50)
    out = ds.batch(index)
    assert out["latent"].shape == (200, 4, 2, 2) and torch.equal(out["label"], index)
    variants = [next(v for v in range(2) if torch.equal(x, z[i, v])) for x, i in zip(out["latent"], index.tolist())]
    assert 60 < sum(variants) < 140  # both flips drawn, about half each
    assert len(ds.indices()) == 5 and ds.indices()[7 % 5] == {"index": 2}


def test_small_sets_on_the_device_make_long_epochs_of_fresh_permutations(tmp_path):
    from dff.data.datamodule import EPOCH_STEPS

    dm = ImageDataModule(root=str(make_folder(tmp_path / "f", n=10)), image_size=16, channels=3, batch_size=4,
                         on_device=True)
    dm.setup()
    loader = dm.train_dataloader()
    assert len(loader) == EPOCH_STEPS  # not 10 // 4 = 2 steps
    order = torch.cat([b["index"] for b in loader])
    for start in range(0, 40, 10):  # each run of 10 indices is a permutation of the set
        assert sorted(order[start:start + 10].tolist()) == list(range(10))


def test_a_folder_too_large_for_the_device_is_judged_before_decoding(tmp_path, capsys, monkeypatch):
    import dff.data.device

    dm = ImageDataModule(root=str(make_folder(tmp_path / "f")), image_size=16, channels=3, device_max_gb=1e-6)
    monkeypatch.setattr(dff.data.device, "decode", lambda *a, **k: pytest.fail("decoded before the size check"))
    dm.trainer = type("T", (), {"strategy": type("S", (), {"root_device": torch.device("cuda")})(),
                                "log_dir": None, "default_root_dir": str(tmp_path)})()  # a GPU run, on_device=None
    dm.setup()
    assert isinstance(dm.train_set, ImageFolder) and "would decode to about" in capsys.readouterr().out
