"""Benchmark of the digits demo (`bash run.sh bench` runs it): wall-clock of `dff demo`, training speed and peak
memory, sampling speed, and sample quality judged by a digit classifier trained on the real digits.

    python benchmarks/gates/digits_demo.py [--out runs/bench] [--skip-demo RUN_DIR]

Prints a table and writes <out>/bench.json. Absolute times are for the machine it runs on.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from dff.data import load_digits_tensor
from dff.pretrained import load_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import judge, train_classifier  # noqa: E402


def run_demo(out: Path) -> tuple[float, float, Path]:
    """(wall-clock s, peak RSS MiB, run folder) of `dff demo --out out` in a subprocess."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "dff.cli", "demo", "--out", str(out)], capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"dff demo failed:\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB (Linux)
    runs = sorted(out.glob("version_*"), key=lambda p: p.stat().st_mtime)
    return wall, peak, runs[-1]


def train_speed(model, batch_size: int, steps: int = 20) -> float:
    """Optimiser steps per second of the model's training step on digits batches (after 3 warm-up steps)."""
    x, _ = load_digits_tensor(model.hparams.image_size, model.hparams.channels)
    model.train()
    opt = torch.optim.AdamW(model.net.parameters(), lr=1e-4)
    for i in range(steps + 3):
        if i == 3:
            t0 = time.time()
        batch = x[torch.randint(0, len(x), (batch_size,))] * 2 - 1
        loss = model.diffusion.loss(model.net, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.ema.update(model.net)
    return steps / (time.time() - t0)


def sample_ms_per_step(model, batch: int = 64, steps: int = 20) -> float:
    model.eval()
    model.sample(batch, "ddim", steps=2, seed=0, progress=False)  # warm-up
    t0 = time.time()
    model.sample(batch, "ddim", steps=steps, seed=0, progress=False)
    return (time.time() - t0) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--skip-demo", default=None, help="use this finished demo run instead of training one")
    args = ap.parse_args()
    out = Path(args.out)
    res: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"}
    if args.skip_demo:
        run = Path(args.skip_demo)
    else:
        res["demo_wall_s"], res["demo_peak_rss_mib"], run = run_demo(out)
    res["run"] = str(run)
    model = load_pretrained(run / "export")
    cfg = json.loads((run / "export" / "config.json").read_text())["hparams"]
    batch_size = 32
    try:
        import yaml
        batch_size = yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"]
    except Exception:
        pass
    res["params_M"] = sum(p.numel() for p in model.net.parameters()) / 1e6
    res["sample_ms_per_step_b64"] = sample_ms_per_step(model)

    clf, acc = train_classifier(cfg["image_size"])
    res["classifier_heldout_accuracy"] = acc
    x, _ = load_digits_tensor(cfg["image_size"], 1)
    res["real_digits"] = judge(clf, x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:256]])
    samples = model.sample(256, "ddim", steps=50, seed=0, progress=False)
    res["samples_ddim50"] = judge(clf, samples)
    res["train_steps_per_s"] = train_speed(load_pretrained(run / "export"), batch_size)
    res["train_batch_size"] = batch_size

    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res.items():
        print(f"{k:32s} {v}")
    s = res["samples_ddim50"]
    ok = s["confident_share"] >= 0.8 and s["classes_present"] == 10
    print(f"quality target (>= 80% confident, 10 classes): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
