"""Image folders and the built-in digits: what loads, and the messages for what does not."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_images
from dff.data import ImageDataModule, ImageFolder, load_digits_tensor


def test_folder_loads_recursively_all_formats(tmp_path):
    root = tmp_path / "imgs"
    for ext in ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"):
        write_images(root / ext, 1, 10, ext)
    (root / "notes.txt").write_text("not an image")
    ds = ImageFolder(root, 8, channels=3)
    assert len(ds) == 7
    x = ds[0]["image"]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_folder_converts_channels(image_folder, channels):
    assert ImageFolder(image_folder, 8, channels)[0]["image"].shape == (channels, 8, 8)


def test_grayscale_values_are_kept(tmp_path):
    (tmp_path / "g").mkdir()
    a = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # (16, 16) ramp
    Image.fromarray(a, "L").save(tmp_path / "g" / "ramp.png")
    x = ImageFolder(tmp_path / "g", 16, 1, crop="center", hflip=False)[0]["image"]
    assert torch.allclose(x[0], torch.from_numpy(a).float() / 255)


def test_resize_keeps_whole_image(tmp_path):
    (tmp_path / "r").mkdir()
    a = np.zeros((40, 20, 3), np.uint8)
    a[:, :10] = 255  # left half white
    Image.fromarray(a).save(tmp_path / "r" / "half.png")
    x = ImageFolder(tmp_path / "r", 10, 3, crop="resize", hflip=False)[0]["image"]
    assert x.shape == (3, 10, 10) and x[:, :, :4].mean() > 0.95 and x[:, :, 6:].mean() < 0.05


def test_random_crop_is_a_window_inside_the_image(tmp_path):
    """Every random crop equals the image at some offset inside it (PIL would pad a box reaching
    outside with black, which this image never holds), and the offsets vary."""
    (tmp_path / "r").mkdir()
    rows, cols = np.meshgrid(np.arange(40), np.arange(20), indexing="ij")
    # a: (40, 20, 3), unique pixels
    a = np.stack([5 + 6 * rows, 5 + 12 * cols, np.full_like(rows, 200)], -1).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "r" / "ramp.png")
    crops = ImageFolder(tmp_path / "r", 10, 3, crop="random", hflip=False, seed=0)
    offsets = set()
    for _ in range(20):
        x = (crops[0]["image"] * 255).round().byte().permute(1, 2, 0).numpy()  # (10, 10, 3)
        top, left = (int(x[0, 0, 0]) - 5) // 6, (int(x[0, 0, 1]) - 5) // 12
        assert 0 <= top <= 30 and 0 <= left <= 10, (top, left)
        assert np.array_equal(x, a[top:top + 10, left:left + 10])
        offsets.add((top, left))
    assert len(offsets) > 5


def test_flip_is_applied_sometimes(tmp_path):
    (tmp_path / "f").mkdir()
    a = np.zeros((8, 8), np.uint8)
    a[:, 0] = 255
    Image.fromarray(a, "L").save(tmp_path / "f" / "edge.png")
    ds = ImageFolder(tmp_path / "f", 8, 1, crop="center", hflip=True, seed=0)
    lefts = {bool(ds[0]["image"][0, :, 0].mean() > 0.5) for _ in range(30)}
    assert lefts == {True, False}


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder .*nope.* does not exist"):
        ImageFolder(tmp_path / "nope", 8)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        ImageFolder(tmp_path / "empty", 8)


def test_folder_without_supported_images(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    (tmp_path / "docs" / "b.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match=r"holds 2 files but no supported images: expected files ending in \.png"):
        ImageFolder(tmp_path / "docs", 8)


def test_corrupt_and_truncated_images_are_named(image_folder):
    (image_folder / "garbage.png").write_bytes(b"this is not a png")
    good = next(image_folder.glob("*.png"))
    data = good.read_bytes()
    (image_folder / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        ImageFolder(image_folder, 8)
    msg = str(e.value)
    assert "2 image file(s) could not be decoded" in msg and "garbage.png" in msg and "truncated.png" in msg
    assert "training stops rather than skip" in msg


def test_image_smaller_than_training_size(image_folder):
    with pytest.raises(ValueError, match=r"(?s)smaller than the training size 16x16.*img_00.png: 12x12"):
        ImageFolder(image_folder, 16, crop="random")
    with pytest.warns(UserWarning, match="upscaled"):
        ds = ImageFolder(image_folder, 16, crop="resize")
    assert ds[0]["image"].shape == (3, 16, 16)


def test_digits():
    x, y = load_digits_tensor(16)
    assert x.shape == (1797, 1, 16, 16) and y.shape == (1797,)
    assert 0 <= x.min() and x.max() <= 1 and set(y.tolist()) == set(range(10))
    x3, _ = load_digits_tensor(32, 3)
    assert x3.shape == (1797, 3, 32, 32) and torch.equal(x3[:, 0], x3[:, 2])


def test_datamodule_batches(image_folder):
    dm = ImageDataModule("folder", str(image_folder), image_size=8, channels=3, batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 8, 8)
    dm = ImageDataModule("digits", image_size=16, channels=1, batch_size=32)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (32, 1, 16, 16)


def test_datamodule_needs_a_root():
    with pytest.raises(ValueError, match="data.root is required"):
        ImageDataModule("folder", None)


def test_bad_files_can_be_skipped_and_are_listed(tmp_path, image_folder):
    from dff.cli import fit

    (image_folder / "garbage.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image_folder / "tiny.png")  # 4x4 < 8
    with pytest.raises(ValueError, match="could not be decoded"):
        ImageFolder(image_folder, 8)  # the default stops, naming the file
    ds = ImageFolder(image_folder, 8, on_bad_file="skip")
    assert sorted(p.name for p, _ in ds.skipped) == ["garbage.png", "tiny.png"] and len(ds) == 6
    assert all(ds[i]["image"].shape == (3, 8, 8) for i in range(len(ds)))
    cli = fit(["--data.root", str(image_folder), "--data.image_size", "8", "--data.on_bad_file", "skip",
               "--data.num_workers", "0", "--model.dim", "8", "--model.dim_mults", "[1, 2]", "--model.timesteps", "50",
               "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(tmp_path / "run"), "--samples.every_n_steps", "0"])
    listed = (Path(cli.trainer.log_dir) / "skipped_files.txt").read_text().splitlines()
    assert cli.trainer.global_step == 2
    assert sorted(Path(line.split("\t")[0]).name for line in listed) == ["garbage.png", "tiny.png"]


def test_skipping_needs_something_left(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="all 1 image file"):
        ImageFolder(tmp_path / "bad", 8, on_bad_file="skip")
