"""Does training in two processes learn as one process does? The digits config at the same global batch:
one process with batch 32 against two DDP processes (gloo, CPU) with batch 16 each, same seed, float32.

    python benchmarks/reliability/ddp_trajectory.py [--steps 400] [--seeds 0 1] [--out runs/ddp_trajectory]

Prints the loss averaged over windows of 50 steps for both runs and their relative difference, per seed, and
the difference between two seeds of one process as the yardstick of noise. The two runs see different
mini-batches (each rank draws its own half of each batch's data and its own noise), so they agree
statistically, not bitwise.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from dff.viz import read_metric

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.common
from benchmarks.common import DIGITS_CONFIG  # noqa: E402



def train(root: Path, devices: int, batch: int, steps: int, seed: int) -> tuple[float, list[tuple[int, float]]]:
    # the console command: Lightning's DDP launcher starts the other rank by running the same command line again
    cmd = [str(Path(sys.executable).parent / "dff"), "fit",
           "--config", str(DIGITS_CONFIG), "--trainer.max_steps", str(steps),
           "--samples.every_n_steps", "0", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
           "--trainer.devices", str(devices), "--data.batch_size", str(batch), "--trainer.precision", "32-true",
           "--speed.channels_last", "false", "--trainer.default_root_dir", str(root),
           "--checkpoint.every_n_train_steps", str(steps), "--seed_everything", str(seed)]
    if devices > 1:
        cmd += ["--trainer.strategy", "ddp"]
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    run = sorted(root.glob("version_*"))[-1]
    return time.time() - t0, list(zip(*read_metric(run / "metrics.csv", "train/loss")))


def windows(rows: list[tuple[int, float]], size: int = 50) -> dict[int, float]:
    out: dict[int, list[float]] = {}
    for step, loss in rows:
        out.setdefault(step // size, []).append(loss)
    return {k: sum(v) / len(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="runs/ddp_trajectory")
    args = ap.parse_args()
    out = Path(args.out)
    one, two = {}, {}
    for seed in args.seeds:
        s1, rows1 = train(out / f"one_process_seed{seed}", 1, 32, args.steps, seed)
        s2, rows2 = train(out / f"two_processes_seed{seed}", 2, 16, args.steps, seed)
        one[seed], two[seed] = windows(rows1), windows(rows2)
        print(f"seed {seed}: one process, batch 32: {s1:.0f} s; two DDP processes, batch 16 each: {s2:.0f} s")
    a = args.seeds[0]
    head = "steps    " + "".join(f"  1 proc s{s}   2 proc s{s}   diff s{s}" for s in args.seeds)
    if len(args.seeds) > 1:
        head += f"   1 proc s{args.seeds[1]} vs s{a}"
    print(head)
    for k in sorted(set.intersection(*(set(w) for w in [*one.values(), *two.values()]))):
        line = f"{50 * k:4d}-{50 * k + 49:<4d}"
        for s in args.seeds:
            line += f"  {one[s][k]:9.5f}  {two[s][k]:11.5f}  {100 * (two[s][k] - one[s][k]) / one[s][k]:+7.1f}%"
        if len(args.seeds) > 1:
            b = args.seeds[1]
            line += f"  {100 * (one[b][k] - one[a][k]) / one[a][k]:+17.1f}%"
        print(line)


if __name__ == "__main__":
    main()
