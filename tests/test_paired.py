"""Image-to-image: paired data layouts and their alignment, task conditions, the conditional model,
`dff translate`, `dff eval`, metrics, and the bad inputs of the issue."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dff.cli import fit, main
from dff.data.builtin import PhotoPatches
from dff.data.datamodule import ImageDataModule
from dff.data.folder import ImageFolder
from dff.data.paired import PairFolder, TaskDataset
from dff.data.tasks import downsample, grayscale, make_condition, random_box_mask, upsample
from dff.metrics import psnr, ssim, translation_scores
from dff.module import PixelDiffusion, PixelDiffusionConditional

RNG = np.random.default_rng(0)


def rand_rgb(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_folders(root: Path, n: int = 3, size: int = 16, b_of_a=lambda a: a, ext_b: str = "jpg") -> Path:
    (root / "A").mkdir(parents=True), (root / "B").mkdir(parents=True)
    for i in range(n):
        a = rand_rgb(size, size)
        Image.fromarray(a).save(root / "A" / f"p{i}.png")
        Image.fromarray(b_of_a(a)).save(root / "B" / f"p{i}.{ext_b}", **({"quality": 100} if ext_b == "jpg" else {}))
    return root


def write_side_by_side(root: Path, n: int = 3, size: int = 16) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        a, b = rand_rgb(size, size), rand_rgb(size, size)
        a[:, :, 0], b[:, :, 0] = 0, 255  # A has no red, B full red: tells the halves apart
        Image.fromarray(np.concatenate([a, b], axis=1)).save(root / f"{i}.png")
    return root


# ---------------------------------------------------------------------- alignment
def test_identical_pair_stays_identical_under_random_crop_and_flips(tmp_path):
    root = write_folders(tmp_path / "pairs", size=20, ext_b="png")  # B == A, lossless
    ds = PairFolder(root, "folders", image_size=8, crop="random", hflip=True, vflip=True, repeat=20, seed=0)
    crops = set()
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["cond"], item["image"])
        crops.add(item["image"].sum().item())
    assert len(crops) > 10  # the crops really are random


def test_pair_with_known_offset_keeps_it(tmp_path):
    # B is A shifted 3 pixels left: B[:, x] = A[:, x + 3]; crops and vertical flips keep that relation
    shift = 3
    root = write_folders(tmp_path / "pairs", size=24, b_of_a=lambda a: np.roll(a, -shift, axis=1), ext_b="png")
    ds = PairFolder(root, "folders", image_size=12, crop="random", hflip=False, vflip=True, repeat=10, seed=1)
    for i in range(len(ds)):
        item = ds[i]
        a, b = item["cond"], item["image"]
        assert torch.equal(b[..., :-shift], a[..., shift:])


# ---------------------------------------------------------------------- layouts
def test_side_by_side_both_directions(tmp_path):
    root = write_side_by_side(tmp_path / "sbs")
    ab = PairFolder(root, "side_by_side", image_size=16, crop="center", hflip=False)[0]
    ba = PairFolder(root, "side_by_side", image_size=16, crop="center", hflip=False, direction="BtoA")[0]
    assert ab["cond"][0].max() == 0 and ab["image"][0].min() == 1  # cond = A (no red), target = B
    assert torch.equal(ab["cond"], ba["image"]) and torch.equal(ab["image"], ba["cond"])


def test_folders_with_different_extensions_and_channels(tmp_path):
    root = write_folders(tmp_path / "pairs", ext_b="jpg")
    item = PairFolder(root, "folders", image_size=16, channels=3, cond_channels=1, crop="center")[0]
    assert item["cond"].shape == (1, 16, 16) and item["image"].shape == (3, 16, 16)


@pytest.mark.parametrize("task,cond_ch", [("sr2", 3), ("sr4", 3), ("colorize", 1), ("inpaint", 4)])
def test_task_pairs_from_single_images(image_folder, task, cond_ch):
    ds = TaskDataset(ImageFolder(image_folder, 8, 3, crop="random", seed=0), task)
    item = ds[0]
    assert item["cond"].shape == (cond_ch, 8, 8) and item["image"].shape == (3, 8, 8)
    if task == "colorize":
        assert torch.allclose(item["cond"], grayscale(item["image"]))


def test_photos_split_holds_out_the_bottom_quarter():
    train, val = PhotoPatches("train", 32, repeat=2, seed=0), PhotoPatches("val", 32)
    assert [im.size for im in train.photos] == [(640, 320)] * 2 and [im.size for im in val.photos] == [(640, 107)] * 2
    assert len(val) == 2 * 3 * 20  # the non-overlapping 32x32 grid of the held-out strips
    assert train[0]["image"].shape == (3, 32, 32)


def test_datamodule_pairs_give_cond_and_validation(tmp_path):
    dm = ImageDataModule("photos", image_size=16, channels=3, pairs="sr4", repeat=2, batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["cond"].shape == batch["image"].shape == (4, 3, 16, 16)
    v1, v2 = dm.val_set[5]["cond"], dm.val_set[5]["cond"]
    assert torch.equal(v1, v2)  # validation conditions are fixed


# ---------------------------------------------------------------------- task conditions
def test_sr_condition_keeps_low_frequencies():
    x = torch.rand(2, 3, 16, 16)
    lr = downsample(x, 4)
    assert lr.shape == (2, 3, 4, 4)
    # a constant image survives down- and up-scaling exactly
    c = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(make_condition("sr4", c), c, atol=1e-6)
    assert upsample(lr, 4).shape == x.shape


def test_inpaint_condition_blanks_the_mask_and_appends_it():
    import random
    x = torch.rand(3, 16, 16)
    m = random_box_mask(16, random.Random(0))
    c = make_condition("inpaint", x, mask=m)
    assert torch.equal(c[3:], m) and torch.all(c[:3][m.expand(3, -1, -1) == 1] == 0)
    assert torch.equal(c[:3][m.expand(3, -1, -1) == 0], x[m.expand(3, -1, -1) == 0])
    assert 0.0625 <= m.mean() <= 0.25
    xb = torch.rand(2, 3, 16, 16)  # a batch with one shared (1, H, W) mask: each image as on its own
    cb = make_condition("inpaint", xb, mask=m)
    assert cb.shape == (2, 4, 16, 16)
    assert all(torch.equal(cb[i], make_condition("inpaint", xb[i], mask=m)) for i in range(2))


# ---------------------------------------------------------------------- metrics
def test_psnr_ssim_closed_form():
    x = torch.rand(4, 3, 16, 16) * 0.8
    assert torch.isclose(psnr(x + 0.1, x), torch.tensor(20.0), atol=1e-3)  # MSE 0.01 -> 20 dB
    assert torch.isclose(ssim(x, x), torch.tensor(1.0), atol=1e-5)
    assert ssim(x + 0.2 * torch.rand_like(x), x) < 0.99
    s = translation_scores(x, x, upsample(downsample(x, 4), 4), condition="sr4")
    assert set(s) == {"psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "consistency_psnr"}
    assert s["consistency_psnr"] > 100  # the target is consistent with its own low resolution


# ---------------------------------------------------------------------- model
TINY = dict(image_size=8, channels=3, dim=8, dim_mults=[1, 2], timesteps=20, schedule="cosine")


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 5)])
def test_conditional_model_trains_and_samples(sampler, steps):
    torch.manual_seed(0)
    m = PixelDiffusionConditional(cond_channels=1, condition="colorize", **TINY)
    opt = torch.optim.AdamW(m.net.parameters(), 1e-3)
    x = torch.rand(4, 3, 8, 8)
    x0, c = x * 2 - 1, grayscale(x) * 2 - 1
    held_t, held_eps = torch.arange(0, 20, 20 / 64).long(), torch.randn(64, 3, 8, 8)  # fixed draws to score on

    def held_out_loss() -> float:
        with torch.no_grad():
            return m.diffusion.loss(m.net, x0.repeat(16, 1, 1, 1), c.repeat(16, 1, 1, 1), t=held_t, eps=held_eps).item()

    before = held_out_loss()
    for _ in range(30):
        loss = m.diffusion.loss(m.net, x0, c)
        loss.backward(), opt.step(), opt.zero_grad(), m.ema.update(m.net)
    assert held_out_loss() < 0.9 * before  # it trains: the loss on fixed (t, eps) draws goes down
    out = m.sample(sampler=sampler, steps=steps, cond=grayscale(x[:2]), num_samples=3, seed=0, progress=False)
    assert out.shape == (6, 3, 8, 8) and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out[0], out[1])  # several samples per input differ
    again = m.sample(sampler=sampler, steps=steps, cond=grayscale(x[:2]), num_samples=3, seed=0, progress=False)
    assert torch.equal(out, again)
    # a condition of another size is translated at its own size
    assert m.sample(steps=2, cond=torch.rand(1, 1, 16, 8), seed=0, progress=False).shape == (1, 3, 16, 8)


def test_condition_errors():
    m = PixelDiffusionConditional(cond_channels=3, **TINY)
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        m.sample(steps=2, cond=torch.rand(1, 1, 8, 8), progress=False)
    with pytest.raises(ValueError, match="multiples of 2"):
        m.sample(steps=2, cond=torch.rand(1, 3, 9, 8), progress=False)
    with pytest.raises(ValueError, match="pass cond images"):
        m.sample(2, steps=2, progress=False)
    with pytest.raises(ValueError, match="unconditional"):
        PixelDiffusion(**TINY).sample(steps=2, cond=torch.rand(1, 3, 8, 8), progress=False)
    with pytest.raises(ValueError, match="disagree"):
        PixelDiffusion(cond_channels=0, condition="sr4", **TINY)


# ---------------------------------------------------------------------- bad pair data
def test_pair_size_mismatch_is_resized_with_a_warning(tmp_path):
    root = tmp_path / "pairs"
    (root / "A").mkdir(parents=True), (root / "B").mkdir(parents=True)
    Image.fromarray(rand_rgb(8, 8)).save(root / "A" / "x.png")  # low-resolution input
    Image.fromarray(rand_rgb(16, 16)).save(root / "B" / "x.png")
    with pytest.warns(UserWarning, match="1 pair.*different sizes.*resized"):
        ds = PairFolder(root, "folders", image_size=16, crop="center")
    assert ds[0]["cond"].shape == (3, 16, 16)


def test_orphan_file_is_named(tmp_path):
    root = write_folders(tmp_path / "pairs")
    Image.fromarray(rand_rgb(16, 16)).save(root / "A" / "lonely.png")
    with pytest.raises(ValueError, match=r"lonely\.png has no partner in .*B"):
        PairFolder(root, "folders", image_size=16)


def test_odd_width_side_by_side_is_named(tmp_path):
    root = tmp_path / "sbs"
    root.mkdir()
    Image.fromarray(rand_rgb(16, 33)).save(root / "odd.png")
    with pytest.raises(ValueError, match=r"odd width.*\n.*odd\.png: 33x16"):
        PairFolder(root, "side_by_side", image_size=16)


def test_bad_pairs_can_be_skipped_and_are_listed(tmp_path):
    """data.on_bad_file=skip for pairs: a pair with a corrupt file (either side), a side-by-side file of odd
    width or one too small is left out whole and listed; the default still stops, naming the file; a
    folder with nothing left is an error."""
    from dff.train import fit

    root = write_folders(tmp_path / "pairs", n=4)
    (root / "B" / "p1.jpg").write_bytes(b"not a jpeg")  # the target of pair p1
    Image.fromarray(rand_rgb(8, 8)).save(root / "A" / "p2.png")  # A smaller than B: resized, kept
    Image.fromarray(rand_rgb(8, 8)).save(root / "B" / "p3.jpg")  # the target too small to crop 16
    with pytest.raises(ValueError, match=r"could not be decoded.*\n.*p1\.jpg"):
        PairFolder(root, "folders", image_size=16)
    with pytest.warns(UserWarning, match="different sizes"):
        ds = PairFolder(root, "folders", image_size=16, on_bad_file="skip")
    assert sorted(p.name for p, _ in ds.skipped) == ["p1.png", "p3.png"] and len(ds) == 2
    assert all(ds[i]["image"].shape == (3, 16, 16) for i in range(len(ds)))
    sbs = write_side_by_side(tmp_path / "sbs", n=2)
    Image.fromarray(rand_rgb(16, 33)).save(sbs / "odd.png")
    ds = PairFolder(sbs, "side_by_side", image_size=16, on_bad_file="skip")
    assert [p.name for p, _ in ds.skipped] == ["odd.png"] and len(ds) == 2
    with pytest.warns(UserWarning, match="different sizes"):
        cli = fit(["--config", "configs/translate_demo.yaml", "--data.dataset", "folder", "--data.root", str(root),
                   "--data.pairs", "folders", "--data.image_size", "16", "--data.on_bad_file", "skip",
                   "--data.num_workers", "0", "--model.dim", "8", "--model.dim_mults", "[1, 2]",
                   "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "0",
                   "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path / "run")])
    listed = (Path(cli.trainer.log_dir) / "skipped_files.txt").read_text().splitlines()
    assert cli.trainer.global_step == 2
    assert sorted(Path(line.split("\t")[0]).name for line in listed) == ["p1.png", "p3.png"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="all 1 pair"):
        PairFolder(bad, "side_by_side", image_size=16, on_bad_file="skip")


def test_missing_b_folder(tmp_path):
    (tmp_path / "p" / "A").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no B/ subfolder"):
        PairFolder(tmp_path / "p", "folders", image_size=8)


# ---------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def sr_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sr")
    fit(["--data.dataset", "photos", "--data.pairs", "sr2", "--data.image_size", "8", "--data.channels", "3",
         "--data.repeat", "4", "--data.batch_size", "4", "--data.val_batch_size", "8",
         "--model.dim", "8", "--model.dim_mults", "[1, 2]", "--model.timesteps", "20", "--model.schedule", "cosine",
         "--model.val_steps", "2",
         "--trainer.max_steps", "4", "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(root), "--samples.every_n_steps", "2", "--samples.num", "4",
         "--samples.steps", "2", "--checkpoint.every_n_train_steps", "4"])
    return root / "version_0"


def held_out_sr2(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bicubic condition, target) of the first n held-out 8x8 photo patches of the x2 task."""
    ds = TaskDataset(PhotoPatches("val", 8, 3), "sr2", seed=0)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["cond"] for it in items]), torch.stack([it["image"] for it in items])


