"""Quality gate of the speed options: does the fast path learn the same model?

    python benchmarks/gates/quality_gate.py [--steps 1600] [--out runs/quality_gate]

Trains the digits config (configs/pixel_digits.yaml) three times through `dff fit`, each in its own process
(one after the other, or at once with --parallel),
for the same number of images: float32 with every speed option off, seeds 0 and 1, and the device's fast
defaults (on a GPU: bf16-mixed, channels_last, TF32, cuDNN autotuning, and torch.compile as the _fast configs
have it; on a CPU without an explicit backend compile stays off), seed 0. Then compares
  - the smoothed final loss (mean of the last 10 logged values, i.e. the last 100 steps): fast within 2% of
    float32 with the same seed;
  - FID and KID (digits features, 1,000 samples, DPM-Solver++(2M) 20 steps, same sampling seed): fast within
    the spread of the two float32 seeds, |fast - mean(fp32)| <= |fp32 seed 0 - fp32 seed 1|.
Prints the verdict and writes <out>/quality_gate.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from dff.viz import read_metric

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import DIGITS_CONFIG  # noqa: E402

FP32 = ["--trainer.precision", "32-true", "--speed.compile", "false", "--speed.channels_last", "false",
        "--speed.tf32", "false", "--speed.cudnn_benchmark", "false"]
RUNS = {"fp32_seed0": (0, FP32), "fp32_seed1": (1, FP32), "fast_seed0": (0, [])}


def start(name: str, seed: int, options: list[str], out: Path, steps: int, extra: list[str]) -> dict:
    """Start `dff fit` for one run in its own process."""
    root = out / name
    cmd = [sys.executable, "-c", "import sys; from dff.cli import run; sys.argv[0] = 'dff'; run()", "fit",
           "--config", str(DIGITS_CONFIG), "--seed_everything", str(seed),
           "--trainer.max_steps", str(steps), "--samples.every_n_steps", "0", "--trainer.enable_progress_bar", "false",
           "--checkpoint.every_n_train_steps", str(steps), "--trainer.default_root_dir", str(root), *options, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return {"name": name, "seed": seed, "root": root, "proc": proc, "t0": time.time()}


def finish(job: dict) -> dict:
    """Wait for a run; its smoothed final loss from metrics.csv."""
    stdout, stderr = job["proc"].communicate()
    secs = time.time() - job["t0"]
    name = job["name"]
    if job["proc"].returncode:
        raise SystemExit(f"{name}: dff fit failed (exit {job['proc'].returncode}):\n{stderr[-3000:]}")
    speed_line = next((ln for ln in stdout.splitlines() if ln.startswith("speed:")), "")
    run = sorted(job["root"].glob("version_*"))[-1]
    _, losses = read_metric(run / "metrics.csv", "train/loss")
    return {"name": name, "seed": job["seed"], "run": str(run), "seconds": secs, "speed": speed_line,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]), "logged_losses": len(losses)}


def score(run: str, num: int) -> dict:
    from dff.data import load_digits_tensor
    from dff.evaluation import compute_features, fid_from_features, get_extractor, kid_from_features
    from dff.pretrained import load_pretrained

    torch.set_grad_enabled(False)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_pretrained(Path(run) / "export").to(dev).eval()
    x = model.sample(num, "dpmpp_2m", steps=20, seed=1234, progress=False).cpu()
    extractor = get_extractor("digits")
    ref = compute_features(extractor, load_digits_tensor(model.hparams.image_size, model.hparams.channels)[0])
    f = compute_features(extractor, x)
    kid, kid_std = kid_from_features(f, ref, subset_size=min(1000, len(f)))
    return {"fid": fid_from_features(f, ref), "kid": kid, "kid_std": kid_std}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1600, help="training steps of each run (the config's 1600)")
    ap.add_argument("--num", type=int, default=1000, help="samples for FID/KID")
    ap.add_argument("--out", default="runs/quality_gate")
    ap.add_argument("--parallel", action="store_true", help="train the three runs at once (a GPU with cores to spare; "
                    "their times are then not comparable)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `dff fit` arguments for every run")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    jobs = []
    for name, (seed, options) in RUNS.items():
        if name.startswith("fast") and torch.cuda.is_available():
            options = options + ["--speed.compile", "true"]  # what the _fast configs train with
        jobs.append(start(name, seed, options, out, args.steps, args.extra))
        if not args.parallel:
            jobs[-1] = finish(jobs[-1])
    for job in jobs:
        r = finish(job) if "proc" in job else job
        r.update(score(r["run"], args.num))
        rows.append(r)
        print(f"{r['name']:11s} {r['seconds']:6.1f} s  final loss {r['final_loss']:.5f}  FID {r['fid']:.3f}  "
              f"KID {r['kid']:.4f} +- {r['kid_std']:.4f}   [{r['speed']}]", flush=True)
    a, b, fast = rows
    loss_rel = abs(fast["final_loss"] - a["final_loss"]) / a["final_loss"]
    verdict = {"loss_within_2pct": loss_rel <= 0.02, "loss_rel_diff": loss_rel}
    for k in ("fid", "kid"):
        spread = abs(a[k] - b[k])
        verdict[f"{k}_within_seed_spread"] = abs(fast[k] - (a[k] + b[k]) / 2) <= spread
        verdict[f"{k}_seed_spread"] = spread
    verdict["pass"] = (verdict["loss_within_2pct"] and verdict["fid_within_seed_spread"]
                       and verdict["kid_within_seed_spread"])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    res = {"device": device, "steps": args.steps, "num_samples": args.num, "runs": rows, "verdict": verdict}
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_gate.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"loss: fast vs fp32 (seed 0) {100 * loss_rel:.2f}% (target <= 2%); "
          f"FID spread of fp32 seeds {verdict['fid_seed_spread']:.3f}, "
          f"fast within: {verdict['fid_within_seed_spread']}; "
          f"KID within: {verdict['kid_within_seed_spread']}  -> {'PASS' if verdict['pass'] else 'FAIL'}")


if __name__ == "__main__":
    main()
