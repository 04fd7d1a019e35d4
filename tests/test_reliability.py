"""Nothing lost: high-bit-depth images keep their values, and a two-process DDP run finishes and
writes its grids, checkpoint and export (it deadlocked when only rank 0 asked for the run folder)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dff.data import ImageFolder
from dff.data.paired import PairFolder

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- 16-bit and float images
def ramp16(h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    """Random 16-bit values, most of them above 255 (which an 8-bit conversion clips to white)."""
    return np.random.default_rng(seed).integers(0, 65536, (h, w)).astype(np.uint16)


def test_16_bit_grayscale_keeps_full_precision(tmp_path):
    (tmp_path / "d").mkdir()
    a = ramp16()
    Image.fromarray(a).save(tmp_path / "d" / "scan.png")
    assert Image.open(tmp_path / "d" / "scan.png").mode.startswith("I")
    x = ImageFolder(tmp_path / "d", 16, 1, crop="center", hflip=False)[0]["image"]  # (1, 16, 16)
    torch.testing.assert_close(x[0], torch.from_numpy(a.astype(np.float32) / 65535), atol=1e-6, rtol=0)
    assert len(np.unique(x.numpy())) > 200  # far more levels than 8 bits
    # as RGB: 8-bit precision, but scaled, not clipped at 255
    rgb = ImageFolder(tmp_path / "d", 16, 3, crop="center", hflip=False)[0]["image"]
    assert (rgb - x).abs().max() <= 0.5 / 255 + 1e-6 and (rgb >= 0.999).float().mean() < 0.01


def test_16_bit_random_crops_and_resize_keep_the_range(tmp_path):
    (tmp_path / "d").mkdir()
    a = ramp16(40, 30)
    Image.fromarray(a).save(tmp_path / "d" / "big.png")
    crop = ImageFolder(tmp_path / "d", 16, 1, crop="random", hflip=True, vflip=True, seed=0)[0]["image"]
    assert 0 <= crop.min() and crop.max() <= 1 and crop.std() > 0.2  # uniform on [0, 1]: std 0.29
    small = ImageFolder(tmp_path / "d", 8, 1, crop="resize", hflip=False)[0]["image"]
    assert 0 <= small.min() and small.max() <= 1 and abs(small.mean().item() - a.mean() / 65535) < 0.1


def test_float_tiff_is_read_as_its_values(tmp_path):
    (tmp_path / "d").mkdir()
    a = np.random.default_rng(1).random((12, 12)).astype(np.float32)
    a[0, 0], a[0, 1] = -0.5, 1.5  # out of range: clipped
    Image.fromarray(a, "F").save(tmp_path / "d" / "field.tif")
    x = ImageFolder(tmp_path / "d", 12, 1, crop="center", hflip=False)[0]["image"][0]
    torch.testing.assert_close(x, torch.from_numpy(np.clip(a, 0, 1)))


def test_16_bit_pairs(tmp_path):
    root = tmp_path / "pairs"
    (root / "A").mkdir(parents=True), (root / "B").mkdir(parents=True)
    a, b = ramp16(seed=2), ramp16(seed=3)
    Image.fromarray(a).save(root / "A" / "x.png"), Image.fromarray(b).save(root / "B" / "x.png")
    item = PairFolder(root, "folders", image_size=16, channels=1, cond_channels=1, crop="center", hflip=False)[0]
    torch.testing.assert_close(item["cond"][0], torch.from_numpy(a / 65535).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(item["image"][0], torch.from_numpy(b / 65535).float(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- DDP with 2 CPU processes
def test_two_process_ddp_finishes_with_grids_checkpoint_and_export(tmp_path):
    """`dff fit ... --trainer.devices 2 --trainer.strategy ddp` on the CPU (gloo): the sample grids and the
    export run the run-folder collective on both ranks, so the run ends instead of hanging."""
    cmd = [sys.executable, "-m", "dff.cli", "fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"),
           "--model.dim", "8", "--trainer.max_steps", "4", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "2",
           "--samples.num", "4", "--samples.steps", "2", "--trainer.default_root_dir", str(tmp_path / "ddp")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("two-process DDP run did not finish in 240 s (deadlock)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "ddp" / "version_0"
    for f in ("samples/step_000002.png", "samples/step_000004.png", "checkpoints/last.ckpt",
              "export/model.safetensors", "export/config.json"):
        assert (run / f).exists(), f
    assert not (tmp_path / "ddp" / "version_1").exists()  # both ranks wrote into one run folder
    # a 2-process run resumes from its own checkpoint, in its own folder
    proc = subprocess.run([*cmd[:cmd.index("--trainer.max_steps") + 1], "6",
                           *cmd[cmd.index("--trainer.max_steps") + 2:], "--ckpt_path", "last"],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "samples" / "step_000006.png").exists() and (run / "config_resume_1.yaml").exists()
    assert not (tmp_path / "ddp" / "version_1").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


# ---------------------------------------------------------------------- nothing half-written
def test_a_failed_checkpoint_write_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from lightning.fabric.plugins.io import torch_io

    from dff.runs import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dies_halfway(checkpoint, target):  # the process is killed while the bytes go out
        Path(target).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_io, "_atomic_save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint, whole


def test_a_failed_export_leaves_the_previous_export(tmp_path, monkeypatch):
    import dff.pretrained
    from dff.module import PixelDiffusion
    from dff.pretrained import load_pretrained, save_pretrained

    m = PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=(1, 2), timesteps=50)
    save_pretrained(m, tmp_path / "export")
    before = {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir()}

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dff.pretrained, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(m, tmp_path / "export")
    assert {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no .partial left behind
    monkeypatch.undo()
    save_pretrained(m, tmp_path / "export")  # and a later export replaces it whole
    assert load_pretrained(tmp_path / "export") is not None and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_fit_writes_checkpoints_through_the_atomic_io(tmp_path, image_folder):
    from dff.cli import fit
    from dff.runs import AtomicCheckpointIO

    cli = fit(["--data.root", str(image_folder), "--data.image_size", "8", "--data.num_workers", "0",
               "--model.dim", "8", "--model.dim_mults", "[1, 2]", "--model.timesteps", "50",
               "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(tmp_path), "--samples.every_n_steps", "0"])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    ckpts = Path(cli.trainer.log_dir) / "checkpoints"
    assert (ckpts / "last.ckpt").exists() and not list(ckpts.glob("*.partial"))
    # the plugin is not written into config.yaml, so a run's config trains again as it is
    again = fit(["--config", str(Path(cli.trainer.log_dir) / "config.yaml"), "--trainer.max_steps", "1"])
    assert again.trainer.global_step == 1 and isinstance(again.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ---------------------------------------------------------------------- non-finite steps
class NaNAfter(torch.utils.data.Dataset):
    """Batches of one image each; from item `bad_from` on, the images hold NaN (a diverging loss)."""

    def __init__(self, n: int, bad_from: int):
        self.x, self.bad_from = torch.rand(n, 1, 8, 8), bad_from

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        x = self.x[i].clone()
        if i >= self.bad_from:
            x[0, 0, 0] = float("nan")
        return {"image": x}


def fit_on(ds, patience: int, steps: int, root: Path):
    import lightning as L

    from dff.module import DiffusionModule

    torch.manual_seed(0)
    m = DiffusionModule(image_size=8, channels=1, dim=8, dim_mults=[1, 2], timesteps=50, lr=1e-2,
                        nonfinite_patience=patience)
    trainer = L.Trainer(max_steps=steps, log_every_n_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False)
    return m, trainer, loader


def test_non_finite_steps_are_skipped_on_the_device_and_training_stops_after_patience(tmp_path):
    ds = NaNAfter(20, bad_from=5)
    m, trainer, loader = fit_on(ds, patience=4, steps=20, root=tmp_path)
    weights = {}
    m.on_train_batch_start = lambda batch, i: weights.__setitem__(i, [p.detach().clone() for p in m.net.parameters()])
    with pytest.raises(ValueError, match=r"4 optimiser steps in a row had non-finite gradients .*skipped, 4 in all"):
        trainer.fit(m, loader)
    good = weights[5]  # the weights after the 5 good steps
    assert not all(torch.equal(a, b) for a, b in zip(weights[1], weights[5]))  # the good steps did move them
    assert all(torch.isfinite(p).all() for p in m.net.parameters())
    assert all(torch.equal(a, p) for a, p in zip(good, m.net.parameters()))  # every bad step was skipped
    assert all(torch.isfinite(p).all() for p in m.ema.model.parameters())


def test_without_the_guard_a_nan_step_poisons_the_weights(tmp_path):
    m, trainer, loader = fit_on(NaNAfter(8, bad_from=5), patience=0, steps=8, root=tmp_path)
    trainer.fit(m, loader)
    assert not all(torch.isfinite(p).all() for p in m.net.parameters())  # what the guard prevents


def test_an_isolated_bad_step_is_skipped_and_training_goes_on(tmp_path):
    class OneBad(NaNAfter):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {"image": torch.nan_to_num(item["image"]) if i != 3 else item["image"]}

    m, trainer, loader = fit_on(OneBad(10, bad_from=3), patience=2, steps=10, root=tmp_path)
    trainer.fit(m, loader)
    assert trainer.global_step == 10 and int(m.nonfinite_total) == 1 and int(m.nonfinite_run) == 0
    assert all(torch.isfinite(p).all() for p in m.net.parameters())


# ---------------------------------------------------------------------- kill -9 and resume
def test_sigkill_while_training_then_resume_with_ckpt_path_last(tmp_path):
    """A run killed with SIGKILL at some moment (checkpoints every step, so most likely while one is being
    written) resumes with --ckpt_path last from a whole checkpoint, finishes in its own folder, and ends with
    the weights and losses of a run that was never killed (bit for bit on this CPU)."""
    import csv
    import signal
    import time

    args = [sys.executable, "-m", "dff.cli", "fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"),
            "--model.dim", "8", "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "0",
            "--trainer.log_every_n_steps", "1", "--checkpoint.every_n_train_steps", "1",
            "--model.lr_decay", "none"]  # the killed run's max_steps is not the resumed one's: no length-tied decay
    killed = [*args, "--trainer.default_root_dir", str(tmp_path / "runs")]
    proc = subprocess.Popen([*killed, "--trainer.max_steps", "100000"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "runs" / "version_0" / "checkpoints"
    deadline = time.time() + 120
    while not len(list(ckpts.glob("step_*.ckpt"))) >= 3 and time.time() < deadline:  # a few steps in
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpts / "last.ckpt").exists()
    step = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]  # whole: it loads
    done = subprocess.run([*killed, "--trainer.max_steps", str(step + 3), "--ckpt_path", "last"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    end = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert end["global_step"] == step + 3
    assert (tmp_path / "runs" / "version_0" / "export" / "model.safetensors").exists()
    assert not (tmp_path / "runs" / "version_1").exists()
    # the same steps without a kill
    whole = subprocess.run([*args, "--trainer.default_root_dir", str(tmp_path / "whole"), "--trainer.max_steps",
                            str(step + 3)], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert whole.returncode == 0, whole.stderr[-2000:]
    ref = torch.load(tmp_path / "whole" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(end["state_dict"][k], v) for k, v in ref["state_dict"].items())  # network and EMA
    read = lambda run: [(r["step"], r["train/loss"]) for r in csv.DictReader(open(run / "metrics.csv"))  # noqa: E731
                        if r.get("train/loss")]
    resumed, uninterrupted = read(tmp_path / "runs" / "version_0"), dict(read(tmp_path / "whole" / "version_0"))
    assert len(uninterrupted) == step + 3 and [s for s, _ in resumed][-3:] == [str(step + i) for i in range(3)]
    assert all(uninterrupted[s] == loss for s, loss in resumed)  # redone steps too: the same draws


# ---------------------------------------------------------------------- hostile folders (issue 35: 4-7)
def png16(path: Path, a: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (PIL cannot write one): IHDR bit depth 16, colour type 2."""
    import struct
    import zlib

    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_16_bit_colour_png_is_refused_not_rounded(tmp_path):
    from dff.data.check import check_folder, report

    root = tmp_path / "scans"
    root.mkdir()
    for i in range(3):  # differ only below 8 bits: PIL would make them one image
        png16(root / f"s{i}.png", np.full((16, 16, 3), 1000 + i, np.uint16))
    assert len({Image.open(p).tobytes() for p in root.iterdir()}) == 1  # what PIL alone would train on
    with pytest.raises(ValueError, match=r"(?s)3 image file.*s0.png: 16-bit colour PNG, which PIL would round"):
        ImageFolder(root, 16, 3)
    text, stops = report(check_folder(root))
    assert stops and "16-bit colour PNG" in text


