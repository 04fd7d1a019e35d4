"""Arrays and multiband data: reading, per-channel ranges, training, and samples back in the data's units."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from dff.cli import main
from dff.data.arrays import (
    ArrayFolder, DataRange, dtype_range, measure_range, percentile_range, read_array, select_bands, write_array,
)
from dff.data.check import check_folder, report
from dff.data.datamodule import ImageDataModule
from dff.pretrained import load_pretrained

TINY = ["--model.dim", "8", "--model.dim_mults", "[1, 2]", "--model.timesteps", "50", "--model.ema_decay", "0.9",
        "--data.image_size", "16", "--data.batch_size", "4", "--data.num_workers", "0",
        "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "0", "--trainer.max_steps", "6"]


def multiband_tiles(root: Path, n: int = 6, bands: int = 13, size: int = 20, seed: int = 0) -> np.ndarray:
    """n 13-band uint16 tiles with 12-bit values, band b around 1000 + 200 b, written as planar TIFFs (C, H, W)
    as GDAL writes them; returns the stack (n, C, H, W)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    tiles = []
    for i in range(n):
        wave = np.sin(xx / 3 + i) * np.cos(yy / 4 - i)
        t = np.stack([1000 + 200 * b + 600 * wave + rng.normal(0, 20, (size, size)) for b in range(bands)])
        t = t.clip(0, 4095).astype(np.uint16)
        tifffile.imwrite(root / f"tile_{i:02d}.tif", t, photometric="minisblack", planarconfig="separate")
        tiles.append(t)
    return np.stack(tiles)


# ---------------------------------------------------------------------- reading
def test_arrays_are_read_as_height_width_bands_whatever_their_layout(tmp_path):
    a = np.random.default_rng(0).random((12, 10, 5)).astype(np.float32)  # (H, W, C)
    np.save(tmp_path / "hwc.npy", a)
    np.save(tmp_path / "chw.npy", a.transpose(2, 0, 1))
    np.savez(tmp_path / "one.npz", image=a, other=np.zeros(3))
    tifffile.imwrite(tmp_path / "planar.tif", a.transpose(2, 0, 1), photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "gray.tif", a[:, :, 0])
    for name in ("hwc.npy", "chw.npy", "one.npz", "planar.tif"):
        np.testing.assert_array_equal(read_array(tmp_path / name), a, err_msg=name)
    assert read_array(tmp_path / "gray.tif").shape == (12, 10, 1)
    np.save(tmp_path / "cube.npy", np.zeros((8, 8, 8)))
    with pytest.raises(ValueError, match=r"cube.npy: cannot tell which axis of shape \(8, 8, 8\) holds the bands"):
        read_array(tmp_path / "cube.npy")
    np.savez(tmp_path / "two.npz", a=a, b=a)
    with pytest.raises(ValueError, match=r"two.npz: holds arrays \['a', 'b'\]"):
        read_array(tmp_path / "two.npz")
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy: holds Python objects"):  # no pickles: no data file runs code
        read_array(tmp_path / "obj.npy")
    assert select_bands(a, [5, 1], "x").tolist() == a[:, :, [4, 0]].tolist()
    with pytest.raises(ValueError, match="asks for band 6, but the file has 5 band"):
        select_bands(a, [6], "x")


def test_sixteen_bit_rgb_keeps_its_precision(tmp_path):
    """A 16-bit RGB TIFF is read at full precision (PIL would round it to 8 bits)."""
    a = (np.arange(16 * 16 * 3).reshape(16, 16, 3) * 37 % 65536).astype(np.uint16)
    (tmp_path / "rgb").mkdir()
    tifffile.imwrite(tmp_path / "rgb" / "x.tif", a, photometric="rgb")
    dm = ImageDataModule("folder", str(tmp_path / "rgb"), image_size=16, channels=3, crop="center", hflip=False)
    assert dm.reads_arrays and dm.data_range["dtype"] == "uint16"
    dm.setup()
    x = dm.train_set[0]["image"]  # (3, 16, 16) in [0, 1]
    torch.testing.assert_close(x, torch.from_numpy(a.transpose(2, 0, 1) / 65535.0).float())
    assert len(torch.unique(x)) > 256  # more levels than 8 bits hold


