"""Images/s of the two data paths for an image folder: per item on the host (PIL decode, crop, flip in DataLoader
workers) against data.on_device (decoded once, crops and flips per batch on the training device).

    python benchmarks/speed/data_speed.py [--num 1000] [--size 80] [--crop-size 64] [--batch 64] [--batches 40]

A folder of random RGB PNGs is made in a temporary directory (no download). Prints the start-up cost of each path
(building the data set; the device path decodes every file there, in threads) and the steady images/s of loading
`--batches` batches, side by side in one run, on the GPU when there is one.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dff.data.datamodule import ImageDataModule


def make_folder(root: Path, num: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(num):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i:05d}.png")
    return root


def run(root: Path, on_device: bool, args, device: torch.device) -> dict:
    t0 = time.perf_counter()
    dm = ImageDataModule(root=str(root), image_size=args.crop_size, channels=3, batch_size=args.batch, vflip=True,
                         on_device=on_device, num_workers=args.workers)
    dm.setup()
    setup_s = time.perf_counter() - t0
    loader = dm.train_dataloader()
    n, t_start = 0, None
    for i, batch in enumerate(loader):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        batch = dm.on_after_batch_transfer(batch, 0)
        x = batch["image"]
        if i == 2:  # after the workers' start
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_start = time.perf_counter()
        elif i > 2:
            n += x.shape[0]
        if i == args.batches + 2:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t_start
    return {"path": "on_device" if on_device else f"PIL, {args.workers} workers", "setup_s": setup_s,
            "images_per_s": n / secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--size", type=int, default=80)
    ap.add_argument("--crop-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "images", args.num, args.size)
        rows = [run(root, False, args, device), run(root, True, args, device)]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{args.num} PNGs of {args.size}x{args.size}, random {args.crop_size}x{args.crop_size} crops and flips, "
          f"batch {args.batch}, on {name}:")
    for r in rows:
        print(f"  {r['path']:18s} start-up {r['setup_s']:6.2f} s   {r['images_per_s']:10.0f} images/s")
    print(f"  on_device / PIL: x{rows[1]['images_per_s'] / rows[0]['images_per_s']:.1f}")


if __name__ == "__main__":
    main()