def test_fit_pairs_logs_validation_and_translation_grids(sr_run):
    import csv
    rows = list(csv.DictReader(open(sr_run / "metrics.csv")))
    vals = [r for r in rows if r.get("val/psnr")]
    assert vals and all(r.get(k) for r in vals for k in ("val/psnr", "val/ssim", "val/consistency_psnr"))
    # the bicubic baseline logged is the one computed here on the same held-out patches (2 batches of 8)
    cond, target = held_out_sr2(16)
    assert float(vals[-1]["val/psnr_bicubic"]) == pytest.approx(float(psnr(cond, target)), rel=1e-5)
    assert float(vals[-1]["val/ssim_bicubic"]) == pytest.approx(float(ssim(cond, target)), rel=1e-4)
    grid = Image.open(sr_run / "samples" / "step_000002.png")
    assert grid.size[0] < grid.size[1]  # 4 rows of [condition | output | target]


def test_translate_writes_one_output_per_input(tmp_path, sr_run):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    Image.fromarray(rand_rgb(4, 4)).save(inputs / "a.png")
    Image.fromarray(rand_rgb(5, 6)).save(inputs / "sub" / "b.jpg")  # odd size: padded, cropped back
    out = tmp_path / "out"
    main(["translate", str(sr_run), "--input", str(inputs), "--out", str(out), "--steps", "2", "--no-progress"])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["a.png", "sub/b.png"]
    assert Image.open(out / "a.png").size == (8, 8) and Image.open(out / "sub" / "b.png").size == (12, 10)  # x2
    with pytest.raises(SystemExit, match="already holds files"):
        main(["translate", str(sr_run), "--input", str(inputs), "--out", str(out), "--steps", "2"])
    out2 = tmp_path / "out2"
    main(["translate", str(sr_run), "--input", str(inputs / "a.png"), "--out", str(out2), "--steps", "2",
          "--num-samples", "2", "--no-progress"])
    assert sorted(p.name for p in out2.iterdir()) == ["a_0.png", "a_1.png"]