# ---------------------------------------------------------------------- ranges
def test_percentiles_match_the_closed_form(tmp_path):
    """Values 0..1000 once each: numpy's linear-interpolated q-th percentile is 10 q exactly; a second band
    2 v + 5 has 2 (10 q) + 5."""
    v = np.arange(1001, dtype=np.float64).reshape(7, 143)
    np.save(tmp_path / "a.npy", np.stack([v, 2 * v + 5], -1))
    lo, hi = percentile_range([tmp_path / "a.npy"], q=(0.1, 99.9))
    np.testing.assert_allclose(lo, [1.0, 7.0]) and np.testing.assert_allclose(hi, [999.0, 2003.0])
    lo, hi = percentile_range([tmp_path / "a.npy"], bands=[2], q=(25, 75))
    np.testing.assert_allclose(lo, [505.0]) and np.testing.assert_allclose(hi, [1505.0])


def test_data_range_maps_to_the_unit_interval_and_back():
    r = DataRange((100.0, -1.0), (4095.0, 1.0), "uint16")
    a = torch.tensor([[[100.0, 4095.0]], [[-1.0, 0.0]]])  # (C=2, 1, 2)
    x = r.to_unit(a)
    torch.testing.assert_close(x, torch.tensor([[[0.0, 1.0]], [[0.0, 0.5]]]))
    np.testing.assert_array_equal(r.to_numpy(torch.tensor([[[0.5]], [[0.25]]])), [[[2098]], [[0]]])  # rounded, in range
    assert dtype_range(np.uint16) == (0.0, 65535.0) and dtype_range(np.int16) == (-32768.0, 32767.0)
    with pytest.raises(ValueError, match="channel 1: low 5.0 must be below high 5.0"):
        DataRange((5.0,), (5.0,))


def test_value_range_overrides_and_bad_ones_are_named(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((8, 8, 2), np.uint16))
    files = [tmp_path / "a.npy"]
    assert measure_range(files, 2).high == (65535.0, 65535.0)
    assert measure_range(files, 2, value_range=[0, 4095]).high == (4095.0, 4095.0)
    assert measure_range(files, 2, value_range=[[0, 10], [100, 20]]).low == (0.0, 10.0)
    with pytest.raises(ValueError, match=r"data.value_range: 1 low and 2 high value\(s\) for 2 channel"):
        measure_range(files, 2, value_range=[[0], [1, 2]])
    with pytest.raises(ValueError, match="2 band"):
        measure_range(files, 3)