def test_symlinked_folders_are_followed_and_a_link_loop_ends(tmp_path):
    from conftest import write_images

    write_images(tmp_path / "elsewhere", 4, 12, "png")
    root = tmp_path / "data"
    write_images(root / "own", 2, 12, "png")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "own" / "loop").symlink_to(root, target_is_directory=True)  # data/own/loop -> data
    ds = ImageFolder(root, 8, 3)
    assert len(ds) == 6 and sum(p.parent.name == "linked" for p in ds.files) == 4
    only = tmp_path / "only_a_link"
    only.mkdir()
    (only / "l").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert len(ImageFolder(only, 8, 3)) == 4  # not "empty"


def test_skipping_a_file_with_a_non_utf8_name_lists_it(tmp_path):
    import os

    from conftest import write_images
    from dff.data.datamodule import ImageDataModule

    root = tmp_path / "data"
    write_images(root, 3, 12, "png")
    bad = os.fsencode(str(root)) + b"/caf\xe9.png"
    with open(bad, "wb") as f:
        f.write(b"not an image")
    dm = ImageDataModule("folder", str(root), image_size=8, on_bad_file="skip", num_workers=0)
    dm.setup()
    listed = dm.write_skipped(tmp_path / "run").read_bytes()
    assert b"caf\xe9.png" in listed and len(dm.train_set) == 3


