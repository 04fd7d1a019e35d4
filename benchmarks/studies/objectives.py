"""FID against training steps for the training objectives, on the digits demo recipe.

    python benchmarks/studies/objectives.py [--out runs/objectives] [--num 500]

Trains configs/pixel_digits.yaml three times, changing only the objective (eps; v; v + min-SNR-5),
keeps a checkpoint every 350 steps, and scores each checkpoint's EMA weights: --num samples with
DPM-Solver++ (20 steps, seed 0), FID against the 1,797 real digits on the shipped digits features.
Prints a table and writes <out>/objectives.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dff import fit
from dff.data import load_digits_tensor
from dff.evaluation import compute_features, fid_from_features, get_extractor
from dff.pretrained import load_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import DIGITS_CONFIG  # noqa: E402

OBJECTIVES = {
    "eps": ["--model.prediction", "eps", "--model.loss_weighting", "none"],
    "v": ["--model.prediction", "v", "--model.loss_weighting", "none"],
    "v + min-SNR-5": ["--model.prediction", "v", "--model.loss_weighting", "min_snr"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/objectives")
    ap.add_argument("--num", type=int, default=500)
    args = ap.parse_args()
    extractor = get_extractor("digits")
    ref = compute_features(extractor, load_digits_tensor(16, 1)[0])
    res: dict = {}
    for name, overrides in OBJECTIVES.items():
        cli = fit(["--config", str(DIGITS_CONFIG), *overrides, "--trainer.enable_progress_bar",
                   "false", "--trainer.default_root_dir", str(Path(args.out) / name.replace(" ", "")),
                   "--checkpoint.every_n_train_steps", "350", "--samples.every_n_steps", "0"])
        res[name] = {}
        for ckpt in sorted(Path(cli.trainer.log_dir, "checkpoints").glob("step_*.ckpt")):
            step = int(ckpt.stem.split("_")[1])
            model = load_pretrained(ckpt).eval()
            with torch.no_grad():
                x = model.sample(args.num, "dpmpp_2m", steps=20, seed=0, progress=False)
            res[name][step] = fid_from_features(compute_features(extractor, x), ref)
            print(f"{name:14s} step {step:5d}  FID {res[name][step]:.3f}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "objectives.json").write_text(json.dumps(res, indent=2) + "\n")
    steps = sorted(next(iter(res.values())))
    print("\n| objective | " + " | ".join(f"step {s}" for s in steps) + " |")
    for name, row in res.items():
        print(f"| {name} | " + " | ".join(f"{row[s]:.2f}" for s in steps) + " |")


if __name__ == "__main__":
    main()
