"""Soak test: train the digits recipe from a folder in which 5% of the files are bad, killing the process
with SIGKILL at random moments and resuming it with --ckpt_path last; then compare with an uninterrupted
run of the same number of steps.

    python benchmarks/reliability/soak.py [--minutes 30] [--kill-every 180] [--out runs/soak]

Reports the steps completed, kills survived, files skipped, checkpoints that failed to load after a
kill (target: none), whether the resumed run's final weights and logged losses equal the uninterrupted
run's (they should, bit for bit, on a CPU), and the final loss and digits FID/KID of both runs. Absolute times
are for the machine it runs on.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dff.data import load_digits_tensor
from dff.evaluation import evaluate_generation
from dff.pretrained import load_pretrained
from dff.viz import read_metric

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import DIGITS_CONFIG  # noqa: E402



def make_folder(root: Path, bad_share: float = 0.05, seed: int = 0) -> int:
    """The digits as 16x16 PNG files plus bad_share of bad ones (truncated, zero-byte, text); returns the bad count."""
    x, _ = load_digits_tensor(16, 1)
    root.mkdir(parents=True)
    for i, img in enumerate(x):
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), "L").save(root / f"{i:04d}.png")
    rng, n_bad = random.Random(seed), round(bad_share * len(x))
    good = sorted(root.glob("*.png"))
    for k in range(n_bad):
        target = root / f"bad_{k:03d}.png"
        kind = k % 3
        if kind == 0:
            data = rng.choice(good).read_bytes()
            target.write_bytes(data[: len(data) // 2])  # truncated
        elif kind == 1:
            target.write_bytes(b"")  # zero-byte
        else:
            target.write_text("not an image")  # text named .png
    return n_bad


def fit_args(data: Path, root: Path, max_steps: int, resume: bool) -> list[str]:
    args = [sys.executable, "-m", "dff.cli", "fit", "--config", str(DIGITS_CONFIG), "--data.dataset", "folder",
            "--data.root", str(data), "--data.hflip", "false", "--data.on_bad_file", "skip",
            "--data.num_workers", "0", "--trainer.max_steps", str(max_steps), "--trainer.enable_progress_bar",
            "false", "--trainer.default_root_dir", str(root), "--checkpoint.every_n_train_steps", "20",
            "--samples.every_n_steps", "0"]
    return args + (["--ckpt_path", "last"] if resume else [])


def last_step(run: Path) -> int:
    ckpt = run / "checkpoints" / "last.ckpt"
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] if ckpt.exists() else 0


def soak(data: Path, root: Path, minutes: float, kill_every: float, seed: int = 0) -> dict:
    rng, t_end = random.Random(seed), time.time() + 60 * minutes
    kills, corrupt, resumes = 0, 0, 0
    run = root / "version_0"
    while time.time() < t_end:
        proc = subprocess.Popen(fit_args(data, root, 10**7, resume=(run / "checkpoints" / "last.ckpt").exists()),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        resumes += kills > 0
        wait = min(rng.uniform(0.5, 1.5) * kill_every, max(1.0, t_end - time.time()))
        try:
            proc.wait(timeout=wait)
            raise SystemExit(f"the training process ended by itself: {proc.stderr.read()[-2000:]}")
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        try:
            step = last_step(run)
        except Exception:  # a checkpoint a kill left unreadable
            corrupt += 1
            step = -1
        print(f"kill {kills}: last.ckpt at step {step}", flush=True)
    steps = last_step(run) + 1  # one more step, so that the resumed fit ends (and exports) normally
    done = subprocess.run(fit_args(data, root, steps, resume=True), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the final resume failed: {done.stderr[-2000:]}")
    return {"steps": steps, "kills": kills, "resumes": resumes, "corrupt_checkpoints": corrupt, "run": str(run)}


def final_loss(run: Path, last: int = 50) -> float:
    """Mean of the last `last` logged losses, by step (a resumed run logs some steps twice)."""
    steps, values = read_metric(run / "metrics.csv", "train/loss")
    return float(np.mean([v for _, v in sorted(zip(steps, values), key=lambda sv: sv[0])][-last:]))


def compare(killed: Path, whole: Path) -> dict:
    """How far the killed-and-resumed run is from the uninterrupted one: the EMA weights both export at the end
    of training, tensor by tensor (last.ckpt is not compared: the uninterrupted run's may be from the last
    periodic save, a step earlier), and every loss it logged (redone steps included) against the uninterrupted
    run's at the same step."""
    from safetensors.torch import load_file

    a, b = (load_file(r / "export" / "model.safetensors") for r in (killed, whole))
    differ = [k for k in b if not torch.equal(a[k], b[k])]
    ref = dict(zip(*read_metric(whole / "metrics.csv", "train/loss")))
    steps, values = read_metric(killed / "metrics.csv", "train/loss")
    off = [s for s, v in zip(steps, values) if ref.get(s) != v]
    return {"tensors": len(b), "tensors_differing": len(differ), "losses_logged": len(steps),
            "losses_differing": len(off)}


def quality(run: Path, num: int = 1000) -> dict:
    model = load_pretrained(run / "export")
    g = torch.Generator().manual_seed(0)
    x = torch.cat([model.sample(min(250, num - i), "dpmpp_2m", generator=g, progress=False)
                   for i in range(0, num, 250)])
    res = evaluate_generation(x, load_digits_tensor(16, 1)[0], "digits")
    return {k: res[k] for k in ("fid", "kid_mean", "kid_std")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--kill-every", type=float, default=180, help="mean seconds between kills")
    p.add_argument("--out", default="runs/soak")
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    n_bad = make_folder(out / "data")
    t0 = time.time()
    res = soak(out / "data", out / "killed", args.minutes, args.kill_every)
    res["soak_wall_s"] = time.time() - t0
    skipped = (Path(res["run"]) / "skipped_files.txt").read_text().splitlines()
    res["bad_files"], res["skipped_files"] = n_bad, len(skipped)
    t0 = time.time()
    ref = subprocess.run(fit_args(out / "data", out / "uninterrupted", res["steps"], resume=False),
                         capture_output=True, text=True)
    if ref.returncode:
        raise SystemExit(f"the uninterrupted run failed: {ref.stderr[-2000:]}")
    res["uninterrupted_wall_s"] = time.time() - t0
    runs = {"killed": Path(res["run"]), "uninterrupted": out / "uninterrupted" / "version_0"}
    res["same_as_uninterrupted"] = compare(*runs.values())
    for name, run in runs.items():
        res[name] = {"final_loss": final_loss(run), **quality(run)}
    print(json.dumps(res, indent=2))
    (out / "soak.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