def test_translate_average_writes_the_mean_of_the_samples(tmp_path, sr_run):
    Image.fromarray(rand_rgb(4, 4)).save(tmp_path / "a.png")
    main(["translate", str(sr_run), "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "k"), "--steps", "2",
          "--num-samples", "3", "--seed", "5", "--no-progress"])
    main(["translate", str(sr_run), "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "mean"), "--steps",
          "2", "--num-samples", "3", "--seed", "5", "--average", "--no-progress"])
    assert [q.name for q in (tmp_path / "mean").iterdir()] == ["a.png"]
    samples = np.stack([np.asarray(Image.open(tmp_path / "k" / f"a_{k}.png"), np.float64) for k in range(3)])
    mean = np.asarray(Image.open(tmp_path / "mean" / "a.png"), np.float64)
    assert np.abs(mean - samples.mean(0)).max() <= 1.0  # the same samples (same seed), averaged; PNG rounding
    assert np.abs(samples[0] - samples[1]).max() > 1  # the samples do differ


def test_translate_rejects_unconditional_model(tmp_path):
    from dff.pretrained import save_pretrained
    save_pretrained(PixelDiffusion(**TINY), tmp_path / "w")
    Image.fromarray(rand_rgb(8, 8)).save(tmp_path / "x.png")
    with pytest.raises(SystemExit, match="unconditional"):
        main(["translate", str(tmp_path / "w"), "--input", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")])


def test_eval_scores_against_bicubic(tmp_path, sr_run):
    main(["eval", str(sr_run), "--data", "photos", "--num", "8", "--steps", "2", "--json", str(tmp_path / "s.json")])
    import json
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["n"] == 8 and s["condition"] == "sr2" and "consistency_psnr" in s
    cond, target = held_out_sr2(8)
    assert s["psnr_bicubic"] == pytest.approx(float(psnr(cond, target)), rel=1e-5)
    assert s["ssim_bicubic"] == pytest.approx(float(ssim(cond, target)), rel=1e-5)


def test_residual_model_adds_its_output_to_the_condition():
    m = PixelDiffusionConditional(cond_channels=3, condition="sr2", residual=True, prediction="x0", **TINY)
    final = m.ema.model.final[-1]  # the last 1x1 convolution: zero it, so the predicted residual is 0
    torch.nn.init.zeros_(final.weight), torch.nn.init.zeros_(final.bias)
    c = torch.rand(2, 3, 8, 8)
    out = m.sample(cond=c, steps=3, seed=0, progress=False)
    assert torch.allclose(out, c, atol=1e-6)
    with pytest.raises(ValueError, match="residual=True.*3 channels, got cond_channels=1"):
        PixelDiffusionConditional(cond_channels=1, condition="colorize", residual=True, **TINY)
