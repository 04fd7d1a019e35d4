"""ConvNeXt U-Net against the ADM residual U-Net at equal parameters and equal training time.

    python benchmarks/studies/backbones.py [--minutes 4] [--num 1000] [--out runs/backbones]

Trains configs/pixel_digits.yaml (the demo recipe: v-prediction + min-SNR-5, cosine, batch 32)
once per backbone for the same wall-clock minutes (trainer.max_time), with widths chosen so the
parameter counts match (ConvNeXt dim 24: 1.087 M; ADM dim 26: 1.086 M), then scores each EMA model:
--num samples with DPM-Solver++ (20 steps, seed 0), FID and KID against the 1,797 real digits on
the shipped digits features. Prints a table and writes <out>/backbones.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dff import fit
from dff.data import load_digits_tensor
from dff.evaluation import compute_features, fid_from_features, get_extractor, kid_from_features

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import DIGITS_CONFIG  # noqa: E402

BACKBONES = {"convnext": 24, "adm": 26}  # base widths with matched parameter counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/backbones")
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--backbones", default="convnext,adm")
    args = ap.parse_args()
    extractor = get_extractor("digits")
    ref = compute_features(extractor, load_digits_tensor(16, 1)[0])
    seconds = int(args.minutes * 60)
    res: dict = {}
    for name in args.backbones.split(","):
        t0 = time.time()
        cli = fit(["--config", str(DIGITS_CONFIG), "--model.backbone", name,
                   "--model.dim", str(BACKBONES[name]), "--trainer.max_steps", "-1", "--model.lr_decay", "none",
                   "--trainer.max_time", f"00:00:{seconds // 60:02d}:{seconds % 60:02d}",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(Path(args.out) / name),
                   "--samples.every_n_steps", "0"])
        train_s = time.time() - t0
        model = cli.model.eval()
        with torch.no_grad():
            x = model.sample(args.num, "dpmpp_2m", steps=20, seed=0, progress=False)
        feats = compute_features(extractor, x)
        kid = kid_from_features(feats, ref)
        res[name] = {"dim": BACKBONES[name], "params": sum(p.numel() for p in model.net.parameters()),
                     "steps": cli.trainer.global_step, "train_s": round(train_s, 1),
                     "fid": fid_from_features(feats, ref), "kid": kid}
        print(f"{name}: {res[name]}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "backbones.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"\n{args.minutes} min of training each, {torch.get_num_threads()} torch threads, DPM-Solver++ 20, "
          f"{args.num} samples\n\n| backbone | params | steps in the budget | FID | KID |\n|---|---|---|---|---|")
    for name, r in res.items():
        k = r["kid"]
        kid = f"{k[0]:.4f} +- {k[1]:.4f}" if isinstance(k, (tuple, list)) else f"{k:.4f}"
        print(f"| {name} (dim {r['dim']}) | {r['params'] / 1e6:.3f} M | {r['steps']} | {r['fid']:.2f} | {kid} |")


if __name__ == "__main__":
    main()