def test_bad_array_files_are_named_by_the_check_and_by_training(tmp_path):
    root = tmp_path / "arr"
    multiband_tiles(root, n=3, bands=4)
    (root / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    np.save(root / "nan.npy", np.full((20, 20, 4), np.nan, np.float32))
    np.save(root / "three.npy", np.zeros((20, 20, 3), np.uint16))
    text, stops = report(check_folder(root, image_size=16))
    assert stops and "broken.tif" in text and "nan.npy: 1600 NaN or infinite values" in text
    assert "4 file(s) of 4 band(s)" not in text and "band counts differ" in text
    with pytest.raises(ValueError, match=r"(?s)3 image file\(s\) could not .* or do not hold the bands asked for"
                                         r".*broken.tif"):
        ArrayFolder(root, 16, 4, data_range=DataRange((0.0,) * 4, (1.0,) * 4))
    ds = ArrayFolder(root, 16, 4, data_range=DataRange((0.0,) * 4, (1.0,) * 4), on_bad_file="skip")
    assert len(ds) == 3 and {p.name for p, _ in ds.skipped} == {"broken.tif", "nan.npy", "three.npy"}
    assert any("3 band(s), expected data.channels=4" in why for _, why in ds.skipped)


# ---------------------------------------------------------------------- fit -> sample -> back in the data's units
def test_a_13_band_uint16_set_trains_and_samples_come_back_in_its_units(tmp_path, capsys):
    tiles = multiband_tiles(tmp_path / "tiles")
    text, stops = report(check_folder(tmp_path / "tiles", image_size=16))
    assert not stops and "6 file(s) of 13 band(s); dtype uint16 (6)" in text and "narrow range" in text
    main(["fit", "--data.dataset", "folder", "--data.root", str(tmp_path / "tiles"), "--data.channels", "13",
          "--data.normalize", "percentile", "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY])
    model = load_pretrained(tmp_path / "runs")
    r = model.units
    assert r.channels == 13 and r.dtype == "uint16" and r.format == "tif"
    data_lo, data_hi = tiles.min(axis=(0, 2, 3)), tiles.max(axis=(0, 2, 3))
    assert np.all(np.array(r.low) >= data_lo) and np.all(np.array(r.high) <= data_hi)  # inner percentiles
    main(["sample", str(tmp_path / "runs"), "--num", "3", "--steps", "4", "--out", str(tmp_path / "s"),
          "--preview-bands", "4,3,2", "--no-progress"])
    s = np.stack([tifffile.imread(tmp_path / "s" / f"sample_{i:04d}.tif") for i in range(3)])  # (3, 13, 16, 16)
    assert s.dtype == np.uint16 and s.shape == (3, 13, 16, 16)
    # every band lies in its own range in the data's units: the inverse of the per-band normalisation (without
    # it, values would lie in [0, 1] or in one range for all bands, and band 13 (around 3400) never reaches 1900)
    for b in range(13):
        assert r.low[b] - 1 <= s[:, b].min() and s[:, b].max() <= r.high[b] + 1, b
    assert s[:, 12].mean() > s[:, 0].max()
    assert (tmp_path / "s" / "grid.png").exists() and (tmp_path / "s" / "sample_0000.png").exists()
    with pytest.raises(SystemExit, match="preview band 14: the images have 13 band"):
        main(["sample", str(tmp_path / "runs"), "--num", "1", "--steps", "2", "--out", str(tmp_path / "s2"),
              "--preview-bands", "14,3,2", "--no-progress"])
    # FID/KID against the array folder, through an extractor for 13 channels; the built-in ones say what to do
    (tmp_path / "bands13.py").write_text(
        "import torch, torch.nn as nn\n"
        "def make(weights=None):\n"
        "    torch.manual_seed(0)\n"
        "    m = nn.Sequential(nn.Conv2d(13, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "    m.input_channels, m.input_size = 13, (16, 16)\n"
        "    return m\n")
    capsys.readouterr()
    main(["eval", str(tmp_path / "runs"), "--data", str(tmp_path / "tiles"), "--num", "8", "--steps", "3",
          "--extractor", f"{tmp_path / 'bands13.py'}:make"])
    printed = capsys.readouterr().out
    assert "fid" in printed and "n_reference        6" in printed
    with pytest.raises(SystemExit, match="cannot convert 13-channel images .* use your own extractor"):
        main(["eval", str(tmp_path / "runs"), "--data", str(tmp_path / "tiles"), "--num", "4", "--steps", "2"])


def test_an_npy_set_trains_with_a_band_subset_and_samples_as_npy(tmp_path):
    root = tmp_path / "npy"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):  # float32 fields in [-3, 3] with 5 bands; train on bands 5 and 2
        np.save(root / f"f{i}.npy", rng.uniform(-3, 3, (18, 18, 5)).astype(np.float32))
    main(["fit", "--data.dataset", "folder", "--data.root", str(root), "--data.channels", "2", "--data.bands", "[5, 2]",
          "--data.value_range", "[-3, 3]", "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY])
    model = load_pretrained(tmp_path / "runs")
    assert model.units.low == (-3.0, -3.0) and model.units.format == "npy" and model.units.dtype == "float32"
    main(["sample", str(tmp_path / "runs"), "--num", "2", "--steps", "3", "--out", str(tmp_path / "s"),
          "--no-progress"])
    s = np.load(tmp_path / "s" / "sample_0000.npy")
    assert s.shape == (16, 16, 2) and s.dtype == np.float32
    assert s.min() >= -3 and s.max() <= 3 and (s < 0).any()  # in the data's units, not [0, 1]


def test_written_arrays_read_back(tmp_path):
    r = DataRange((0.0,) * 13, (65535.0,) * 13, "uint16", "tif")
    x = torch.rand(13, 8, 8)
    p = write_array(x, tmp_path / "a.b", r)  # a dot in the name is kept
    assert p.name == "a.b.tif"
    np.testing.assert_array_equal(read_array(p).transpose(2, 0, 1), r.to_numpy(x))


def test_super_resolution_of_multiband_tiles_translates_and_scores_per_band(tmp_path, capsys):
    """sr2 on 13-band tiles: dff translate reads low-resolution array files and writes .tif outputs in the data's
    units (with PNG previews); dff eval scores PSNR/SSIM overall and per band."""
    tiles = multiband_tiles(tmp_path / "tiles", n=4)
    main(["fit", "--data.dataset", "folder", "--data.root", str(tmp_path / "tiles"), "--data.channels", "13",
          "--data.pairs", "sr2", "--data.value_range", "[0, 4095]", "--trainer.default_root_dir",
          str(tmp_path / "runs"), "--trainer.check_val_every_n_epoch", "100", *TINY])
    (tmp_path / "low").mkdir()
    low = tiles[0, :, ::2, ::2][:, :8, :8]  # (13, 8, 8), the low-resolution input
    tifffile.imwrite(tmp_path / "low" / "in.put.tif", low, photometric="minisblack", planarconfig="separate")
    main(["translate", str(tmp_path / "runs"), "--input", str(tmp_path / "low"), "--out", str(tmp_path / "out"),
          "--steps", "3", "--no-progress"])
    out = tifffile.imread(tmp_path / "out" / "in.put.tif")
    assert out.shape == (13, 16, 16) and out.dtype == np.uint16 and (tmp_path / "out" / "in.put.png").exists()
    assert 255 < out.max() <= 4095  # in the data's units (by value_range), not [0, 1] nor 8 bits
    capsys.readouterr()
    main(["eval", str(tmp_path / "runs"), "--data", str(tmp_path / "tiles"), "--steps", "3"])
    printed = capsys.readouterr().out
    assert "psnr_band_13" in printed and "ssim_band_1 " in printed and "psnr_bicubic" in printed


def test_a_stray_array_in_a_folder_of_images_changes_nothing(tmp_path):
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "a.png")
    np.save(root / "notes.npy", np.zeros(3))
    assert not ImageDataModule("folder", str(root), image_size=16).reads_arrays
    (root / "a.png").unlink()
    assert ImageDataModule("folder", str(root), image_size=16).reads_arrays  # arrays alone: read as arrays
    assert not ImageDataModule("folder", str(root), image_size=16, reader="image").reads_arrays


def sar_optical_pairs(root: Path, n: int = 4, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of a 2-band float32 'SAR' condition in dB (A/*.npy, half the size) and a 4-band 12-bit uint16 'optical'
    target (B/*.tif, planar), the bands in different ranges; returns (conditions, targets) as (n, C, H, W)."""
    rng = np.random.default_rng(3)
    (root / "A").mkdir(parents=True), (root / "B").mkdir()
    yy, xx = np.mgrid[0:size, 0:size]
    conds, targets = [], []
    for i in range(n):
        field = np.sin(xx / 3 + i) * np.cos(yy / 4 - i)  # (H, W) in [-1, 1]
        t = np.stack([500 + 700 * b + 300 * field + rng.normal(0, 10, field.shape) for b in range(4)])
        t = t.clip(0, 4095).astype(np.uint16)
        c = np.stack([-15 + 8 * field, -22 + 5 * field])[:, ::2, ::2].astype(np.float32)  # (2, H/2, W/2) in dB
        np.save(root / "A" / f"scene_{i}.npy", c.transpose(1, 2, 0))
        tifffile.imwrite(root / "B" / f"scene_{i}.tif", t, photometric="minisblack", planarconfig="separate")
        conds.append(c), targets.append(t)
    return np.stack(conds), np.stack(targets)


def test_pairs_of_array_files_train_translate_and_score_each_side_in_its_own_units(tmp_path, capsys):
    """SAR (2 float bands, in dB, half size) -> optical (4 uint16 bands): each side has its own range, stored with
    the model; dff translate reads a SAR file by the condition's range and writes optical values in the target's."""
    conds, targets = sar_optical_pairs(tmp_path / "pairs")
    main(["fit", "--data.dataset", "folder", "--data.root", str(tmp_path / "pairs"), "--data.pairs", "folders",
          "--data.channels", "4", "--data.cond_image_channels", "2", "--data.normalize", "percentile",
          "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.check_val_every_n_epoch", "100", *TINY])
    model = load_pretrained(tmp_path / "runs")
    c, r = model.cond_units, model.units
    assert (c.channels, c.dtype, c.format) == (2, "float32", "npy") and (r.channels, r.dtype) == (4, "uint16")
    assert -23.5 < c.low[0] < -21 and -27 < c.low[1] < -25 and -8 < c.high[0] < -6.5  # dB, measured from A/
    for b in range(4):  # each band from B/: about 500 + 700 b +- 300
        assert 150 + 700 * b < r.low[b] < 250 + 700 * b and 750 + 700 * b < r.high[b] < 850 + 700 * b, b
    (tmp_path / "sar").mkdir()
    np.save(tmp_path / "sar" / "new.npy", conds[1].transpose(1, 2, 0))  # (8, 8, 2)
    main(["translate", str(tmp_path / "runs"), "--input", str(tmp_path / "sar"), "--out", str(tmp_path / "out"),
          "--steps", "3", "--no-progress"])
    out = tifffile.imread(tmp_path / "out" / "new.tif")
    assert out.shape == (4, 8, 8) and out.dtype == np.uint16 and (tmp_path / "out" / "new.png").exists()
    for b in range(4):  # every band in its own range in the target's units (not [0, 1], not the condition's dB)
        assert r.low[b] - 1 <= out[b].min() and out[b].max() <= r.high[b] + 1, b
    capsys.readouterr()
    main(["eval", str(tmp_path / "runs"), "--data", str(tmp_path / "pairs"), "--layout", "folders", "--steps", "3"])
    printed = capsys.readouterr().out
    assert "psnr_band_4" in printed and "ssim " in printed


def test_array_pairs_map_each_side_by_its_range_and_refuse_what_they_cannot_read(tmp_path):
    from dff.data.paired import ArrayPairs

    conds, targets = sar_optical_pairs(tmp_path / "pairs", n=2)

    def pairs_dm(**kw):
        return ImageDataModule("folder", str(tmp_path / "pairs"), image_size=16, **kw)

    dm = pairs_dm(pairs="folders", channels=4, cond_image_channels=2,
                  normalize="percentile", value_range=[0, 4095], crop="center", hflip=False)
    assert dm.reads_arrays and dm.cond_data_range["dtype"] == "float32" and dm.data_range["high"] == [4095.0] * 4
    dm.setup()
    assert isinstance(dm.train_set, ArrayPairs)
    item = dm.train_set[0]
    lo, hi = np.array(dm.cond_data_range["low"]), np.array(dm.cond_data_range["high"])
    torch.testing.assert_close(item["image"], torch.from_numpy(targets[0] / 4095.0).float())
    assert item["cond"].shape == (2, 16, 16)  # resized from 8x8 to the target's size
    # the condition's own range: the values around its mean map to about its mean in [0, 1]
    mean_unit = (conds[0].mean(axis=(1, 2)) - lo) / (hi - lo)
    torch.testing.assert_close(item["cond"].mean((1, 2)).double(), torch.from_numpy(mean_unit), atol=0.03, rtol=0)
    # BtoA swaps the sides: the 4-band files become the condition
    swapped = pairs_dm(pairs="folders", channels=2, cond_image_channels=4, normalize="percentile",
                       direction="BtoA", crop="center", hflip=False, reader="array")
    assert swapped.cond_data_range["dtype"] == "uint16" and swapped.data_range["dtype"] == "float32"
    # floats outside [0, 1] are not clipped to nothing by the default normalize: dtype
    with pytest.raises(ValueError, match="scene_0.npy: float values in .* would clip them: set data.normalize"):
        pairs_dm(pairs="folders", channels=4, cond_image_channels=2, value_range=[0, 4095]).cond_data_range
    np.save(tmp_path / "pairs" / "A" / "orphan.npy", conds[0].transpose(1, 2, 0))
    with pytest.raises(ValueError, match="orphan.npy has no partner"):
        pairs_dm(pairs="folders", channels=4, cond_image_channels=2,
                 reader="array").data_range
    (tmp_path / "pairs" / "A" / "orphan.npy").unlink()
    (tmp_path / "pairs" / "B" / "scene_1.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="scene_1.tif"):
        pairs_dm(pairs="folders", channels=4, cond_image_channels=2, normalize="percentile",
                 value_range=[0, 4095]).setup()
    with pytest.raises(ValueError, match="pairs of array files are read from data.pairs: folders"):
        pairs_dm(pairs="side_by_side", channels=4, reader="array").data_range
    with pytest.raises(ValueError, match=r"data.cond_bands \[1\] picks 1 band\(s\), but the condition has 2"):
        pairs_dm(pairs="folders", channels=4, cond_image_channels=2,
                 cond_bands=[1])


def test_latent_diffusion_on_13_bands_samples_in_the_data_units_and_its_cache_knows_the_range(tmp_path):
    """A 13-channel autoencoder trained by dff, then latent diffusion in its space: samples come back as uint16
    TIFFs in each band's range; a latent cache made under another data range is refused, not reused."""
    multiband_tiles(tmp_path / "tiles", n=6)
    data = ["--data.dataset", "folder", "--data.root", str(tmp_path / "tiles"), "--data.channels", "13",
            "--data.image_size", "16", "--data.normalize", "percentile", "--data.repeat", "1",
            "--data.num_workers", "0", "--trainer.enable_progress_bar", "false"]
    main(["fit", "--config", "configs/autoencoder_demo.yaml", *data, "--trainer.max_steps", "2",
          "--trainer.check_val_every_n_epoch", "100", "--trainer.default_root_dir", str(tmp_path / "ae")])
    latent = ["fit", "--config", "configs/latent_demo.yaml", "--model.autoencoder", str(tmp_path / "ae"),
              *data, "--data.batch_size", "4", "--data.latent_cache", str(tmp_path / "latents.pt"),
              "--model.latent_scale_samples", "6", "--trainer.max_steps", "2",
              "--trainer.default_root_dir", str(tmp_path / "diffusion")]
    main(latent)
    model = load_pretrained(tmp_path / "diffusion")
    assert model.is_latent and model.units.channels == 13 and model.units.dtype == "uint16"
    main(["sample", str(tmp_path / "diffusion"), "--num", "2", "--steps", "3", "--out", str(tmp_path / "s"),
          "--no-progress"])
    s = tifffile.imread(tmp_path / "s" / "sample_0000.tif")
    assert s.shape == (13, 16, 16) and s.dtype == np.uint16
    r = model.units
    for b in range(13):
        assert r.low[b] - 1 <= s[b].min() and s[b].max() <= r.high[b] + 1, b
    assert s[12].mean() > s[0].mean() + 1000  # band 13 (about 3400) above band 1 (about 1000): the per-band inverse
    with pytest.raises(SystemExit, match="latents.pt was made with data_range="):
        main([*latent, "--data.normalize", "dtype", "--data.value_range", "[0, 4095]"])
