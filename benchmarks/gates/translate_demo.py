"""Benchmark of the image-to-image demo (x4 super-resolution of 32x32 photo patches).

    python benchmarks/gates/translate_demo.py [--out runs/translate_bench] [--run RUN_DIR] [--steps 50] [--average K]

Trains configs/translate_demo.yaml (unless --run names a finished run), then scores the EMA model on
the held-out photo patches: PSNR and SSIM against the ground truth next to plain bicubic upsampling,
and the consistency of the outputs with their low-resolution inputs (output downscaled x4 vs the
input, PSNR in dB). Prints a table and writes <out>/translate_bench.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from dff import fit
from dff.pretrained import load_pretrained
from dff.translate import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import CONFIG_DIR  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/translate_bench")
    ap.add_argument("--run", default=None, help="score this finished run instead of training one")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps of the scored translations")
    ap.add_argument("--max-steps", type=int, default=None, help="override the config's training steps")
    ap.add_argument("--average", type=int, default=1, help="score the mean of K samples per input (K > 1)")
    args = ap.parse_args()
    out = Path(args.out)
    res: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"}
    if args.run is None:
        argv = ["--config", str(CONFIG_DIR / "translate_demo.yaml"), "--trainer.default_root_dir", str(out),
                "--trainer.enable_progress_bar", "false"]
        if args.max_steps:
            argv += ["--trainer.max_steps", str(args.max_steps)]
        t0 = time.time()
        cli = fit(argv)
        res["train_s"] = time.time() - t0
        res["train_steps"] = cli.trainer.global_step
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        run = Path(cli.trainer.log_dir)
    else:
        run = Path(args.run)
    res["run"] = str(run)
    model = load_pretrained(run, "cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    res["scores"] = evaluate(model, "photos", steps=args.steps, batch_size=64, average=args.average)
    res["eval_s"] = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "translate_bench.json").write_text(json.dumps(res, indent=2) + "\n")
    s = res["scores"]
    print(f"\n{'':22s} {'PSNR dB':>8s} {'SSIM':>7s}")
    print(f"{'bicubic x4':22s} {s['psnr_bicubic']:8.2f} {s['ssim_bicubic']:7.4f}")
    name = f"dff (DDIM {args.steps}" + (f", mean of {args.average})" if args.average > 1 else ")")
    print(f"{name:22s} {s['psnr']:8.2f} {s['ssim']:7.4f}")
    print(f"consistency with the input: {s['consistency_psnr']:.2f} dB   ({s['n']} held-out 32x32 patches)")
    for k in ("train_s", "train_steps", "peak_rss_mib", "eval_s"):
        if k in res:
            print(f"{k:22s} {res[k]:.1f}" if isinstance(res[k], float) else f"{k:22s} {res[k]}")
    ok = s["consistency_psnr"] >= 30 and s["ssim"] > s["ssim_bicubic"]
    print(f"targets (consistency >= 30 dB, SSIM above bicubic): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