def test_translate_keeps_outputs_whose_inputs_share_a_stem(tmp_path):
    from dff.models import DiffusionModel
    from dff.tools.translate import translate_files

    model = DiffusionModel(image_size=8, channels=3, dim=8, dim_mults=(1, 2), attention=False, timesteps=100,
                           cond_channels=3, condition="sr2")
    (tmp_path / "in").mkdir()
    for ext in ("png", "jpg"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "in" / f"a.{ext}")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "in" / "b.png")
    written = translate_files(model, tmp_path / "in", tmp_path / "out", steps=2, progress=False)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["a.jpg.png", "a.png.png", "b.png"] and len(written) == 3


# ---------------------------------------------------------------------- interrupts (issue 35: 2)
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_saves_last_ckpt_at_a_step_and_the_run_resumes_from_it(tmp_path, sig):
    """A real signal, sent while fit trains (long after its last periodic checkpoint would have been written):
    the step finishes, last.ckpt holds it, the command says how to resume, and --ckpt_path last continues."""
    import signal
    import time

    cmd = [sys.executable, "-m", "dff.cli", "fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"),
           "--model.dim", "8", "--trainer.max_steps", "100000", "--trainer.enable_progress_bar", "false",
           "--samples.every_n_steps", "0", "--checkpoint.every_n_train_steps", "1000000",
           "--trainer.default_root_dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    run = tmp_path / "runs" / "version_0"
    deadline = time.time() + 120
    while not (run / "metrics.csv").exists() or "train/loss" not in (run / "metrics.csv").read_text():
        assert proc.poll() is None and time.time() < deadline, "fit did not start training"
        time.sleep(0.5)
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step >= 10 and f"dff: stopped by {sig} at step {step}" in out and "--ckpt_path last" in out
    resumed = subprocess.run([*cmd[:cmd.index("100000")], str(step + 2), *cmd[cmd.index("100000") + 1:],
                              "--ckpt_path", "last"],
                             capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 2
    assert (run / "config_resume_1.yaml").exists()  # in the interrupted run's own folder
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt beside it


# ---------------------------------------------------------------------- one line, not a traceback (issue 35: 14-15)
@pytest.mark.parametrize("args, message", [
    (["--data.batch_size", "0"], r"dff: data.batch_size=0: expected a whole number of at least 1"),
    (["--model.dim_mults", "[]"], r"dff: model.dim_mults=\[\]: expected one positive whole number per U-Net level"),
    (["--config", str(ROOT / "configs")], r"dff: --config .*configs is a folder; expected a YAML file"),
])
def test_bad_settings_end_in_one_line(tmp_path, args, message):
    from dff.cli import main

    with pytest.raises(SystemExit, match=message):
        main(["fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"), *args, "--trainer.max_steps", "1",
              "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert not (tmp_path / "runs" / "version_0").exists()  # nothing left behind


# ---------------------------------------------------------------------- hostile files (issue 35: 10)
def test_a_yaml_alias_bomb_and_deep_json_are_refused_in_one_line(tmp_path):
    """A 1 KB "billion laughs" config (9 levels of 9 aliases: 387 M values once expanded) is refused before it is
    built, at once; so are a config and an export's config.json nested too deeply."""
    import time

    from dff.cli import main
    from dff.pretrained import load_pretrained

    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "bomb.yaml").stat().st_size < 1024
    t0 = time.perf_counter()
    with pytest.raises(SystemExit, match=r"bomb.yaml: its aliases expand to more than 100,000 values"):
        main(["fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"), "--config", str(tmp_path / "bomb.yaml")])
    assert time.perf_counter() - t0 < 10
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(SystemExit, match=r"deep.yaml: (nested too deeply to read|its aliases expand to more than)"):
        main(["fit", "--config", str(tmp_path / "deep.yaml")])
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.safetensors").write_bytes(b"")
    (tmp_path / "export" / "config.json").write_text('{"hparams": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(ValueError, match="config.json: nested too deeply to be a dff config"):
        load_pretrained(tmp_path / "export")


# ---------------------------------------------------------------------- concurrent runs (issue 35: 12)
def test_runs_started_together_into_one_root_each_claim_a_folder(tmp_path):
    """16 claims racing from 8 threads get 16 distinct version_N folders (one atomic mkdir each); then two dff fit
    processes started at once into one root both finish, each in a folder of its own."""
    import threading

    from dff.training.runs import claim_version

    start, got = threading.Barrier(8), []

    def claim():
        start.wait()
        got.extend(claim_version(tmp_path / "race") for _ in range(2))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(got) == list(range(16))
    cmd = [sys.executable, "-m", "dff.cli", "fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"),
           "--model.dim", "8", "--trainer.max_steps", "2", "--samples.every_n_steps", "0",
           "--eval.every_n_steps", "0", "--trainer.enable_progress_bar", "false",
           "--trainer.default_root_dir", str(tmp_path / "runs")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    for n in (0, 1):
        run = tmp_path / "runs" / f"version_{n}"
        assert (run / "config.yaml").exists() and (run / "export" / "model.safetensors").exists()
    assert not (tmp_path / "runs" / "version_2").exists()


def test_a_read_only_root_is_one_line(tmp_path, monkeypatch):
    """A default_root_dir that cannot be written (PermissionError from the OS: read-only, or another user's; raised
    here on purpose, since the tests may run as root, whom chmod does not stop)."""
    import pathlib

    from dff.cli import main

    mkdir = pathlib.Path.mkdir

    def refuse(self, *args, **kwargs):
        if "ro" in self.parts:
            raise PermissionError(13, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    with pytest.raises(SystemExit, match="ro: a run folder cannot be created there"):
        main(["fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"), "--trainer.max_steps", "1",
              "--trainer.default_root_dir", str(tmp_path / "ro")])


# ---------------------------------------------------------------------- what photos mean (issue 35: 11)
def test_exif_rotated_photos_train_upright_and_transparency_is_composited(tmp_path):
    """A photo stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view) is trained as a viewer
    shows it, unless data.exif_orientation is false; transparent pixels become the stated white background,
    not the colour hidden under them."""
    from dff.data.datamodule import ImageDataModule
    from dff.data.folder import BACKGROUND, load_image

    root = tmp_path / "photos"
    root.mkdir()
    a = np.zeros((16, 32, 3), np.uint8)  # stored 32 wide, 16 high: left half white
    a[:, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(root / "sideways.jpg", exif=exif, quality=95)
    up = np.asarray(load_image(root / "sideways.jpg", 3))
    assert up.shape == (32, 16, 3) and up[:16].mean() > 200 and up[16:].mean() < 50  # the white half on top
    assert np.asarray(load_image(root / "sideways.jpg", 3, exif=False)).shape == (16, 32, 3)
    for exif_orientation, top_white in ((True, True), (False, False)):
        dm = ImageDataModule("folder", str(root), image_size=16, channels=3, crop="resize", hflip=False,
                             exif_orientation=exif_orientation, num_workers=0)
        dm.setup()
        x = dm.train_set[0]["image"]  # (3, 16, 16): the whole image resized, its shorter side to 16
        assert (x[:, :8].mean() > 0.8) == top_white, exif_orientation
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, hidden: alpha 0 everywhere
    Image.fromarray(rgba, "RGBA").save(root / "clear.png")
    assert np.all(np.asarray(load_image(root / "clear.png", 3)) == BACKGROUND)
    assert np.all(np.asarray(load_image(root / "clear.png", 4))[..., 0] == 255)  # RGBA kept as RGBA


# ---------------------------------------------------------------------- messages that say what happened (35: 13)
def test_a_float_rgb_tiff_is_not_called_corrupt_and_an_unwritable_checkpoint_folder_is_named(tmp_path, monkeypatch):
    import os

    import tifffile

    from dff.data.folder import inspect_image
    from dff.training.runs import AtomicCheckpointIO

    tifffile.imwrite(tmp_path / "float_rgb.tif", np.random.default_rng(0).random((16, 16, 3), dtype=np.float32))
    why = inspect_image(tmp_path / "float_rgb.tif")["error"]
    assert why.startswith("a valid TIFF (16x16x3, float32)") and "data.reader: array" in why
    (tmp_path / "ckpt").mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("ckpt") else access(p, mode))
    with pytest.raises(PermissionError, match=r"checkpoints cannot be written into .*ckpt: permission denied"):
        AtomicCheckpointIO().save_checkpoint({"step": torch.zeros(1)}, tmp_path / "ckpt" / "last.ckpt")
    assert not (tmp_path / "ckpt" / "last.ckpt.partial").exists()


# ---------------------------------------------------------------------- a file lost during training (35: 8)
def test_a_file_lost_during_training_is_retried_then_skipped_or_stops_the_run_with_a_checkpoint(tmp_path,
                                                                                                monkeypatch):
    import lightning as L

    import dff
    import dff.data.folder as folder
    from conftest import write_images
    from dff.data.folder import UnreadableFile
    from dff.data.stream import Key

    monkeypatch.setattr(folder, "READ_WAIT_S", 0.0)
    write_images(tmp_path / "images", 3, 12, "png")
    files = sorted((tmp_path / "images").iterdir())
    stop = ImageFolder(tmp_path / "images", 8, 3, seed=0)
    skip = ImageFolder(tmp_path / "images", 8, 3, seed=0, on_bad_file="skip")
    skip.skip_log = tmp_path / "skipped_files.txt"
    # a hiccup: the first read fails, the retry reads it (the same crop: the item is what it would have been)
    before = stop[Key(1, 7)]["image"]
    load, failed = ImageFolder.load, []

    def flaky(self, path, rng):
        if not failed:
            failed.append(path)
            raise OSError("Stale file handle")
        return load(self, path, rng)

    monkeypatch.setattr(ImageFolder, "load", flaky)
    assert torch.equal(stop[Key(1, 7)]["image"], before) and failed == [files[1]]
    monkeypatch.setattr(ImageFolder, "load", load)
    files[1].write_bytes(b"gone bad")  # for good: stop names it; skip lists it and the next file stands in
    with pytest.raises(UnreadableFile, match=f"{files[1].name} could not be read during training \\(3 tries"):
        stop[Key(1, 7)]
    assert torch.equal(skip[Key(1, 7)]["image"], skip[Key(2, 7)]["image"])
    assert f"{files[1]}\tduring training:" in skip.skip_log.read_text()
    # in a run: the step before the loss is saved, and the run resumes from it
    write_images(tmp_path / "run_images", 8, 12, "png")

    class LoseTheFiles(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                for p in (tmp_path / "run_images").iterdir():
                    p.write_bytes(b"")

    cli = dff.fit(["--config", str(ROOT / "configs" / "pixel_digits.yaml"), "--model.dim", "8", "--data.dataset",
                   "folder", "--data.root", str(tmp_path / "run_images"), "--data.channels", "3",
                   "--data.image_size", "8", "--data.batch_size", "2", "--data.num_workers", "0",
                   "--trainer.max_steps", "6", "--samples.every_n_steps", "0", "--eval.every_n_steps", "0",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "runs")],
                  run=False)
    cli.trainer.callbacks.append(LoseTheFiles())
    with pytest.raises(UnreadableFile, match="could not be read during training"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    last = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2


def test_broken_exports_are_one_line(tmp_path):
    """An export cut short, one whose safetensors header claims 2^63 bytes, and one whose config.json describes
    another network than its weights: one dff: line each, naming the file."""
    import json
    import shutil
    import struct

    from dff.cli import main
    from dff.models.diffusion_model import DiffusionModel
    from dff.pretrained import save_pretrained

    save_pretrained(DiffusionModel(image_size=8, channels=1, dim=8, dim_mults=(1, 2)), tmp_path / "good")
    for name in ("cut", "huge", "other"):
        shutil.copytree(tmp_path / "good", tmp_path / name)
    w = tmp_path / "cut" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:3000])
    (tmp_path / "huge" / "model.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}")
    cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    cfg["hparams"]["dim"] = 16
    (tmp_path / "other" / "config.json").write_text(json.dumps(cfg))
    for name, message in (("cut", "cut/model.safetensors: not a readable safetensors file"),
                          ("huge", "huge/model.safetensors: not a readable safetensors file .*header too large"),
                          ("other", "other/model.safetensors: the weights do not fit the network .*config.json "
                                    "describes \\(size mismatch")):
        with pytest.raises(SystemExit, match=message):
            main(["sample", str(tmp_path / name), "--num", "1", "--out", str(tmp_path / f"o_{name}")])


def test_an_export_is_readable_as_any_new_file_is(tmp_path):
    """safetensors writes its files 0600; an export gets the permissions of any new file (0666 less the umask)."""
    import os
    import stat

    from dff.models.diffusion_model import DiffusionModel
    from dff.pretrained import save_pretrained

    mask = os.umask(0o022)
    try:
        out = save_pretrained(DiffusionModel(image_size=8, channels=1, dim=8, dim_mults=(1, 2)), tmp_path / "e")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "e" / "model.safetensors").st_mode) == 0o644, out


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path):
    """What a run writes at its start (its config, hparams and a TensorBoard events file, when tensorboard is
    installed) goes with it; a folder that holds anything else stays."""
    from dff.training.fit import remove_if_empty

    for name, extra, kept in (("plain", None, False), ("tb", "events.out.tfevents.1.host.1.0", False),
                              ("used", "metrics.csv", True)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text("a: 1\n")
        (run / "hparams.yaml").write_text("a: 1\n")
        if extra:
            (run / extra).write_bytes(b"x")
        remove_if_empty(run)
        assert run.exists() == kept, name
